"""Frames on the pipe between the researcher's side and a site host process (``fedhem serve-sites``).

A frame is a header (request id, node id — or, in a reply, a status: 0 = ok — and the payload's
length) and the payload: a Flower message's wire bytes, an error's text, or the start-up record
(request id :data:`HELLO`: JSON naming the sites, or why one could not load).
"""

from __future__ import annotations

import struct
from typing import IO

FRAME = struct.Struct("<QIQ")
#: The request id of the start-up record.
HELLO = 0


def read_exact(stream: IO[bytes], n: int) -> bytes | None:
    """``n`` bytes from ``stream``; None when it ends first."""
    parts = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def read_frame(stream: IO[bytes]) -> tuple[int, int, bytes] | None:
    """One frame (request id, node id or status, payload); None at the end of the stream."""
    head = read_exact(stream, FRAME.size)
    if head is None:
        return None
    request_id, node, length = FRAME.unpack(head)
    payload = read_exact(stream, length) if length else b""
    return None if payload is None else (request_id, node, payload)


def write_frame(stream: IO[bytes], request_id: int, node: int, payload: bytes) -> None:
    """Write one frame (the caller serialises writers) and flush it."""
    stream.write(FRAME.pack(request_id, node, len(payload)))
    stream.write(payload)
    stream.flush()
