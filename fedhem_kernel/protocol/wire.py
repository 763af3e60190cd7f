"""Flower messages to bytes and back: what travels between the researcher's side and a site.

The embedded engine and a site host both speak Flower's protobuf wire form, so a site receives exactly
what a SuperNode would and nothing shares memory across the boundary. :func:`to_proto` and
:func:`from_proto` are Flower's ``message_to_proto`` / ``message_from_proto`` without their extra
copies and per-value type checks (``tests/test_engine.py`` pins them to Flower's serde).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common.serde import (
    array_record_from_proto,
    config_record_to_proto,
    error_from_proto,
    error_to_proto,
    metadata_from_proto,
    metadata_to_proto,
    metric_record_from_proto,
    metric_record_to_proto,
)
from flwr.common.serde_utils import record_value_dict_from_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined]
from flwr.supercore.task_identity import TaskIdentity

from fedhem_kernel.protocol.codec import checked_config_record

#: The node id the researcher's side (the coordinator) sends from.
COORDINATOR_NODE_ID = 0


def to_wire(message: Message) -> bytes:
    """The message in Flower's protobuf wire form (see :func:`to_proto`)."""
    return to_proto(message).SerializeToString()


def to_proto(message: Message) -> ProtoMessage:
    """The message as Flower's protobuf ``Message``.

    Serialises to the same bytes as ``message_to_proto(message)``, but is built in place: Flower's
    serde constructs each nested record and copies it into its parent, so every array's bytes are
    copied once per level (six times for a reply); here they are copied once into the message, then
    serialised (fields are written in field-number order whatever order they were set in).
    """
    proto = ProtoMessage()
    proto.metadata.CopyFrom(metadata_to_proto(message.metadata))
    if message.has_content():
        proto.content.SetInParent()
        items = proto.content.items
        for key, record in message.content.items():
            item = items.add(key=key)
            if isinstance(record, ArrayRecord):
                item.array_record.SetInParent()
                entries = item.array_record.items
                for name, array in record.items():
                    value = entries.add(key=name).value
                    value.dtype = array.dtype
                    value.shape.extend(array.shape)
                    value.stype = array.stype
                    value.data = array.data
            elif isinstance(record, ConfigRecord):
                _config_record_into(item.config_record, record)
            elif isinstance(record, MetricRecord):
                item.metric_record.CopyFrom(metric_record_to_proto(record))
            else:
                raise ValueError(f"Unsupported record type: {type(record)}")
    if message.has_error():
        proto.error.CopyFrom(error_to_proto(message.error))
    return proto


#: Scalar ``ConfigRecord`` values and their protobuf fields (as Flower's serde writes them).
_SCALAR_FIELDS = {bool: "bool", float: "double", str: "string", bytes: "bytes"}


def _config_record_into(proto: Any, record: ConfigRecord) -> None:
    """Write ``record`` into its (empty) protobuf in place: the same fields and order as Flower's
    ``config_record_to_proto`` for scalars (what FedHem's records hold); anything else through it."""
    fields = []
    for key, value in record.items():
        kind = _SCALAR_FIELDS.get(type(value))
        if kind is None and type(value) is int and -(2**63) <= value < 2**63:
            kind = "sint64"
        if kind is None:
            proto.CopyFrom(config_record_to_proto(record))
            return
        fields.append((key, kind, value))
    items = proto.items
    for key, kind, value in fields:
        setattr(items.add(key=key).value, kind, value)


def from_proto(proto: ProtoMessage) -> Message:
    """The ``Message`` of a parsed protobuf, as Flower's ``message_from_proto`` builds it,
    except that config records are filled with the parsed values without checking each value's
    type again (:func:`~fedhem_kernel.protocol.codec.checked_config_record`)."""
    content = None
    if proto.HasField("content"):
        content = RecordDict()
        for item in proto.content.items:
            kind = item.WhichOneof("value")
            if kind == "config_record":
                entries = {e.key: e.value for e in item.config_record.items}
                content[item.key] = checked_config_record(record_value_dict_from_proto(entries))
            elif kind == "array_record":
                content[item.key] = array_record_from_proto(item.array_record)
            elif kind == "metric_record":
                content[item.key] = metric_record_from_proto(item.metric_record)
            else:
                raise ValueError(f"Unsupported record type: {kind}")
    error = error_from_proto(proto.error) if proto.HasField("error") else None
    return make_message(metadata_from_proto(proto.metadata), content, error)


def wire_copy(message: Message) -> Message:
    """The message as the other side would parse it off the wire."""
    return from_proto(ProtoMessage.FromString(to_wire(message)))


def from_wire(data: bytes) -> Message:
    """The message of its wire bytes (see :func:`from_proto`)."""
    return from_proto(ProtoMessage.FromString(data))


def ensure_task_identity() -> None:
    """Give this process the identity Flower's runtime would (only if none is set)."""
    try:
        TaskIdentity.run_id  # noqa: B018 - raises when unset
    except RuntimeError:
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = COORDINATOR_NODE_ID
        TaskIdentity.task_id = 1


def set_message_id(message: Message, message_id: str) -> None:
    message.metadata.__dict__["_message_id"] = message_id
