"""The site executor: the only place where a query meets rows.

For each request it checks, in order: the policy allows the analysis; the dataset and columns exist;
the ``where=`` filter parses and fits the schema; the cohort and its complement are large enough; the
cohort does not difference an earlier released one. Then it runs the analysis's site step, records the
outcome in the audit log, and only then returns the reply. Unexpected exceptions become a generic error
(their text could quote data); the details go to the site's own log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.errors import DisclosureError, FedHemError, ParameterError, SchemaError
from fedhem_kernel.privacy.budget import BudgetLedger
from fedhem_kernel.privacy.dp import noise_share, rho_of, scale_for
from fedhem_kernel.privacy.ledger import Ledger, Transaction
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.auth import RULE as AUTH_RULE
from fedhem_kernel.protocol.auth import AuthError, Researchers, sign_reply
from fedhem_kernel.protocol.messages import (
    AUDIT_STEP,
    BUDGET_STEP,
    CATALOG_STEP,
    KEYS_STEP,
    SiteReply,
    SiteRequest,
)
from fedhem_kernel.protocol.params import check_request
from fedhem_kernel.protocol.report import ReleaseLog
from fedhem_kernel.protocol.secure_sum import BAD_SUM, request_binding
from fedhem_kernel.site.audit import AuditLog
from fedhem_kernel.site.config import SiteConfig
from fedhem_kernel.site.datasets import Dataset, load_dataset
from fedhem_kernel.site.derived import add_derived
from fedhem_kernel.site.filters import compile_where, evaluate_where
from fedhem_kernel.site.secure_sum import SecureSumParty, SumPlan, secure_fields
from fedhem_kernel.site.steps import SiteData, SiteStep

log = logging.getLogger("fedhem.site")

#: Most audit entries one ``audit`` request returns.
MAX_AUDIT_ENTRIES = 10_000


class SiteExecutor:
    """Holds one site's datasets, policy, audit log and release ledgers."""

    def __init__(
        self,
        name: str,
        datasets: dict[str, Dataset],
        policy: Policy | None = None,
        audit: AuditLog | None = None,
        *,
        steps: Mapping[str, SiteStep],
        secure: SecureSumParty | None = None,
        state_dir: Path | None = None,
        researchers: Researchers | None = None,
        sign_replies: bool = False,
    ) -> None:
        self.name = name
        #: Whether every reply is signed with the site's identity key (a site with an identity
        #: key of its own, from its config; embedded sites, in the researcher's process, do not).
        self.sign_replies = sign_replies and secure is not None
        #: The researchers this site answers (None: unsigned requests are answered).
        self.researchers = researchers
        #: Where the site keeps its release ledgers (None: in memory only).
        self.state_dir = Path(state_dir) if state_dir is not None else None
        #: The release ledger of each dataset (:mod:`fedhem_kernel.privacy.ledger`).
        self.ledgers: dict[str, Ledger] = {}
        self._budget: BudgetLedger | None = None
        #: This site's part in secure sums (None: it takes part in none).
        self.secure = secure
        self.datasets = datasets
        #: The site steps this site runs, by name (handed over when it is built: see
        #: :mod:`fedhem_kernel.node`); a request for any other step is an error.
        self.steps = dict(steps)
        self.policy = policy or Policy()
        self.audit = audit or AuditLog()
        self._scratch: dict[str, dict[str, Any]] = {}  # per dataset, kept between query rounds
        self._cohorts: dict[str, tuple[Dataset, bytes, pd.DataFrame, np.ndarray]] = {}
        #: per dataset: recent filters and their snapped cohorts (each a union of atoms, which it
        #: stays: atoms only split), so that a query's rounds and a repeated query get the same rows
        self._masks: dict[str, OrderedDict[str | None, np.ndarray]] = {}

    @classmethod
    def from_config(
        cls,
        config: SiteConfig,
        steps: Mapping[str, SiteStep],
        secure: SecureSumParty | None = None,
    ) -> SiteExecutor:
        """Load every dataset; a load error is audited and raised (nothing half-loaded is kept)."""
        audit = AuditLog(config.audit_log)
        datasets: dict[str, Dataset] = {}
        for decl in config.datasets.values():
            try:
                datasets[decl.name] = load_dataset(
                    config.name,
                    decl.name,
                    decl.source,
                    decl.columns,
                    base_dir=config.base_dir,
                    data_root=config.data_root,
                )
            except FedHemError as exc:
                audit.append(
                    who="site",
                    analysis="load",
                    dataset=decl.name,
                    parameters={},
                    outcome="error",
                    rule=exc.rule,
                    detail=str(exc),
                )
                raise
        audit.append(
            who="site",
            analysis="load",
            dataset=",".join(datasets),
            parameters={},
            outcome="ok",
            rule=None,
            detail=f"{len(datasets)} datasets loaded",
        )
        return cls(
            config.name,
            datasets,
            config.policy,
            audit,
            steps=steps,
            secure=secure,
            state_dir=config.state_dir,
            researchers=Researchers(dict(config.researchers)) if config.researchers else None,
            sign_replies=config.identity_key is not None,
        )

    # -- the request path -------------------------------------------------------------------
    def handle(self, request: SiteRequest) -> SiteReply:
        """Answer one request (refusals and errors included), signed with the site's identity
        key when it signs its replies (bound to the request: :func:`~fedhem_kernel.protocol.auth.
        sign_reply`)."""
        reply = self._handle(request)
        if self.sign_replies:
            assert self.secure is not None
            key = self.secure.identity.private_key
            reply = dataclasses.replace(reply, signature=sign_reply(key, reply, request))
        return reply

    def _handle(self, request: SiteRequest) -> SiteReply:
        query_id = request.query_id or uuid.uuid4().hex
        key = None
        if self.researchers is not None:  # before anything else: who is asking
            try:
                who, key = self.researchers.check(request)
            except AuthError as exc:
                error = DisclosureError(str(exc), site=self.name, rule=AUTH_RULE)
                unverified = dataclasses.replace(request, who=f"{request.who} (unverified)")
                self._audit(unverified, query_id, "refused", AUTH_RULE, [str(exc)])
                return SiteReply(self.name, "refused", error=error.to_dict())
            request = dataclasses.replace(request, who=who)  # the site's name for the key
        rlog = ReleaseLog()
        extra: dict[str, Any] = {}  # what the request path learns besides the payload (budget)
        try:
            payload = self._run(request, rlog, extra)
        except FedHemError as exc:
            exc = exc.with_site(self.name) if exc.site != self.name else exc
            status = "refused" if isinstance(exc, DisclosureError) else "error"
            self._audit(request, query_id, status, exc.rule, [str(exc)], key)
            return SiteReply(
                self.name,
                status,
                error=exc.to_dict(),
                notes=rlog.notes,
                budget=extra.get("budget"),
            )
        except Exception:  # noqa: BLE001 - never let an unexpected message cross the boundary
            log.exception("site %s: internal error in step %s", self.name, request.step)
            exc = FedHemError(
                "internal error at the site (details are in the site's own log)",
                site=self.name,
                dataset=request.dataset,
            )
            self._audit(request, query_id, "error", None, [exc.reason], key)
            return SiteReply(self.name, "error", error=exc.to_dict())
        status = "suppressed" if rlog.suppressions else "released"
        self._audit(
            request,
            query_id,
            status,
            ",".join(sorted({d.rule for d in rlog.suppressions})) or None,
            [f"{d.rule}: {d.text}" for d in rlog.suppressions],
            key,
        )
        suppressions = [d.to_dict() for d in rlog.suppressions]
        return SiteReply(
            self.name, status, payload, suppressions, rlog.notes, budget=extra.get("budget")
        )

    def _audit(
        self,
        req: SiteRequest,
        query_id: str,
        outcome: str,
        rule: str | None,
        details: list[str],
        key: str | None = None,
    ) -> None:
        signed = {"key": key} if key is not None else {}
        self.audit.append(
            who=req.who,
            **signed,
            query=query_id,
            analysis=req.step,
            dataset=req.dataset,
            parameters={**_summarise(req.params), "where": req.where, **_secure_summary(req)},
            outcome=outcome,
            rule=rule,
            detail=details,
        )

    def _party(self) -> SecureSumParty:
        if self.secure is None:
            raise ParameterError(
                "this site takes part in no secure sums (it has no identity key or roster)",
                site=self.name,
                rule=BAD_SUM,
            )
        return self.secure

    def _run(self, request: SiteRequest, rlog: ReleaseLog, extra: dict[str, Any]) -> dict[str, Any]:
        if request.secure is not None and request.step in (
            CATALOG_STEP,
            AUDIT_STEP,
            KEYS_STEP,
            BUDGET_STEP,
        ):
            raise ParameterError(f"'{request.step}' is not summed", site=self.name, rule=BAD_SUM)
        if request.step == CATALOG_STEP:
            return self.catalog()
        if request.step == AUDIT_STEP:
            return self.audit_trail(request.who, request.params)
        if request.step == KEYS_STEP:
            return self._party().keys(request.params)
        if request.step == BUDGET_STEP:
            return self.budget_report(request.who, request.params)
        step = self.steps.get(request.step)
        if step is None:
            raise ParameterError(f"unknown analysis step '{request.step}'", site=self.name)
        if not self.policy.allows(step.analysis):
            raise DisclosureError(
                f"this site does not answer '{step.analysis}' queries",
                site=self.name,
                rule="allowed_analyses",
            )
        if request.dataset not in self.datasets:
            raise SchemaError("no such dataset", site=self.name, dataset=request.dataset)
        ds = self.datasets[request.dataset]
        if step.params is not None:  # the request's shape, before anything reads it
            try:
                check_request(step.name, step.params, request.params)
            except ParameterError as exc:
                raise ParameterError(exc.reason, site=self.name, dataset=ds.name) from None
        for column in step.columns(request.params):
            spec = ds.schema.column(column)  # raises SchemaError naming the column
            if spec.is_path and step.analysis != "radiomics":
                raise SchemaError(
                    "this column holds image file paths: only radiomics reads it",
                    site=self.name,
                    dataset=ds.name,
                    column=column,
                    rule="schema",
                )
        plan: SumPlan | None = None
        if request.secure is not None:
            if not step.sums:
                raise ParameterError(
                    f"step '{step.name}' has no secure form", site=self.name, rule=BAD_SUM
                )
            plan = self._party().plan(request.secure)  # checked, its number claimed: before rows
        noised = self.policy.dp and not self.policy.dp_exempt(step.analysis) and not step.dp_free
        if noised:  # decided from the policy and the budget log only, never from the data
            if not step.dp:
                raise DisclosureError(
                    f"this site is in DP mode: '{step.analysis}' has no DP version yet",
                    site=self.name,
                    dataset=ds.name,
                    rule="dp",
                )
            if plan is None:
                raise DisclosureError(
                    "this site is in DP mode: it releases only noised secure sums",
                    site=self.name,
                    dataset=ds.name,
                    rule="dp",
                )
            rho = self._release_cost(step, plan)
            extra["budget"] = self.budget.spent(request.who, ds.name).to_dict()
            self.budget.check(request.who, ds.name, rho)
        ledger = self.ledger(ds)
        with ledger.transaction() if ledger is not None else nullcontext() as txn:
            mask, fresh = self._cohort_mask(ds, request.where, txn, plan is not None)
            data = SiteData(
                self.name,
                ds.name,
                self._cohort(ds, mask),
                ds.schema,
                self.policy,
                rlog,
                n_rows=ds.n_rows,
                scratch=self._scratch.setdefault(ds.name, {}),
                root=ds.root,
                key=ds.key,
                secure=plan is not None,
                ledger=txn,
                sum_sites=plan.sites if plan is not None else (),
                check_evidence=self._evidence_check(ds, request, plan),
                secret=lambda: _content_secret(self.name, ds),
                pooled_only=(
                    self.secure is not None
                    and not self.policy.dp
                    and not self.policy.is_unrestricted
                ),
            )
            payload = step.run(data, dict(request.params))
            if noised:
                assert plan is not None
                payload = self._noised(step, plan, payload)
                spent = self.budget.charge(
                    request.who,
                    ds.name,
                    rho,
                    query=request.query_id,
                    analysis=step.name,
                )
                extra["budget"] = spent.to_dict()
            if plan is not None:
                binding = request_binding(step.name, ds.name, request.where, request.params)
                payload = self._masked(step, plan, payload, binding)
            if data.derived:  # columns the step leaves at the site (site/derived.py)
                self.datasets[ds.name] = add_derived(ds, data.derived)
        if fresh:  # the ledger now holds it: later rounds reuse it
            recent = self._masks.setdefault(ds.name, OrderedDict())
            recent[request.where] = mask
            while len(recent) > 64:
                recent.popitem(last=False)
        return payload

    def _evidence_check(
        self, ds: Dataset, request: SiteRequest, plan: SumPlan | None
    ) -> Callable[[Any, str, Mapping[str, Any]], dict[str, np.ndarray]] | None:
        """How a step checks the total of an earlier sum it builds on: signed by every site of
        that sum for ``step`` with ``params`` on this request's dataset and filter."""
        if plan is None or self.secure is None:
            return None
        party = self.secure

        def check(evidence: Any, step: str, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
            binding = request_binding(step, ds.name, request.where, dict(params))
            return party.verify_total(evidence, binding, plan.sites)

        return check

    def _release_cost(self, step: SiteStep, plan: SumPlan) -> float:
        """The zCDP cost of a noised release at the scale the request asks for (OpenDP's map),
        refused if that scale is below what this site's ``dp_rho`` needs."""
        own = scale_for(self.policy.dp_rho, step.dp_sensitivity)
        if plan.noise_scale is None or plan.noise_scale < own * (1 - 1e-9):
            raise DisclosureError(
                f"this site is in DP mode: a release needs noise of scale at least {own:.4g} "
                f"(its dp_rho {self.policy.dp_rho:g})",
                site=self.name,
                rule="dp",
            )
        return rho_of(plan.noise_scale, step.dp_sensitivity)

    def _noised(self, step: SiteStep, plan: SumPlan, payload: dict[str, Any]) -> dict[str, Any]:
        """DP mode: this site's discrete Gaussian share added to the step's noised fields (the
        total over the ``len(plan.sites)`` sites of the sum carries noise of ``plan.noise_scale``)."""
        assert plan.noise_scale is not None
        scale = plan.noise_scale
        out = dict(payload)
        for name in step.dp:
            out[name] = noise_share(payload[name], scale, len(plan.sites), self.policy.dp_colluders)
        return out

    @property
    def budget(self) -> BudgetLedger:
        """The site's DP budget log (``state_dir/budget.jsonl``; in memory without a state dir)."""
        if self._budget is None:
            path = self.state_dir / "budget.jsonl" if self.state_dir is not None else None
            self._budget = BudgetLedger(
                self.name, self.policy.dp_rho_researcher, self.policy.dp_rho_site, path
            )
        return self._budget

    def ledger(self, ds: Dataset) -> Ledger | None:
        """The release ledger of a dataset (None when the policy has none: unrestricted, or in
        DP mode, where noise with accounting replaces it)."""
        if not self.policy.ledger or self.policy.dp:
            return None
        ledger = self.ledgers.get(ds.name)
        if ledger is None or ledger.n_rows != ds.n_rows:
            path, secret = None, None
            if self.state_dir is not None:
                path = self.state_dir / f"{ds.name}.ledger.npz"
            else:  # in memory: the same data give the same ledger in every run (reproducible)
                secret = _content_secret(self.name, ds)
            ledger = Ledger(self.name, ds.name, ds.n_rows, self.policy.min_cell_count, path, secret)
            self.ledgers[ds.name] = ledger
            self._masks.pop(ds.name, None)
        return ledger

    def _masked(
        self, step: SiteStep, plan: SumPlan, payload: dict[str, Any], binding: str
    ) -> dict[str, Any]:
        """A secure reply: the step's summed fields (those it returned) masked, and its shared
        fields; a step that returns anything else is a fault of the step (an internal error:
        nothing is sent)."""
        if set(payload) - set(step.sums) - set(step.shared):
            raise RuntimeError(
                f"step {step.name}: its secure payload is not sums and shared fields"
            )
        party = self._party()
        shared = {k: v for k, v in payload.items() if k in step.shared}
        sums = {k: kind for k, kind in step.sums.items() if k in payload}
        return {**shared, "secure": party.masked(plan, secure_fields(payload, sums), binding)}

    def _cohort(self, ds: Dataset, mask: np.ndarray) -> pd.DataFrame:
        """``ds.frame[mask]``, kept while the dataset and the mask stay the same: the rounds of an
        iterative query (k-means) send the same cohort each time, and steps only read it."""
        cached = self._cohorts.get(ds.name)
        if cached is not None and cached[0] is ds and cached[3] is mask:
            return cached[2]  # the mask of the round before (see _cohort_mask)
        key = hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest()
        if cached is not None and cached[0] is ds and cached[1] == key:
            cohort = cached[2]
        else:
            cohort = ds.frame[mask]
        self._cohorts[ds.name] = (ds, key, cohort, mask)
        return cohort

    def _cohort_mask(
        self, ds: Dataset, where: str | None, txn: Transaction | None, summed: bool = False
    ) -> tuple[np.ndarray, bool]:
        """The rows of ``where``, snapped to the ledger's atoms, and whether they are new (not
        one of the dataset's recent filters: those are reused as they are, being unions of atoms).
        An empty cohort is refused, unless the reply is a secure sum (``summed``): then the site
        adds zeros, and no one learns that it had no one (a refusal would say so).
        """
        recent = self._masks.get(ds.name)
        if recent is not None and where in recent:
            recent.move_to_end(where)
            return recent[where], False
        expr = compile_where(where, ds.schema)
        if expr is None:
            mask = np.ones(ds.n_rows, dtype=bool)
        else:
            mask = np.asarray(evaluate_where(expr, ds.frame), dtype=bool)
        if txn is not None:
            mask = txn.snap(np.where(mask, 0, -1)) == 0
        if not mask.any() and not self.policy.dp and not summed:  # DP: noise alone
            raise DisclosureError(
                "no patients in this cohort at this site (a cohort is released as whole groups of "
                f"at least {self.policy.min_cell_count} patients)",
                site=self.name,
                dataset=ds.name,
                rule="ledger",
            )
        return mask, True

    def catalog(self) -> dict[str, Any]:
        """Column names, types, units and declared bounds of every dataset: no values, no row
        counts."""
        return {
            "datasets": {
                name: [
                    {
                        "column": c.name,
                        "dtype": c.dtype,
                        "unit": c.unit,
                        "derived": c.derived,
                        "bounds": list(c.bounds) if c.bounds is not None else None,
                        "levels": list(c.levels) if c.levels is not None else None,
                    }
                    for c in ds.schema.columns.values()
                ]
                for name, ds in self.datasets.items()
            },
            "policy": self.policy.to_dict(),
            "secure_sum": self.secure is not None,
        }

    def budget_report(self, who: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``who``'s DP budget on each dataset (DP mode; nothing otherwise): numbers the researcher
        is shown after every release anyway, never another researcher's."""
        if params:
            raise ParameterError("a budget request takes no parameters", site=self.name)
        if not self.policy.dp:
            return {"datasets": {}}
        return {"datasets": {ds: self.budget.spent(who, ds).to_dict() for ds in self.datasets}}

    def audit_trail(self, who: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The audit entries of ``who``'s own requests, newest last (at most ``limit``).

        What a researcher may read of a site's audit log: their own requests and what the site
        answered them, which they were told already. Other researchers' entries and the site's own
        (dataset loads) are never sent.
        """
        limit = params.get("limit", MAX_AUDIT_ENTRIES)
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= MAX_AUDIT_ENTRIES
        ):
            raise ParameterError(
                f"'limit' must be a whole number from 1 to {MAX_AUDIT_ENTRIES}", site=self.name
            )
        mine = [e for e in self.audit.entries() if e.get("who") == who]
        return {"entries": mine[-limit:]}


def _content_secret(site: str, ds: Dataset) -> bytes:
    """A ledger's ordering secret drawn from the dataset's content (an in-memory ledger: the
    same rows give the same order in every run, and only someone who holds every value of the
    table could compute it)."""
    digest = hashlib.blake2b(digest_size=32, person=b"fedhem-ledger")
    digest.update(site.encode() + b"\0" + ds.name.encode() + b"\0")
    digest.update(pd.util.hash_pandas_object(ds.frame, index=True).to_numpy().tobytes())
    return digest.digest()


def _secure_summary(req: SiteRequest) -> dict[str, Any]:
    """What the audit log keeps of a secure-sum block: the sum's number and its sites."""
    block = req.secure
    if not isinstance(block, dict):
        return {}
    bundles = block.get("bundles")
    bundles = bundles if isinstance(bundles, list) else []
    sites = [b.get("site") for b in bundles[:50] if isinstance(b, dict)]
    number = block.get("sum")
    return {
        "secure_sum": {
            "sum": number if type(number) is int else None,
            "sites": [s[:100] for s in sites if isinstance(s, str)],
        }
    }


def _summarise(value: Any, depth: int = 0) -> Any:
    """Request parameters as the audit log keeps them: arrays and long lists by shape, not content.

    (A Cox iteration sends coefficient vectors and time grids; keeping every array in the log would
    grow it by megabytes per query.) Runs for every request: plain values are passed through first.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is np.ndarray:
        return f"array{list(value.shape)} {_dtype_name(value.dtype)}"
    if isinstance(value, dict):
        if value.keys() == {"session", "sum", "replies"}:  # an earlier sum's signed replies
            replies = value["replies"]
            return f"evidence: {len(replies) if isinstance(replies, dict) else '?'} signed replies"
        return {k: _summarise(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and len(value) > 20:
        return f"{type(value).__name__} of {len(value)}"
    if isinstance(value, (list, tuple)) and depth < 4:
        if all(type(v) in _PLAIN for v in value):
            return list(value)
        return [_summarise(v, depth + 1) for v in value]
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)} {_dtype_name(value.dtype)}"
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})
_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name
