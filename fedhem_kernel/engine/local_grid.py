"""The embedded engine: a Flower ``Grid`` that hands each message to its site as wire bytes.

Each message is serialised to Flower's protobuf wire form (on the thread that delivers it) and given to
a :class:`Transport`, which reaches the sites: hosted in this process behind an endpoint address
(:class:`InProcess`), or in a site host process of their own. A site receives exactly what a
SuperNode would and nothing shares memory across the boundary; the grid holds no site. Deliveries run
on a thread pool (or on the caller's thread when that is faster: see :meth:`LocalGrid.push_messages`).
No Ray, no servers: ready in milliseconds.

``Message(...)`` reads a process-wide task identity that Flower's runtimes set; outside a runtime it is
set here (``flwr.supercore.task_identity`` is internal API: flwr is pinned and
``tests/test_engine.py`` fails loudly if it moves).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from flwr.app import Error, Message, RecordDict
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined]
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedhem_kernel.protocol import endpoints
from fedhem_kernel.protocol.wire import (
    ensure_task_identity,
    from_proto,
    set_message_id,
    to_wire,
)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


_trim = _malloc_trim()


#: A message of at least this many bytes, or a round whose replies add up to ``ROUND_TRIM_BYTES``,
#: is followed by :func:`release_free_memory`.
TRIM_BYTES = 8 * 2**20
ROUND_TRIM_BYTES = 64 * 2**20

#: See :meth:`LocalGrid.push_messages`: rounds this fast per site run on the caller's thread.
INLINE_SECONDS = 0.002
#: ... and so do rounds whose last run on the pool took at least this share of the sites' summed
#: CPU time (the threads mostly waited for each other: Python holds one lock).
POOL_GAIN = 0.75
#: A query's first round of a step follows the same step's first round in the previous query,
#: unless that ran on the caller's thread and its slowest site took longer than this: then it goes
#: to the pool again, to see whether the larger work now gains from it.
REPROBE_SECONDS = 0.05


@dataclass
class _RoundTiming:
    """One (query, step)'s last round: how it ran and what its deliveries took."""

    pooled: bool
    started: float = field(default_factory=time.perf_counter)
    slowest: float = 0.0  # wall time of the slowest delivery
    cpu: float = 0.0  # summed CPU time of the deliveries (their threads' own time)
    finished: float = 0.0  # when the last delivery ended
    pool_helps: bool | None = None  # from the last pooled round of this step

    def record(self, wall: float, cpu: float) -> None:
        self.slowest = max(self.slowest, wall)
        self.cpu += cpu
        self.finished = time.perf_counter()

    def next_inline(self) -> tuple[bool, bool | None]:
        """Whether the next round runs on the caller's thread, and what pooling was worth."""
        helps = self.pool_helps
        if self.pooled and self.finished:
            helps = (self.finished - self.started) < POOL_GAIN * self.cpu
        return self.slowest <= INLINE_SECONDS or helps is False, helps

    def next_first(self) -> tuple[bool, bool | None]:
        """:meth:`next_inline` for the same step's first round in a later query."""
        if not self.pooled and self.slowest > REPROBE_SECONDS:
            return False, None
        return self.next_inline()


def release_free_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc's ``malloc_trim``).

    A large message passes through a few buffers (bytes, protobuf, Message, arrays), on a site's
    thread and then on the coordinator's; glibc keeps what they free in per-thread heaps, so
    without this the process keeps the high-water mark of every round (hundreds of megabytes with
    exact times on a million rows). Called only after large messages and rounds
    (:data:`TRIM_BYTES`, :data:`ROUND_TRIM_BYTES`): the pages are faulted in again later, which
    costs tens of milliseconds. Does nothing where the C library has no such call.
    """
    if _trim is not None:
        _trim(0)


class _OneBlasThread:
    """While sites run on the pool's threads, BLAS runs one thread in each (process-wide).

    OpenBLAS would start its own threads in every site thread at once: on a few cores they spin
    against each other (a k-means round on a million rows took four times longer). Counted over
    the messages in flight: the original limit is back when the last one is delivered. Needs
    ``threadpoolctl`` (a dependency); without it nothing is limited.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._limiter: Any = None
        self._controller: Any = None

    def acquire(self) -> None:
        with self._lock:
            if self._in_flight == 0:
                if self._controller is None:
                    try:
                        from threadpoolctl import ThreadpoolController
                    except ImportError:
                        self._controller = False
                    else:
                        self._controller = ThreadpoolController()
                if self._controller:
                    self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._in_flight += 1

    def release(self, _future: Any = None) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0 and self._limiter is not None:
                self._limiter.restore_original_limits()
                self._limiter = None


_one_blas_thread = _OneBlasThread()
_run_ids = itertools.count(1)


class Transport(Protocol):
    """How a grid reaches its sites: a message's wire bytes to a node, the reply's wire bytes back."""

    def deliver(self, node_id: int, wire: bytes) -> bytes: ...

    def close(self) -> None: ...


class InProcess:
    """Sites hosted in this process, reached through their endpoint address only
    (:mod:`fedhem_kernel.protocol.endpoints`): the grid holds no site, no dataset, no row."""

    remote = False

    def __init__(self, address: str) -> None:
        self.address = address

    def deliver(self, node_id: int, wire: bytes) -> bytes:
        return endpoints.deliver(self.address, node_id, wire)

    def close(self) -> None:
        endpoints.unregister(self.address)

    def __repr__(self) -> str:
        return f"InProcess({self.address!r})"


class LocalGrid(Grid):
    """A Flower ``Grid`` whose sites are reached through a :class:`Transport` (in this process, or a
    site host process), one message at a time as wire bytes.

    ``node_ids`` are the sites' node ids at the transport. Closing the grid (or losing the last
    reference to it) closes the transport, which shuts down sites hosted for it.
    """

    def __init__(
        self, transport: Transport, node_ids: Iterable[int], max_workers: int | None = None
    ) -> None:
        ensure_task_identity()
        self.transport = transport
        #: Whether fast rounds may run on the calling thread (no timeout can stop them there):
        #: off once sites are isolated (:meth:`isolate_sites`).
        self.allow_inline = True
        self._nodes = list(node_ids)
        if max_workers is None:  # site steps are CPU-bound: more threads than cores only add
            max_workers = min(4, os.cpu_count() or 1)  # memory (each holds its temporaries)
        self._workers = max(1, min(max_workers, len(self._nodes) or 1))
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self._pools = [self._pool]  # every pool, shut down on close
        #: One thread per site (see :meth:`isolate_sites`), else None: the shared pool.
        self._site_pools: dict[int, ThreadPoolExecutor] | None = None
        if getattr(transport, "remote", False):  # threads only wait for another process
            self.isolate_sites()
        self._pending: dict[str, Future[bytes]] = {}
        #: per (query, message type): the slowest delivery of its last round (see push_messages)
        self._rounds: dict[tuple[str, str], _RoundTiming] = {}
        #: per message type: its latest first round in a query
        self._first_rounds: dict[str, _RoundTiming] = {}
        self._timing = threading.Lock()
        self._run = Run.create_empty(next(_run_ids))
        #: Bytes on the wire per node: what the coordinator sent to it and what it sent back.
        self.bytes_sent: dict[int, int] = dict.fromkeys(self._nodes, 0)
        self.bytes_received: dict[int, int] = dict.fromkeys(self._nodes, 0)
        self.replies_received: dict[int, int] = dict.fromkeys(self._nodes, 0)
        self._closer = weakref.finalize(self, _close, self._pools, transport)

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

    def _deliver(self, node_id: int, message: Message) -> bytes:
        # serialised here, on the site's thread: a round's requests are not all held on the wire
        # at once (a request can carry megabytes: the same for every site)
        started, cpu_started = time.perf_counter(), time.thread_time()
        wire = to_wire(message)
        size = len(wire)
        self.bytes_sent[node_id] += size
        try:
            data = self.transport.deliver(node_id, wire)
        except endpoints.EndpointClosed:
            raise
        except Exception:  # noqa: BLE001 - as a SuperNode would: an error reply, no text from the app
            reply = Message(Error(code=1, reason="the site could not be reached"), reply_to=message)
            set_message_id(reply, uuid.uuid4().hex)
            data = to_wire(reply)
        del wire
        if size + len(data) >= TRIM_BYTES:
            release_free_memory()
        self.bytes_received[node_id] += len(data)
        self.replies_received[node_id] += 1
        key = (message.metadata.group_id, message.metadata.message_type)
        with self._timing:
            timing = self._rounds.get(key)
            if timing is not None:
                timing.record(time.perf_counter() - started, time.thread_time() - cpu_started)
        return data

    def _inline(self, node_id: int, message: Message) -> Future[bytes]:
        future: Future[bytes] = Future()
        try:
            future.set_result(self._deliver(node_id, message))
        except Exception as exc:  # noqa: BLE001 - as the pool would: raised when the reply is read
            future.set_exception(exc)
        return future

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its site, on the thread pool.

        A round whose previous round (same query, same step) took at most
        :data:`INLINE_SECONDS` at every site, or whose last pooled round took at least
        :data:`POOL_GAIN` of the sites' summed CPU time, is delivered on the calling thread
        instead, one site after the other: the rounds of an iterative fit (k-means, Cox) are
        mostly Python work that holds the GIL, and handing them to threads costs more than it
        saves. A query's first round of a step (which may build what later rounds reuse) is
        decided the same way from that step's first round in the previous query (see
        :data:`REPROBE_SECONDS`); the very first goes to the pool. While several sites run on
        the pool, BLAS runs one thread each (:class:`_OneBlasThread`).
        """
        messages = list(messages)
        keys = {(m.metadata.group_id, m.metadata.message_type) for m in messages}
        with self._timing:
            decided = {}
            first = set()
            for key in keys:
                timing = self._rounds.pop(key, None)
                if timing is None:
                    first.add(key)
                    timing = self._first_rounds.get(key[1])
                    decided[key] = timing.next_first() if timing else (False, None)
                else:
                    decided[key] = timing.next_inline()
            # sites in another process work there: the pool's threads only wait for them
            inline = (
                self.allow_inline
                and not getattr(self.transport, "remote", False)
                and all(d[0] for d in decided.values())
            )
            for key, (_, helps) in decided.items():  # this round's timing, most recent last
                self._rounds[key] = _RoundTiming(pooled=not inline, pool_helps=helps)
                if key in first:
                    self._first_rounds[key[1]] = self._rounds[key]
            while len(self._rounds) > 256:
                del self._rounds[next(iter(self._rounds))]
        parallel = not inline and len(messages) > 1 and self._workers > 1
        ids = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id not in self.bytes_sent:
                raise ValueError(f"unknown node id {node_id}")
            message_id = uuid.uuid4().hex
            set_message_id(message, message_id)
            if inline:
                future = self._inline(node_id, message)
            else:
                if parallel:
                    _one_blas_thread.acquire()
                pool = self._site_pools[node_id] if self._site_pools else self._pool
                try:
                    future = pool.submit(self._deliver, node_id, message)
                except BaseException:
                    if parallel:
                        _one_blas_thread.release()
                    raise
                if parallel:
                    future.add_done_callback(_one_blas_thread.release)
            self._pending[message_id] = future
            ids.append(message_id)
        return ids

    def isolate_sites(self) -> None:
        """Deliver to each site on a thread of its own, and never on the calling thread: a site
        that hangs then holds back only its own later rounds, never another site's, and a round's
        timeout always applies (:meth:`Federation.configure`). Sites in another process get it
        from the start (their threads only wait)."""
        if self._site_pools is None:
            self._site_pools = {
                node: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fedhem-site-{node}")
                for node in self._nodes
            }
            self._pools.extend(self._site_pools.values())
        self.allow_inline = False

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for message_id in message_ids:
            future = self._pending.get(message_id)
            if future is not None and future.done():
                del self._pending[message_id]
                out.append(from_proto(ProtoMessage.FromString(future.result())))
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
        size = 0
        try:
            for future in as_completed(futures, timeout=timeout):
                self._pending.pop(futures.pop(future), None)
                size += len(future.result())
                proto = ProtoMessage.FromString(future.result())
                del future  # the reply's bytes are freed once parsed, not when every site is in
                message = from_proto(proto)
                del proto
                yield message
                del message
        except TimeoutError:  # the sites that have not answered get "no reply in time"
            return
        finally:
            if size >= ROUND_TRIM_BYTES:
                release_free_memory()

    def close(self) -> None:
        """Stop the pool and close the transport (sites hosted for this grid are shut down)."""
        self._closer()


def _close(pools: list[ThreadPoolExecutor], transport: Transport) -> None:
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    transport.close()
