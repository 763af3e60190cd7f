"""How an analysis's combine step talks to the sites: the :class:`Ask` interface of one query.

The coordinator's ``Query`` implements it (:mod:`fedhem_kernel.engine.coordinator`); a combine step
only ever sees payloads the sites released.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fedhem_kernel.protocol.report import PrivacyReport
    from fedhem_kernel.protocol.secure_sum import SecureTotal

Payload = dict[str, Any]


class Ask(Protocol):
    """The coordinator side of one researcher query (see ``engine.coordinator.Query``)."""

    dataset: str
    where: str | None

    def ask(self, step: str, params: Payload) -> dict[str, Payload]:
        """Send ``query.<step>`` to every site still taking part; payloads of those that released."""
        ...

    def ask_sum(self, step: str, params: Payload, noise_scale: float | None = None) -> SecureTotal:
        """Send ``query.<step>`` as a secure sum: the totals of its summed fields over the sites
        that answered (no site's own share is seen), and each site's shared fields. In DP mode
        ``noise_scale`` is the scale of the discrete Gaussian noise the totals carry."""
        ...

    def note(self, text: str) -> None:
        """Add a note (plain words, no values) to the query's privacy report."""
        ...

    def report(self) -> PrivacyReport:
        """What each site released, suppressed or refused so far."""
        ...

    @property
    def sites(self) -> list[str]:
        """Every site of the federation."""
        ...

    @property
    def dropped(self) -> list[str]:
        """Sites that refused or failed in a round and were not asked again."""
        ...

    def catalog(self) -> dict[str, Payload]:
        """Each site's catalog: column names, types, units and derived sources, never values."""
        ...

    def tell(self, step: str, params: Payload, sites: Iterable[str]) -> None:
        """Housekeeping: send ``step`` to ``sites``; their answers are not part of the result."""
        ...

    def progress(self, site: str, detail: str) -> None:
        """Show how far ``site`` is in a long step (e.g. "12/40 images"): names and counts only."""
        ...
