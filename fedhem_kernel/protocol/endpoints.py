"""In-process endpoints: how the embedded grid reaches sites hosted in this process, by address.

An embedded federation's sites run in the researcher's process (for demos, teaching and validation).
They are registered here under an opaque address (``inproc://...``) as a function from a node id and
a Flower message's wire bytes to the reply's wire bytes: the same exchange a SuperNode has with a
SuperLink. The grid holds the address only, so nothing reachable from the researcher's objects is a
site, a dataset or a row (``tests/test_boundary.py`` walks the object graph); for sites that share no
memory with the researcher at all, run them in their own process (``isolation="process"``) or deploy
them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

Deliver = Callable[[int, bytes], bytes]

_endpoints: dict[str, Deliver] = {}
_lock = threading.Lock()


class EndpointClosed(ConnectionError):
    """The sites at an address were shut down (the federation was closed)."""


def register(deliver: Deliver) -> str:
    """Host ``deliver`` under a new address and return the address."""
    address = f"inproc://{uuid.uuid4().hex}"
    with _lock:
        _endpoints[address] = deliver
    return address


def unregister(address: str) -> None:
    """Shut the endpoint down (idempotent): its sites are dropped with it."""
    with _lock:
        _endpoints.pop(address, None)


def deliver(address: str, node_id: int, wire: bytes) -> bytes:
    """Hand a message's wire bytes to node ``node_id`` at ``address``; its reply's wire bytes."""
    target = _endpoints.get(address)
    if target is None:
        raise EndpointClosed("no sites at this address (the federation was closed)")
    return target(node_id, wire)


def lookup(address: str) -> Deliver | None:
    """The function registered at ``address`` (for the site side's own tools and tests)."""
    return _endpoints.get(address)
