"""What crosses the trust boundary: a site step request, and a site's reply.

A request names the step (``query.<step>`` in Flower's terms), the dataset, the step's parameters
(plain values and numpy arrays) and the ``where=`` text; a reply carries the site's status, the
payload the combine step needs, what the site suppressed or left out and why
(:class:`~fedhem_kernel.protocol.report.Detail` records, as dicts on the wire), notes, and an error
(a :class:`~fedhem_kernel.errors.FedHemError` as a dict) when it refused or failed.
:mod:`fedhem_kernel.protocol.codec` turns both into typed Flower records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: The step every site answers whatever analyses it runs: column names, types and units of its
#: datasets and its policy, never a value or a count.
CATALOG_STEP = "catalog"
#: The step every site answers with the audit entries of the requesting researcher's own requests.
AUDIT_STEP = "audit"
#: The step every site answers with its signed key of a secure-sum key session
#: (:mod:`fedhem_kernel.protocol.secure_sum`).
KEYS_STEP = "secure_keys"
#: The step every site answers with the requesting researcher's DP budget per dataset (DP mode).
BUDGET_STEP = "budget"
#: Steps that are not an analysis's: every site answers them whatever its policy allows.
SERVICE_STEPS = (CATALOG_STEP, AUDIT_STEP, KEYS_STEP, BUDGET_STEP)

Status = Literal["released", "suppressed", "refused", "error"]


@dataclass(frozen=True)
class SiteRequest:
    """One site step asked of a site.

    Parameters
    ----------
    step : str
        The site step (``"km_tables"``, ``"cox_sums"``, ..., or :data:`CATALOG_STEP`).
    dataset : str or None
        The dataset it runs on (``None`` for the catalog).
    params : dict
        The step's parameters: plain values, lists, dicts and numpy arrays. A site checks every
        one of them in its own units; it trusts nothing it is sent.
    where : str or None
        The ``where=`` filter text (parsed and checked again at the site).
    who : str
        The researcher, as the site's audit log records it.
    query_id : str
        The researcher's query this step belongs to (several rounds share it).
    secure : dict or None
        For a secure sum: the key session, the sum's number and the key bundles of every site
        of the sum (:mod:`fedhem_kernel.protocol.secure_sum`); the site then sends the step's summed
        fields masked.
    auth : dict or None
        The researcher's signature of the request (key id, nonce, time, signature:
        :mod:`fedhem_kernel.protocol.auth`); a site that lists researchers refuses any other.
    """

    step: str
    dataset: str | None
    params: dict[str, Any] = field(default_factory=dict)
    where: str | None = None
    who: str = "anonymous"
    query_id: str = ""
    secure: dict[str, Any] | None = None
    auth: dict[str, Any] | None = None


@dataclass
class SiteReply:
    """A site's answer to one :class:`SiteRequest`.

    ``status`` is ``released`` (all of it), ``suppressed`` (released, with parts withheld or
    merged: see ``suppressions``), ``refused`` (a privacy rule: ``error`` says which) or ``error``
    (bad input, or a failure at the site). ``suppressions`` are
    :class:`~fedhem_kernel.protocol.report.Detail` records as dicts.
    """

    site: str
    status: Status
    payload: dict[str, Any] | None = None
    suppressions: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    #: DP mode: the requesting researcher's budget at the site after this reply (numbers only).
    budget: dict[str, float] | None = None
    #: The site's signature of the reply, bound to the request (:mod:`fedhem_kernel.protocol.
    #: auth`); the researcher's side ignores a reply its site's key does not verify.
    signature: str | None = None
