"""A site host: the ClientApps of one or more sites behind one byte-level endpoint.

A host takes a Flower message's wire bytes for one of its nodes, runs that node's ClientApp on it and
returns the reply's wire bytes, as a SuperNode would. Embedded federations register a host in this
process (:mod:`fedhem_kernel.protocol.endpoints`); :mod:`fedhem_kernel.node` also serves one from a
process of its own over a pipe.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedhem_kernel.protocol.wire import ensure_task_identity, from_wire, set_message_id, to_proto
from fedhem_kernel.site.app import make_client_app
from fedhem_kernel.site.executor import SiteExecutor


class AppHost:
    """ClientApps by node id, each with the Flower ``Context`` it runs in."""

    def __init__(self, nodes: Mapping[int, tuple[ClientApp, Context]]) -> None:
        ensure_task_identity()
        self._nodes = dict(nodes)

    @property
    def node_ids(self) -> list[int]:
        return list(self._nodes)

    def deliver(self, node_id: int, wire: bytes) -> bytes:
        """Run node ``node_id``'s ClientApp on a message's wire bytes; the reply's wire bytes."""
        if node_id not in self._nodes:
            raise KeyError(f"no node {node_id} at this host")
        app, context = self._nodes[node_id]
        msg = from_wire(wire)
        del wire  # a large request is held once at a time here
        try:
            reply = app(msg, context)
        except Exception:  # noqa: BLE001 - as a SuperNode would: an error reply, no text from the app
            reply = Message(Error(code=1, reason="the site's ClientApp failed"), reply_to=msg)
        set_message_id(reply, uuid.uuid4().hex)
        proto = to_proto(reply)
        del msg, reply  # a large reply is held twice at most (the protobuf, then its bytes)
        return proto.SerializeToString()


class SiteHost(AppHost):
    """Sites by node id (1, 2, ... in the order given), each behind the same ClientApp."""

    def __init__(self, executors: Sequence[SiteExecutor]) -> None:
        self.executors = {ex.name: ex for ex in executors}
        steps = {name: None for ex in executors for name in ex.steps}
        app = make_client_app(
            lambda context: self.executors[str(context.node_config["site-name"])], steps
        )
        super().__init__(
            {
                i: (
                    app,
                    Context(
                        run_id=1,
                        node_id=i,
                        node_config={"site-name": ex.name},
                        state=RecordDict(),
                        run_config={},
                    ),
                )
                for i, ex in enumerate(executors, start=1)
            }
        )
        self.names = {i: ex.name for i, ex in enumerate(executors, start=1)}
