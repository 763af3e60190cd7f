"""Sites in a process of their own: a :class:`~fedhem_kernel.engine.local_grid.LocalGrid`
transport over a pipe to ``fedhem serve-sites``.

The researcher's process starts the site host and sends it Flower messages as wire bytes, one frame
each (request id, node id, length, bytes); a reader thread hands each reply to the request waiting
for it. The researcher's process never loads a site's data: the Jupyter server extension and
``%fed connect`` use this for federations of site folders, until the sites run on their own nodes.
The site host ends when its input closes (:meth:`SiteProcess.close`, or this process ending).
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from fedhem_kernel.errors import FedHemError, error_from_dict
from fedhem_kernel.protocol.auth import public_key_from_text
from fedhem_kernel.protocol.frames import HELLO, read_frame, write_frame

log = logging.getLogger(__name__)

#: Seconds to wait for the site host to load its sites.
START_TIMEOUT = 300.0


class SiteHostStopped(ConnectionError):
    """The site host process ended (or never started)."""


class SiteProcess:
    """A site host process and the pipe to it (a grid :class:`Transport`).

    ``argv`` after the interpreter: by default ``-m fedhem_kernel serve-sites CONFIG``. Raises the
    site host's :class:`~fedhem_kernel.errors.FedHemError` when a site cannot be loaded.
    """

    remote = True  # the sites work in their own process: deliveries always go to the grid's pool

    def __init__(self, config: str, *, argv: Sequence[str] | None = None) -> None:
        args = list(argv) if argv is not None else ["-m", "fedhem_kernel", "serve-sites", config]
        self._process = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the site host's log goes where this process logs
            bufsize=0,
        )
        self._write_lock = threading.Lock()
        self._pending: dict[int, Future[bytes]] = {}
        self._pending_lock = threading.Lock()
        self._stopped = False  # set by the reader when the pipe ends (under _pending_lock)
        self._ids = itertools.count(1)
        self._closed = False
        started: Future[dict] = Future()
        self._reader = threading.Thread(
            target=self._read, args=(started,), name="fedhem-site-host-reader", daemon=True
        )
        self._reader.start()
        try:
            hello = started.result(timeout=START_TIMEOUT)
        except BaseException:
            self.close()
            raise
        if "error" in hello:
            self.close()
            raise error_from_dict(hello["error"])
        self.federation: str = str(hello["federation"])
        self.names: dict[int, str] = {int(k): str(v) for k, v in hello["nodes"].items()}
        #: Each site's public identity key, as the host this process started reports it.
        keys = hello.get("keys")
        self.keys = (
            {str(n): public_key_from_text(str(t)) for n, t in keys.items()} if keys else None
        )

    def _read(self, started: Future[dict]) -> None:
        stream = self._process.stdout
        assert stream is not None
        try:
            while (frame := read_frame(stream)) is not None:
                request_id, status, payload = frame
                if request_id == HELLO:
                    started.set_result(json.loads(payload))
                    continue
                with self._pending_lock:
                    future = self._pending.pop(request_id, None)
                if future is None:
                    continue
                if status == 0:
                    future.set_result(payload)
                else:
                    future.set_exception(SiteHostStopped("the site host could not answer"))
        finally:
            if not started.done():
                started.set_exception(
                    FedHemError("the site host stopped before its sites were loaded (see its log)")
                )
            with self._pending_lock:
                self._stopped = True
                waiting = list(self._pending.values())
                self._pending.clear()
            for future in waiting:
                if not future.done():
                    future.set_exception(SiteHostStopped("the site host stopped"))

    def deliver(self, node_id: int, wire: bytes) -> bytes:
        """Send a message to node ``node_id`` at the site host; its reply's wire bytes."""
        request_id = next(self._ids)
        future: Future[bytes] = Future()
        with self._pending_lock:
            if self._closed or self._stopped:
                raise SiteHostStopped("the site host is not running")
            self._pending[request_id] = future
        stdin = self._process.stdin
        assert stdin is not None
        try:
            with self._write_lock:
                write_frame(stdin, request_id, node_id, wire)
        except (BrokenPipeError, ValueError, OSError):
            with self._pending_lock:
                self._pending.pop(request_id, None)
            raise SiteHostStopped("the site host stopped") from None
        return future.result()

    def close(self) -> None:
        """Close the pipe (the site host ends) and wait for the process (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._process.stdin is not None:
                self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def __repr__(self) -> str:
        return f"SiteProcess(pid={self._process.pid}, sites={list(self.names.values())})"
