"""The embedded engine: an in-process Flower ``Grid`` with one ClientApp per virtual site.

Each message is serialised to Flower's protobuf wire form and parsed again on the other side, so a site
receives exactly what a SuperNode would and nothing shares memory across the boundary. Sites run on a
thread pool. No Ray, no servers: ready in milliseconds.

``Message(...)`` reads a process-wide task identity that Flower's runtimes set; outside a runtime it is
set here (``flwr.supercore.task_identity`` is internal API: flwr is pinned and
``tests/test_engine.py`` fails loudly if it moves).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined]
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

COORDINATOR_NODE_ID = 0
_run_ids = itertools.count(1)


def ensure_task_identity() -> None:
    """Give this process the identity Flower's runtime would (only if none is set)."""
    try:
        TaskIdentity.run_id  # noqa: B018 - raises when unset
    except RuntimeError:
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = COORDINATOR_NODE_ID
        TaskIdentity.task_id = 1


def wire_copy(message: Message) -> Message:
    """The message as the other side would parse it off the wire."""
    data = message_to_proto(message).SerializeToString()
    return message_from_proto(ProtoMessage.FromString(data))


def _set_message_id(message: Message, message_id: str) -> None:
    message.metadata.__dict__["_message_id"] = message_id


class LocalGrid(Grid):
    """In-process grid: ``nodes`` maps a node id to the site's ClientApp and Context."""

    def __init__(self, nodes: dict[int, tuple[ClientApp, Context]], max_workers: int = 4) -> None:
        ensure_task_identity()
        self._nodes = dict(nodes)
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(nodes) or 1)))
        self._pending: dict[str, Future[bytes]] = {}
        self._run = Run.create_empty(next(_run_ids))
        #: Bytes on the wire per node: what the coordinator sent to it and what it sent back.
        self.bytes_sent: dict[int, int] = dict.fromkeys(self._nodes, 0)
        self.bytes_received: dict[int, int] = dict.fromkeys(self._nodes, 0)
        self.replies_received: dict[int, int] = dict.fromkeys(self._nodes, 0)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def _deliver(self, node_id: int, wire: bytes) -> bytes:
        app, context = self._nodes[node_id]
        msg = message_from_proto(ProtoMessage.FromString(wire))
        try:
            reply = app(msg, context)
        except Exception:  # noqa: BLE001 - as a SuperNode would: an error reply, no text from the app
            reply = Message(Error(code=1, reason="the site's ClientApp failed"), reply_to=msg)
        _set_message_id(reply, uuid.uuid4().hex)
        data = message_to_proto(reply).SerializeToString()
        self.bytes_received[node_id] += len(data)
        self.replies_received[node_id] += 1
        return data

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id not in self._nodes:
                raise ValueError(f"unknown node id {node_id}")
            message_id = uuid.uuid4().hex
            _set_message_id(message, message_id)
            wire = message_to_proto(message).SerializeToString()
            self.bytes_sent[node_id] += len(wire)
            self._pending[message_id] = self._pool.submit(self._deliver, node_id, wire)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for message_id in message_ids:
            future = self._pending.get(message_id)
            if future is not None and future.done():
                del self._pending[message_id]
                out.append(message_from_proto(ProtoMessage.FromString(future.result())))
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Push now; the returned iterator yields each reply as soon as its site has answered.

        Replies come in completion order (a slow site does not hold back the others' progress);
        iteration ends when every site has answered or ``timeout`` seconds have passed.
        """
        ids = list(self.push_messages(messages))
        return self._replies_as_completed(ids, timeout)

    def _replies_as_completed(self, ids: list[str], timeout: float | None) -> Iterator[Message]:
        futures = {self._pending[i]: i for i in ids}
        try:
            for future in as_completed(futures, timeout=timeout):
                self._pending.pop(futures[future], None)
                yield message_from_proto(ProtoMessage.FromString(future.result()))
        except TimeoutError:  # the sites that have not answered get "no reply in time"
            return

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
