"""Typed Flower records for FedHem requests and replies.

A request or reply is a small JSON document (``ConfigRecord`` key ``doc``: the kind, the document
and the ``layout`` of its arrays; key ``protocol``: the version) whose numpy arrays travel together as
one byte string (dtype, shape and offset of each in ``layout``; in the ``ConfigRecord`` when small,
else as one ``Array`` of an ``ArrayRecord``) and are referenced from the document by number.
Decoding is strict: an unknown protocol version, another kind or a missing field raises.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import SType
from numpy.lib import format as npy_format

from fedhem_kernel.protocol.messages import SiteReply, SiteRequest

PROTOCOL = 4  # 2: a message's arrays travel as one byte string; 3: secure sums; 4: signed
_ARRAY_TAG = "__ndarray__"


_NPY_MAGIC = b"\x93NUMPY\x01\x00"  # .npy format 1.0
_PLAIN = frozenset({str, int, float, bool, type(None)})  # what JSON takes as it is


def _pack(obj: Any, arrays: list[np.ndarray]) -> Any:
    if type(obj) in _PLAIN:
        return obj
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {_ARRAY_TAG: len(arrays) - 1}
    if isinstance(obj, dict):
        return {str(k): _pack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        if all(type(v) in _PLAIN for v in obj):
            return list(obj)
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _unpack(obj: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if _ARRAY_TAG in obj and len(obj) == 1:
            index = obj[_ARRAY_TAG]
            if not isinstance(index, int) or not 0 <= index < len(arrays):
                raise ValueError("record references an array it does not carry")
            return arrays[index]
        return {k: _unpack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        if all(type(v) in _PLAIN for v in obj):
            return obj
        return [_unpack(v, arrays) for v in obj]
    return obj


def _descr(dtype: np.dtype) -> Any:
    if dtype.hasobject:
        raise ValueError("arrays of Python objects cannot be sent")
    return npy_format.dtype_to_descr(dtype)


def _fields_descr(descr: Any) -> Any:
    """A structured dtype's descr after JSON (which made its tuples lists)."""
    if isinstance(descr, str):
        return descr
    out = []
    for name, sub, *shape in descr:
        name = tuple(name) if isinstance(name, list) else name
        field = (name, _fields_descr(sub), *(tuple(s) for s in shape))
        out.append(field)
    return out


_DTYPES: dict[str, np.dtype] = {}  # a plain descr ("<f8") and its dtype, once checked


def _dtype(descr: Any) -> np.dtype:
    if isinstance(descr, str):
        known = _DTYPES.get(descr)
        if known is not None:
            return known
    dtype = npy_format.descr_to_dtype(_fields_descr(descr))
    if dtype.hasobject:
        raise ValueError("arrays of Python objects cannot be received")
    if isinstance(descr, str) and len(_DTYPES) < 64:
        _DTYPES[descr] = dtype
    return dtype


def _blob(arrays: list[np.ndarray], head: bool) -> tuple[bytes, list[list[Any]]]:
    """All of a message's arrays in one byte string (every array 8-byte aligned), and where each
    one is in it; ``head``: as a ``.npy`` array of bytes (for an ``Array``)."""
    layout: list[list[Any]] = []
    parts: list[Any] = []
    offset = 0
    for value in arrays:
        arr = np.ascontiguousarray(value)  # (a 0-d array arrives with shape (1,), as before)
        layout.append([_descr(arr.dtype), list(arr.shape), offset])
        parts.append(arr.reshape(-1).view(np.uint8))
        pad = -arr.nbytes % 8
        if pad:
            parts.append(bytes(pad))
        offset += arr.nbytes + pad
    if head:
        header = BytesIO()
        npy_format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": (offset,)}
        )
        parts.insert(0, header.getvalue())
    return b"".join(parts), layout


def _unblob(data: bytes, start: int, layout: Any) -> list[np.ndarray]:
    if not isinstance(layout, list):
        raise ValueError("malformed FedHem array record")
    out = []
    for descr, shape, offset in layout:
        ok = isinstance(offset, int) and offset >= 0 and isinstance(shape, list)
        if not ok or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError("malformed FedHem array record")
        dtype = _dtype(descr)
        flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start + offset)
        out.append(flat.reshape(shape).copy())
    return out


#: A message whose arrays take at most this many bytes carries them in its ``ConfigRecord`` (one
#: record: cheaper to build and parse); a larger one in an ``ArrayRecord``, which Flower can send
#: in chunks.
INLINE_BYTES = 2**20


def checked_config_record(values: dict[str, Any]) -> ConfigRecord:
    """A ``ConfigRecord`` holding ``values``, which are already of its types (built here from
    ints, strings and bytes, or just parsed from protobuf, whose typed fields guarantee them).

    ``ConfigRecord(values)`` would check each value's type again; that check (``typing.get_args``
    per value) costs more than the rest of a small round's record handling. The record is Flower's
    own class with the same content. ``tests/test_engine.py`` fails if Flower stores it otherwise.
    """
    record = ConfigRecord()
    record.__dict__["_data"].update(values)
    return record


def to_records(kind: str, doc: dict[str, Any]) -> RecordDict:
    arrays: list[np.ndarray] = []
    packed = _pack(doc, arrays)
    if not arrays:
        meta = {"protocol": PROTOCOL, "doc": json.dumps({"kind": kind, "doc": packed})}
        return RecordDict({"meta": checked_config_record(meta)})
    inline = sum(a.nbytes for a in arrays) + 8 * len(arrays) <= INLINE_BYTES
    data, layout = _blob(arrays, head=not inline)
    text = json.dumps({"kind": kind, "doc": packed, "layout": layout})
    meta: dict[str, Any] = {"protocol": PROTOCOL, "doc": text}  # few entries: cheap records
    if inline:
        meta["blob"] = data
        return RecordDict({"meta": checked_config_record(meta)})
    blob = Array(dtype="uint8", shape=(len(data),), stype=SType.NUMPY, data=data)
    return RecordDict({"meta": checked_config_record(meta), "arrays": ArrayRecord({"blob": blob})})


def from_records(kind: str, content: RecordDict) -> dict[str, Any]:
    meta = content["meta"]
    if meta["protocol"] != PROTOCOL:
        raise ValueError(f"unexpected FedHem record (protocol {meta['protocol']})")
    doc = json.loads(str(meta["doc"]))
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise ValueError(f"unexpected FedHem record (not a {kind})")
    arrays: list[np.ndarray] = []
    if "arrays" in content:
        data = content["arrays"]["blob"].data
        if not data.startswith(_NPY_MAGIC):
            raise ValueError("malformed FedHem array record")
        arrays = _unblob(data, 10 + int.from_bytes(data[8:10], "little"), doc["layout"])
    elif "blob" in meta:
        blob = meta["blob"]
        if not isinstance(blob, bytes):
            raise ValueError("malformed FedHem array record")
        arrays = _unblob(blob, 0, doc["layout"])
    return _unpack(doc["doc"], arrays)


def _fields(obj: SiteRequest | SiteReply) -> dict[str, Any]:
    """The dataclass's fields (``asdict`` would deep-copy every array first)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def encode_request(req: SiteRequest) -> RecordDict:
    return to_records("request", _fields(req))


#: A request's fields and the types each may have (anything else is a malformed request).
_REQUEST_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (str,),
    "dataset": (str, type(None)),
    "params": (dict,),
    "where": (str, type(None)),
    "who": (str,),
    "query_id": (str,),
    "secure": (dict, type(None)),
    "auth": (dict, type(None)),
}


def decode_request(content: RecordDict) -> SiteRequest:
    """The request of a message, its fields checked (strict: another shape raises ValueError)."""
    doc = from_records("request", content)
    if not isinstance(doc, dict) or set(doc) != set(_REQUEST_FIELDS):
        raise ValueError("malformed FedHem request")
    for name, types in _REQUEST_FIELDS.items():
        if not isinstance(doc[name], types):
            raise ValueError("malformed FedHem request")
    return SiteRequest(**doc)


def encode_reply(reply: SiteReply) -> RecordDict:
    return to_records("reply", _fields(reply))


def decode_reply(content: RecordDict) -> SiteReply:
    return SiteReply(**from_records("reply", content))
