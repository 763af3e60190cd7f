"""Progress of a running query, as observers see it: names and outcomes only, never a value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventKind = Literal["start", "round", "reply", "detail", "done"]


@dataclass(frozen=True)
class ProgressEvent:
    """What an observer learns about a running query (names and outcomes only, no values).

    ``start``: a query begins (``sites`` = every site asked). ``round``: one step is sent to
    ``sites``. ``reply``: ``site`` answered with ``status`` (released / suppressed / refused /
    error). ``detail``: how far ``site`` is within a long step (``detail``, e.g. "12/40 images",
    from the analysis). ``done``: the query is over (``status`` is ``"error"`` if it raised). ``elapsed`` is
    seconds since the query started (``start``, ``done``) or since the round was sent (``round``,
    ``reply``).
    """

    kind: EventKind
    query_id: str
    step: str | None = None
    sites: tuple[str, ...] = ()
    site: str | None = None
    status: str | None = None
    analysis: str | None = None
    dataset: str | None = None
    elapsed: float = 0.0
    detail: str | None = None
