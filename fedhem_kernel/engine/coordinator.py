"""The coordinator: sends site steps over a Flower Grid and keeps each query's privacy outcomes.

A :class:`Query` is one researcher call (e.g. ``fed.kaplan_meier(...)``), possibly several rounds. A site
that refuses or fails in one round is not asked again; its outcome and reasons go into the report. When
no site releases anything the query raises: the sites' own error when they agree it is bad input,
otherwise :class:`~fedhem_kernel.errors.DisclosureError` with every site's rule.

Progress: ``Coordinator.observers`` are callables that receive a :class:`ProgressEvent` when a query
starts, when a round is sent, as each site's reply arrives and when the query is finished. Events carry
site names and outcomes only, never a payload. By default the only observer is
:func:`notebook_progress`, which shows a per-site progress widget inside a Jupyter kernel and does
nothing anywhere else.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.app import RecordDict
from flwr.serverapp import Grid

from fedhem_kernel.engine.secure_sum import KeySession, ask_sum
from fedhem_kernel.errors import DisclosureError, FedHemError, error_from_dict
from fedhem_kernel.protocol.auth import ResearcherKey, reply_is_signed
from fedhem_kernel.protocol.codec import decode_reply, encode_request
from fedhem_kernel.protocol.messages import CATALOG_STEP, SiteReply, SiteRequest
from fedhem_kernel.protocol.progress import EventKind, ProgressEvent
from fedhem_kernel.protocol.report import Detail, PrivacyReport, SiteOutcome
from fedhem_kernel.protocol.secure_sum import SecureTotal

_RANK = {"released": 0, "suppressed": 1, "refused": 2, "error": 3}

log = logging.getLogger(__name__)

Observer = Callable[[ProgressEvent], None]


def notebook_progress(event: ProgressEvent) -> None:
    """Default observer: a per-site progress widget when running inside a Jupyter kernel.

    Outside a kernel (plain Python, pytest) it does nothing and imports nothing.
    """
    if "ipykernel" not in sys.modules:
        return
    from fedhem_kernel.display.progress import show_progress

    show_progress(event)


class Coordinator:
    """Maps node ids to site names and runs request/reply rounds on a Grid."""

    def __init__(
        self,
        grid: Grid,
        sites: dict[int, str],
        timeout: float | None = 600.0,
        observers: Iterable[Observer] | None = None,
    ) -> None:
        self.grid = grid
        self.sites = dict(sites)
        self.timeout = timeout
        #: The key session of this coordinator's secure sums (each site's signed key, once).
        self.keys = KeySession()
        #: The researcher's key: every request is signed with it (sites that list researchers
        #: answer nothing else: :mod:`fedhem_kernel.protocol.auth`). None: unsigned.
        self.signer: ResearcherKey | None = None
        #: Each site's public identity key: a reply it does not verify is ignored (None: replies
        #: are taken as they come, e.g. sites without identity keys).
        self.site_keys: dict[str, ed25519.Ed25519PublicKey] | None = None
        #: Called with every :class:`ProgressEvent`; an observer that raises is logged and skipped.
        self.observers: list[Observer] = (
            [notebook_progress] if observers is None else list(observers)
        )

    def notify(self, event: ProgressEvent) -> None:
        """Tell every observer; an observer's failure never affects the query."""
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 - progress display must not break a query
                log.warning("progress observer %r failed", observer, exc_info=True)

    @property
    def site_names(self) -> list[str]:
        return list(self.sites.values())

    def _checked(self, reply: SiteReply, name: str, request: SiteRequest) -> SiteReply:
        """``reply`` if it is ``name``'s and signed with its key (when keys are known), else an
        error reply saying it was ignored."""
        if self.site_keys is None:
            return reply
        key = self.site_keys.get(name)
        if reply.site == name and key is not None and reply_is_signed(key, reply, request):
            return reply
        log.warning("a reply for site %s was not signed by its key and was ignored", name)
        error = FedHemError("a reply not signed by this site's key was ignored", site=name)
        return SiteReply(name, "error", error=error.to_dict())

    def send(
        self, request: SiteRequest, sites: Iterable[str] | None = None
    ) -> dict[str, SiteReply]:
        wanted = set(self.sites.values()) if sites is None else set(sites)
        messages = []
        if self.signer is not None:
            request = dataclasses.replace(request, auth=self.signer.sign(request))
        content = encode_request(request)  # once: every site is sent the same request
        for node_id, name in self.sites.items():
            if name in wanted:
                messages.append(
                    self.grid.create_message(
                        content,
                        f"query.{request.step}",
                        node_id,
                        group_id=request.query_id,
                    )
                )
        asked = tuple(n for n in self.sites.values() if n in wanted)
        query_id = request.query_id
        started = time.monotonic()

        def event(kind: EventKind, **kw: Any) -> ProgressEvent:
            return ProgressEvent(
                kind,
                query_id,
                step=request.step,
                sites=asked,
                dataset=request.dataset,
                elapsed=time.monotonic() - started,
                **kw,
            )

        watched = bool(self.observers)  # events are built only for someone to see them
        if watched:
            self.notify(event("round"))
        replies: dict[str, SiteReply] = {}
        for msg in self.grid.send_and_receive(messages, timeout=self.timeout):
            name = self.sites.get(msg.metadata.src_node_id)
            if name is None or name not in wanted:  # a node this round did not ask: ignored
                log.warning(
                    "a reply from node %s, not asked, was ignored", msg.metadata.src_node_id
                )
                continue
            if msg.has_error():
                replies[name] = SiteReply(
                    name,
                    "error",
                    error=FedHemError("the site could not answer", site=name).to_dict(),
                )
            else:
                replies[name] = self._checked(_decoded(msg.content, name), name, request)
            if watched:
                self.notify(event("reply", site=name, status=replies[name].status))
        for name in [*asked, *sorted(wanted - set(asked))]:
            if name not in replies:
                replies[name] = SiteReply(
                    name, "error", error=FedHemError("no reply in time", site=name).to_dict()
                )
                if watched:
                    self.notify(event("reply", site=name, status="error"))
        return replies


class Query:
    """One researcher query across one or more rounds."""

    def __init__(
        self,
        coordinator: Coordinator,
        analysis: str,
        dataset: str,
        where: str | None = None,
        who: str = "anonymous",
    ) -> None:
        self.coordinator = coordinator
        self.analysis = analysis
        self.dataset = dataset
        self.where = where
        self.who = who
        self.query_id = uuid.uuid4().hex
        self.active = list(coordinator.site_names)
        self._status: dict[str, str] = {s: "released" for s in self.active}
        self._details: dict[str, list[Detail]] = {s: [] for s in self.active}
        self._errors: dict[str, FedHemError] = {}
        self._budgets: dict[str, dict[str, float]] = {}
        self._notes: list[str] = []
        self._started: float | None = None
        self._finished = False

    def _event(self, kind: EventKind, **kw: Any) -> ProgressEvent:
        elapsed = 0.0 if self._started is None else time.monotonic() - self._started
        return ProgressEvent(
            kind,
            self.query_id,
            analysis=self.analysis,
            dataset=self.dataset,
            sites=tuple(self.coordinator.site_names),
            elapsed=elapsed,
            **kw,
        )

    def start(self) -> None:
        """Tell the observers that this query begins (called by its first round)."""
        if self._started is None:
            self._started = time.monotonic()
            self.coordinator.notify(self._event("start"))

    def finish(self, error: BaseException | None = None) -> None:
        """Tell the observers that this query is over (idempotent; a no-op if it never started)."""
        if self._started is None or self._finished:
            return
        self._finished = True
        self.coordinator.notify(
            self._event("done", status="error" if error is not None else "released")
        )

    def ask(self, step: str, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        self.start()
        request = SiteRequest(step, self.dataset, params, self.where, self.who, self.query_id)
        replies = self.coordinator.send(request, self.active)
        payloads: dict[str, dict[str, Any]] = {}
        for site in list(self.active):
            reply = replies[site]
            self.record(site, reply)
            if reply.status in ("released", "suppressed") and reply.payload is not None:
                payloads[site] = reply.payload
            else:
                self.drop(site)
        if not payloads:
            raise self.failure()
        return payloads

    def ask_sum(
        self, step: str, params: dict[str, Any], noise_scale: float | None = None
    ) -> SecureTotal:
        """``step`` as a secure sum over the sites still taking part (see
        :mod:`fedhem_kernel.engine.secure_sum`): totals only, no site's share; ``noise_scale``
        in DP mode."""
        return ask_sum(self, step, params, noise_scale)

    def drop(self, site: str) -> None:
        """Ask ``site`` nothing more in this query (it refused or failed)."""
        if site in self.active:
            self.active.remove(site)

    @property
    def sites(self) -> list[str]:
        """Every site of the federation (asked in the first round)."""
        return list(self.coordinator.site_names)

    @property
    def dropped(self) -> list[str]:
        """Sites that refused or failed in a round of this query and were not asked again."""
        return [s for s in self.coordinator.site_names if s not in self.active]

    def catalog(self) -> dict[str, dict[str, Any]]:
        """Each site's catalog (column names, types, units, derived sources; never a value),
        asked of the sites still taking part; sites that do not answer are left out (the next
        round will report them)."""
        sites = tuple(self.active)
        cached = getattr(self, "_catalog", None)
        if cached is not None and cached[0] == sites:  # asked once per query (and set of sites)
            return dict(cached[1])
        self.start()  # a round of the query like any other (observers hear "start" first)
        request = SiteRequest(CATALOG_STEP, None, {}, None, self.who, self.query_id)
        replies = self.coordinator.send(request, list(sites))
        catalog = {  # in the federation's site order, not the order the replies came in
            s: replies[s].payload
            for s in self.coordinator.site_names
            if s in replies and replies[s].payload is not None
        }
        self._catalog = (sites, catalog)
        return dict(catalog)

    def tell(self, step: str, params: dict[str, Any], sites: Iterable[str]) -> None:
        """Send ``step`` to ``sites`` for housekeeping (e.g. dropping derived columns a site keeps
        from an earlier run); their answers are not part of this query's result or report."""
        sites = list(sites)
        if sites:
            request = SiteRequest(step, self.dataset, params, None, self.who, self.query_id)
            self.coordinator.send(request, sites)

    def record(self, site: str, reply: SiteReply) -> None:
        """Keep a site's outcome, details and notes of one round for the privacy report."""
        if _RANK[reply.status] > _RANK[self._status[site]]:
            self._status[site] = reply.status
        if reply.budget is not None:
            self._budgets[site] = dict(reply.budget)
        details = self._details[site]
        for s in reply.suppressions:
            detail = Detail.from_dict(s)  # checked when the reply was decoded
            if detail not in details:
                details.append(detail)
        if reply.error is not None:
            err = error_from_dict(reply.error)
            self._errors[site] = err
            action = "refused" if isinstance(err, DisclosureError) else "error"
            details.append(Detail(err.rule or type(err).__name__, err.reason, action=action))
        for note in reply.notes:
            self.note(f"{site}: {note}")

    def progress(self, site: str, detail: str) -> None:
        """Tell the observers how far ``site`` is within a long step (counts only, no values)."""
        self.coordinator.notify(self._event("detail", site=site, detail=detail))

    def note(self, text: str) -> None:
        if text not in self._notes:
            self._notes.append(text)

    def failure(self) -> FedHemError:
        """The error of a query no site answered: the sites' own input error when they agree,
        else a DisclosureError listing every site's rule."""
        errors = list(self._errors.values())
        input_errors = [e for e in errors if not isinstance(e, DisclosureError)]
        if input_errors and len(input_errors) == len(errors):
            return input_errors[0]
        reasons = "; ".join(f"{e.site}: {e.reason} [{e.rule}]" for e in errors)
        rules = ",".join(sorted({e.rule for e in errors if e.rule}))
        return DisclosureError(
            f"every site refused this query ({reasons})", dataset=self.dataset, rule=rules or None
        )

    def report(self) -> PrivacyReport:
        outcomes = []
        for site in self.coordinator.site_names:
            outcomes.append(
                SiteOutcome(
                    site,
                    self._status.get(site, "error"),  # type: ignore[arg-type]
                    tuple(self._details.get(site, [])),
                    self._budgets.get(site),
                )
            )
        return PrivacyReport(self.analysis, self.dataset, tuple(outcomes), tuple(self._notes))


def _decoded(content: RecordDict, site: str) -> SiteReply:
    """A site's reply, checked: a malformed one (wrong kind, fields or details) is an error reply
    (a site may be mistaken or not what it claims; nothing of it is used)."""
    try:
        reply = decode_reply(content)
        if reply.status not in _RANK or not isinstance(reply.suppressions, list):
            raise ValueError("unknown status")
        budget = reply.budget
        if budget is not None and not (
            isinstance(budget, dict)
            and len(budget) <= 16
            and all(
                isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                for k, v in budget.items()
            )
        ):
            raise ValueError("malformed budget")
        for detail in reply.suppressions:
            Detail.from_dict(detail)
    except Exception:  # noqa: BLE001 - never trust a reply's shape
        return SiteReply(
            site, "error", error=FedHemError("malformed reply from the site", site=site).to_dict()
        )
    return reply
