"""How an analysis's combine step talks to the sites: the :class:`Ask` interface of one query.

The coordinator's ``Query`` implements it (:mod:`fedhem_kernel.engine.coordinator`); a combine step
only ever sees payloads the sites released.
"""

from __future__ import annotations

from typing import Any, Protocol

Payload = dict[str, Any]


class Ask(Protocol):
    """The coordinator side of one researcher query (see ``engine.coordinator.Query``)."""

    dataset: str
    where: str | None

    def ask(self, step: str, params: Payload) -> dict[str, Payload]:
        """Send ``query.<step>`` to every site still taking part; payloads of those that released."""
        ...

    def note(self, text: str) -> None: ...

    def progress(self, site: str, detail: str) -> None:
        """Show how far ``site`` is in a long step (e.g. "12/40 images"): names and counts only."""
        ...
