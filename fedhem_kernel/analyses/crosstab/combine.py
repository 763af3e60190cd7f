"""Combine step of ``crosstab``: the pooled table (NA where any site suppressed a cell)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.common.combine_catalog import pooled_k, pooled_sums
from fedhem_kernel.analyses.common.combine_dp import DPRelease, dp_release
from fedhem_kernel.analyses.crosstab import HIDDEN
from fedhem_kernel.analyses.crosstab.result import CrosstabResult
from fedhem_kernel.analyses.levels import MISSING, OTHER, SITE_COLUMN
from fedhem_kernel.analyses.levels.combine import require_levels
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.privacy.tables import pooled_cells_shown
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.secure_sum import SecureTotal


def _frame(values: np.ndarray, index: list[str], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(values, index=index, columns=columns).astype("Int64")
    return df.mask(df == HIDDEN)


def _with_margins(
    cells: pd.DataFrame, row_tot: pd.Series, col_tot: pd.Series, total: object
) -> pd.DataFrame:
    out = cells.astype("Int64").copy()
    out["All"] = pd.array(row_tot.reindex(out.index).tolist(), dtype="Int64")
    bottom = pd.DataFrame(
        [pd.array([*col_tot.reindex(cells.columns).tolist(), total], dtype="Int64")],
        index=["All"],
        columns=out.columns,
    ).astype("Int64")
    return pd.concat([out, bottom]).astype("Int64")


def combine_crosstab(
    per_site: dict[str, Payload], row: str, col: str, margins: bool
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    by_site: dict[str, pd.DataFrame] = {}
    row_labels: list[str] = []
    col_labels: list[str] = []
    parts = {}
    for site, p in per_site.items():
        rl, cl = list(p["row_levels"]), list(p["col_levels"])
        row_labels += [x for x in rl if x not in row_labels]
        col_labels += [x for x in cl if x not in col_labels]
        cells = _frame(np.asarray(p["cells"]), rl, cl)
        rt = pd.Series(np.asarray(p["row_totals"]), index=rl).astype("Int64")
        ct = pd.Series(np.asarray(p["col_totals"]), index=cl).astype("Int64")
        rt, ct = rt.mask(rt == HIDDEN), ct.mask(ct == HIDDEN)
        total = pd.NA if p["total"] == HIDDEN else int(p["total"])
        parts[site] = (cells, rt, ct, total)
        by_site[site] = _with_margins(cells, rt, ct, total) if margins else cells
    for label in (OTHER,):  # keep "(other)" last
        for labels in (row_labels, col_labels):
            if label in labels:
                labels.remove(label)
                labels.append(label)

    def pooled_sum(frames: list) -> object:
        total = frames[0]
        for f in frames[1:]:
            total = total + f  # NA propagates: a pooled cell is NA if any site hid it
        return total

    cells = pooled_sum(
        [c.reindex(index=row_labels, columns=col_labels, fill_value=0) for c, *_ in parts.values()]
    )
    table = cells.astype("Int64")
    if margins:
        rt = pooled_sum([r.reindex(row_labels, fill_value=0) for _, r, _, _ in parts.values()])
        ct = pooled_sum([c.reindex(col_labels, fill_value=0) for _, _, c, _ in parts.values()])
        totals = [t for *_, t in parts.values()]
        total = pd.NA if any(t is pd.NA for t in totals) else sum(totals)
        table = _with_margins(table, rt, ct, total)
    table.index.name = row
    table.columns.name = col
    return table, by_site


def combine_dp(
    total: SecureTotal,
    row: str,
    col: str,
    margins: bool,
    release: DPRelease,
    row_levels: list[str],
    col_levels: list[str],
) -> tuple[pd.DataFrame, list[str]]:
    """DP mode: the pooled noisy table (no per-site tables: only the sum was revealed). Cells are
    rounded noisy counts clipped at 0 (post-processing: free); margins add the unclipped cells."""
    cells = np.asarray(total.totals["cells"], dtype=float)
    index, columns = [*row_levels, OTHER], [*col_levels, OTHER]

    # "(other)" (levels rare at every site) is summed like any level, so the totals are
    # complete; it is shown only when its noisy total stands out of the noise (post-processing)
    sd = release.total_sd(len(total.sites))

    def shown_other(values: np.ndarray) -> bool:
        return bool(values.sum() > 3 * sd * np.sqrt(values.size))

    keep_r = [i for i, lv in enumerate(index) if lv != OTHER or shown_other(cells[i])]
    keep_c = [j for j, lv in enumerate(columns) if lv != OTHER or shown_other(cells[:, j])]
    shown = np.clip(cells, 0, None)
    table = pd.DataFrame(
        shown[np.ix_(keep_r, keep_c)],
        index=[index[i] for i in keep_r],
        columns=[columns[j] for j in keep_c],
    ).astype("Int64")
    if margins:  # the totals of the cells shown, before clipping (unbiased)
        inner = cells[np.ix_(keep_r, keep_c)]
        table = _with_margins(
            table,
            pd.Series(np.clip(inner.sum(axis=1), 0, None), index=table.index),
            pd.Series(np.clip(inner.sum(axis=0), 0, None), index=table.columns),
            int(max(inner.sum(), 0)),
        )
    table.index.name = row
    table.columns.name = col
    notes = [
        release.note("cells"),
        "negative noisy counts are shown as 0; totals add the noisy cells shown",
    ]
    return table, notes


def run(q: Ask, row: str, col: str, margins: bool = False) -> CrosstabResult:
    """Counts by ``row`` and ``col`` (``"site"`` for one column per site)."""
    for name, value in (("row", row), ("col", col)):
        if not isinstance(value, str) or not value:
            raise ParameterError(f"'{name}' must be a column name (or 'site')")
    if row == col:
        raise ParameterError("'row' and 'col' must be different columns")
    params = {
        "row": row,
        "col": col,
        "row_levels": require_levels(q, row),
        "col_levels": require_levels(q, col),
    }
    release = dp_release(q)
    if release is not None:
        for key, name in (("row_levels", row), ("col_levels", col)):
            if name == SITE_COLUMN:  # every site its own row or column of the one noised sum
                params[key] = sorted(q.catalog())
        total = q.ask_sum("crosstab", params, noise_scale=release.scale)
        table, notes = combine_dp(
            total,
            row,
            col,
            margins,
            release,
            params["row_levels"] or [],
            params["col_levels"] or [],
        )
        for note in notes:
            q.note(note)
        return CrosstabResult(table, {}, q.report(), row, col)
    if pooled_sums(q, "crosstab"):
        # by site too: each site counts into its own column of one pooled table, so the rule
        # (and the margins it protects) sees every site's cells together
        if row == SITE_COLUMN:
            swapped = {"row": col, "col": row, "row_levels": params["col_levels"]}
            table = combine_pooled(q, {**swapped, "col_levels": None}, col, row, margins).T
            table.index.name, table.columns.name = row, col
        else:
            table = combine_pooled(q, params, row, col, margins)
        return CrosstabResult(table, {}, q.report(), row, col)
    per_site = q.ask("crosstab", params)
    table, by_site = combine_crosstab(per_site, row, col, margins)
    return CrosstabResult(table, by_site, q.report(), row, col)


def combine_pooled(q: Ask, params: Payload, row: str, col: str, margins: bool) -> pd.DataFrame:
    if col == SITE_COLUMN:  # the sites taking part are the columns
        params = {**params, "col_levels": [s for s in q.sites if s not in q.dropped]}
    return _combine_pooled(q, params, row, col, margins)


def _combine_pooled(q: Ask, params: Payload, row: str, col: str, margins: bool) -> pd.DataFrame:
    """The pooled table, decided then released (two secure sums: crosstab/site.py): a cell is
    shown when its perturbed total is at least ``k + m``, exactly, or when no site has anyone in
    it (0); the others are NA. A margin is shown when its row or column has no hidden cell; the
    grand total when the hidden cells together pass the bound (it says only their sum)."""
    k = pooled_k(q)
    risk = q.ask_sum("crosstab_risk", params)
    m = len(risk.sites)
    noisy = np.asarray(risk.totals["cells"])
    empty = np.asarray(risk.totals["occupied"]) == 0  # no site has anyone there: exact zeros
    shown = pooled_cells_shown(noisy, k, m, empty)
    hidden = ~shown & ~empty
    with_total = bool(not hidden.any() or noisy[hidden].sum() >= k + m * hidden.sum())
    # the released counts carry the perturbations of two sites (within 2 of the truth)
    released = q.ask_sum(
        "crosstab_cells",
        {
            **params,
            "decided": shown.astype(int).tolist(),
            "with_total": with_total,
            "k": k,
            "evidence": risk.evidence,
        },
    )
    cells = np.asarray(released.totals["cells"])
    index = [*(params["row_levels"] or []), OTHER, MISSING]
    columns = [*(params["col_levels"] or []), OTHER, MISSING]
    values = np.where(shown | empty, cells, HIDDEN)
    table = pd.DataFrame(values, index=index, columns=columns)
    table = table.astype("Int64").mask(table == HIDDEN)
    if margins:  # released only for lines without a hidden cell (each perturbed on its own)
        row_ok, col_ok = ~hidden.any(axis=1), ~hidden.any(axis=0)
        rows_total = pd.Series(
            pd.array(np.where(row_ok, released.totals["row_totals"], 0), dtype="Int64"),
            index=index,
        ).mask(~row_ok)
        cols_total = pd.Series(
            pd.array(np.where(col_ok, released.totals["col_totals"], 0), dtype="Int64"),
            index=columns,
        ).mask(~col_ok)
        total: object = int(released.totals["total"][0]) if with_total else pd.NA
    # "(other)" and "(missing)" only where someone is there
    extra = (OTHER, MISSING)
    keep_r = [lv for i, lv in enumerate(index) if lv not in extra or not empty[i].all()]
    keep_c = [lv for j, lv in enumerate(columns) if lv not in extra or not empty[:, j].all()]
    table = table.loc[keep_r, keep_c]
    if margins:
        table = _with_margins(table, rows_total.loc[keep_r], cols_total.loc[keep_c], total)
    q.note(
        "pooled through secure sums: every count shown is within 2 of the truth (perturbed by "
        "two sites, the same way whenever the same patients are counted, so margins need not "
        f"add up exactly); a cell is hidden when its perturbed total is below {k + m} ({m} "
        f"sites, each perturbing by at most 1), so that every cell shown holds at least {k} "
        "patients, and with it another in its row or column (margins are known from other "
        "queries); margins only where they reveal no hidden cell"
    )
    table.index.name = row
    table.columns.name = col
    return table
