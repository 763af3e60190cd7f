"""What a site step is given and what it is: :class:`SiteData` and :class:`SiteStep`.

A site step receives :class:`SiteData` (the cohort after ``where=``, the dataset's schema, the site's
policy and a :class:`~fedhem_kernel.protocol.report.ReleaseLog` for suppressions) and returns a
payload of plain values and numpy arrays; every count in it must already obey the policy. The site
executor is handed the steps it may run when it is built (:mod:`fedhem_kernel.node` hands it those
of every registered analysis); this package never imports an analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.errors import DisclosureError, ParameterError, SchemaError
from fedhem_kernel.privacy.ledger import Transaction, cell_key_noise, record_keys
from fedhem_kernel.privacy.policy import Policy
from fedhem_kernel.protocol.params import Params
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.protocol.report import ReleaseLog
from fedhem_kernel.site.schema import DatasetSchema


@dataclass(frozen=True)
class DerivedColumn:
    """Values a site step leaves at the site as a column (one per cohort row; None = missing)."""

    values: pd.Series | None  # None: drop the column
    dtype: str = "category"
    source: str = ""  # which analysis made it (shown as ``ColumnSpec.derived``)
    levels: tuple[str, ...] | None = None  # public level names (e.g. clusters "1".."k")


@dataclass
class SiteData:
    """Everything a site step may read. Built by the site executor; never leaves the site.

    ``ledger`` (the request's transaction on the dataset's release ledger: every row set a step
    sums over goes through :meth:`release_groups`, :meth:`release_rows` or :meth:`complete_rows`),
    ``n_rows`` (rows of the
    whole dataset; ``cohort.index`` holds positions in it) and ``scratch`` (per-dataset space kept
    between the rounds of a query) are set by the executor; ``derived`` collects the columns a step
    leaves at the site (see :meth:`derive`).
    """

    site: str
    dataset: str
    cohort: pd.DataFrame
    schema: DatasetSchema
    policy: Policy
    log: ReleaseLog = field(default_factory=ReleaseLog)
    n_rows: int | None = None
    scratch: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, DerivedColumn] = field(default_factory=dict)
    root: Path | None = None  # the site's data root (image and mask paths are relative to it)
    key: str | None = None  # the dataset's row-key column (names rows in the site's own log)
    #: True when the step's summed fields leave the site masked in a secure sum (only the total
    #: over the sites is revealed): the step returns them whole, in a shape that does not depend
    #: on the data.
    secure: bool = False
    #: The request's transaction on the dataset's release ledger (None: no ledger, unrestricted).
    ledger: Transaction | None = None
    #: The sites of the secure sum this request is part of (empty when it is not one).
    sum_sites: tuple[str, ...] = ()
    #: ``(evidence, step, params) -> totals``: the total of an earlier secure sum of this query,
    #: checked against its sites' signatures (:meth:`SecureSumParty.verify_total`); None when
    #: this site takes part in no secure sums.
    check_evidence: Callable[[Any, str, Payload], dict[str, np.ndarray]] | None = None
    #: The site's secret for consistent perturbation when it keeps no ledger (made on demand).
    secret: Callable[[], bytes] | None = None
    #: True when this site releases its counts of tables only pooled (it takes part in secure
    #: sums and its policy has thresholds): its own tables would let a pooled count minus the
    #: other sites' give one site's small count.
    pooled_only: bool = False

    @property
    def k(self) -> int:
        return self.policy.min_cell_count

    def _site_secret(self) -> bytes:
        if self.ledger is not None:
            return self.ledger.ledger.secret
        if self.secret is None:
            raise RuntimeError("this step needs the site's secret")
        return self.secret()

    def row_keys(self) -> np.ndarray:
        """A secret 64-bit key per cohort row (the same row, the same key, in every request)."""
        keys = self.scratch.get("row_keys")
        rows = self.cohort.index.to_numpy()
        n = self.n_rows if self.n_rows is not None else int(rows.max(initial=-1)) + 1
        if keys is None or len(keys) != n:
            keys = self.scratch["row_keys"] = record_keys(self._site_secret(), n)
        return keys[rows]

    def count_noise(self, key_sums: np.ndarray, counts: np.ndarray, where: bytes) -> np.ndarray:
        """A perturbation in {-1, 0, 1} per count, keyed by the rows it counts (``key_sums``: the
        sum of their :meth:`row_keys`): the same rows, the same number, however asked for."""
        return cell_key_noise(self._site_secret(), key_sums, counts, where)

    def per_site_table(self, what: str) -> None:
        """Refuse a table of this site's own counts when its counts are released pooled only."""
        if self.pooled_only and not self.secure:
            raise DisclosureError(
                f"this site releases {what} only pooled through secure sums with the other "
                "sites (its own table, against a pooled one, would give away its small counts)",
                site=self.site,
                dataset=self.dataset,
                rule="pooled_only",
            )

    def earlier_total(self, evidence: Any, step: str, params: Payload) -> dict[str, np.ndarray]:
        """The total of an earlier secure sum of ``step`` with ``params`` over the same cohort,
        from the signed replies in ``evidence`` (refused unless every signature holds and the
        earlier sum's sites are all in this one)."""
        if self.check_evidence is None or not self.secure:
            raise ParameterError("only a secure sum can build on an earlier one", site=self.site)
        return self.check_evidence(evidence, step, params)

    def derive(
        self,
        column: str,
        values: pd.Series | np.ndarray | None,
        dtype: str,
        source: str,
        levels: Sequence[str] | None = None,
    ) -> None:
        """Keep ``values`` (one per cohort row) as column ``column`` of this dataset, at this site.

        The executor adds it once the step has succeeded (missing outside the cohort), replacing an
        earlier derived column of that name; ``values=None`` drops it. A column the dataset has of
        its own is never replaced. For ``dtype="category"`` the values are strings or None.
        """
        spec = self.schema.columns.get(column)
        if spec is not None and spec.derived is None:
            raise SchemaError(
                "the dataset has a column of this name of its own: it cannot be replaced",
                **self.err(column),
                rule="schema",
            )
        if values is not None:
            values = pd.Series(values, index=self.cohort.index, dtype=object)  # no inference
        self.derived[column] = DerivedColumn(
            values, dtype, source, tuple(levels) if levels is not None else None
        )

    def rows_mask(self, selected: np.ndarray) -> np.ndarray:
        """Whole-dataset mask of the cohort rows flagged in ``selected`` (one flag per cohort row)."""
        rows = self.cohort.index.to_numpy()
        n = self.n_rows if self.n_rows is not None else int(rows.max(initial=-1)) + 1
        mask = np.zeros(n, dtype=bool)
        mask[rows[np.asarray(selected, dtype=bool)]] = True
        return mask

    def _full(self, labels: np.ndarray) -> np.ndarray:
        rows = self.cohort.index.to_numpy()
        n = self.n_rows if self.n_rows is not None else int(rows.max(initial=-1)) + 1
        full = np.full(n, -1, dtype=np.int64)
        full[rows] = labels
        return full

    def release_groups(
        self, labels: np.ndarray, fixed: np.ndarray | None = None, preview: bool = False
    ) -> np.ndarray:
        """Groups of cohort rows (``labels``: ``0..g-1`` per row, ``-1`` for rows in none) as they
        may be released: snapped to the release ledger's atoms (``privacy/ledger.py``), so that a
        group or what it leaves out is 0 or at least k patients of every atom it cuts, however
        releases are combined. ``fixed`` rows (e.g. without a value the step needs) stay in none.
        Without a ledger (unrestricted) only ``fixed`` rows are taken out. ``preview``: what the
        snap would give, recording nothing."""
        labels = np.asarray(labels, dtype=np.int64)
        if fixed is not None:
            fixed = np.asarray(fixed, dtype=bool)
        if self.ledger is None:
            return labels if fixed is None else np.where(fixed, -1, labels)
        outside = np.ones(self.ledger.ledger.n_rows, dtype=bool)
        rows = self.cohort.index.to_numpy()
        outside[rows] = False  # rows outside the cohort never join a group
        if fixed is not None:
            outside[rows[fixed]] = True
        snap = self.ledger.preview if preview else self.ledger.snap
        return snap(self._full(labels), outside)[rows]

    def release_rows(self, selected: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
        """:meth:`release_groups` for one set: flags of the cohort rows it is released over."""
        labels = np.where(np.asarray(selected, dtype=bool), 0, -1)
        return self.release_groups(labels, fixed) == 0

    def complete_rows(self, missing: np.ndarray, first: str | None, what: str) -> np.ndarray:
        """Flags of the cohort rows a step sums over when rows with a missing value in ``what``
        are left out: the complete rows, snapped to the release ledger (rows left out are 0 or at
        least k of every atom; a few complete rows may be left out with them). ``first`` names a
        column with a missing value (for the messages)."""
        missing = np.asarray(missing, dtype=bool)
        complete = self.release_rows(~missing, fixed=missing)
        if not complete.any():
            raise SchemaError(
                f"no patient has a value in every one of {what}", **self.err(first), rule="schema"
            )
        if missing.any():
            self.log.note(f"patients with a missing value in {what} are left out")
        return complete

    def err(self, column: str | None = None) -> dict[str, str | None]:
        return {"site": self.site, "dataset": self.dataset, "column": column}

    def numeric(self, column: str) -> np.ndarray:
        spec = self.schema.column(column)
        if not spec.is_numeric:
            raise SchemaError("expected a numeric column", **self.err(column), rule="schema")
        return self.cohort[column].to_numpy(dtype=float)

    def survival(self, duration: str, event: str) -> tuple[np.ndarray, np.ndarray]:
        """Durations and 0/1 events of the cohort, checked (no missing or negative times)."""
        t = self.numeric(duration)
        e = self.numeric(event)
        if np.isnan(t).any():
            raise SchemaError(
                "missing survival times (exclude them with where='... is not null')",
                **self.err(duration),
                rule="schema",
            )
        if (t < 0).any():
            raise SchemaError("negative survival times", **self.err(duration), rule="schema")
        if np.isnan(e).any():
            raise SchemaError("missing event indicators", **self.err(event), rule="schema")
        if not np.isin(e, (0.0, 1.0)).all():
            raise SchemaError("event indicator must be 0/1", **self.err(event), rule="schema")
        return t, e

    def labels(self, column: str) -> pd.Series:
        """A grouping column as strings (numbers 1.0 -> '1'); missing stays missing."""
        spec = self.schema.column(column)
        s = self.cohort[column]
        if spec.dtype == "category":
            return s
        if spec.dtype == "float" and not np.all(np.isnan(s) | (s == np.round(s))):
            raise SchemaError(
                "a continuous column cannot be used for grouping",
                **self.err(column),
                rule="schema",
            )
        values = s.to_numpy(dtype=float)
        missing = np.isnan(values)
        text = np.where(missing, "", np.round(np.nan_to_num(values)).astype(np.int64).astype(str))
        out = pd.Series(text, index=s.index, dtype=object)
        out[missing] = None
        return out

    def refuse(self, rule: str, reason: str, column: str | None = None) -> DisclosureError:
        return DisclosureError(reason, **self.err(column), rule=rule)


SiteFn = Callable[[SiteData, Payload], Payload]


@dataclass(frozen=True)
class SiteStep:
    """One message type a site answers (``query.<name>``).

    ``params`` declares every parameter its request may carry and the kinds of value each accepts
    (:mod:`fedhem_kernel.protocol.params`); the executor refuses any other request before the step
    runs. ``columns`` names the dataset columns a request reads (checked to exist first).

    ``sums`` names the payload fields that can be released as a secure sum over sites, and their
    kinds (``"count"`` or ``"real"``, or ``"sealed-count"``/``"sealed-real"`` for a total only the
    sites can read: :mod:`fedhem_kernel.protocol.secure_sum`); ``shared`` the
    other fields a secure reply may carry (each the same at every site, e.g. agreed levels). A
    step without ``sums`` has no secure form. ``dp`` names the fields that carry noise in DP mode
    (:mod:`fedhem_kernel.privacy.dp`).
    """

    name: str
    analysis: str
    run: SiteFn
    columns: Callable[[Payload], Sequence[str]]
    params: Params | None = None
    sums: Mapping[str, str] = field(default_factory=dict)
    shared: tuple[str, ...] = ()
    #: DP mode: the summed count fields the site adds its noise share to (one patient changes them
    #: by at most ``dp_sensitivity`` in L2 norm, together). A step without them has no DP version.
    dp: tuple[str, ...] = ()
    dp_sensitivity: int = 1
    #: Answered in DP mode without noise: it releases nothing of the patients (``kmeans_clear``,
    #: ``combat_dp_apply``), or only names the codes the data steward declares (the causes of
    #: competing risks in DP mode, as ``levels`` names declared levels).
    dp_free: bool = False


def param_columns(*keys: str) -> Callable[[Payload], list[str]]:
    """Columns named by the given parameters (a string, a list of strings, or None)."""

    def columns(params: Payload) -> list[str]:
        out: list[str] = []
        for key in keys:
            value = params.get(key)
            if value is None:
                continue
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list | tuple) or not all(isinstance(c, str) for c in names):
                raise ParameterError(f"parameter '{key}' must be a column name or a list of them")
            out.extend(names)
        return [c for c in out if c != "site"]

    return columns


def require_str(params: Payload, key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise ParameterError(f"parameter '{key}' must be a column name")
    return value
