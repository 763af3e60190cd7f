"""Small-cell suppression of one site's contingency table, audited by linear programming.

A site releases an R x C table of patient counts and, by default, its row totals, column totals
and grand total. A count ``c`` with ``1 <= c < k`` (``k`` = the policy's ``min_cell_count``) is
sensitive; so is a margin or grand total with such a value. Sensitive quantities are suppressed
(primary suppression), but hiding them is not enough: ``[[3, 20], [30, 40]]`` with its margins
released gives the hidden 3 back as ``23 - 20``. Secondary (complementary) suppression hides
further cells until no sensitive quantity can be pinned down from what is released.

The attacker model is the classic one of statistical disclosure control (tau-argus, sdcTable): the
attacker knows every released cell and margin, and that counts are non-negative. For a sensitive
quantity ``q`` (a cell, or a sum of cells for a margin) it computes the range of ``q`` over every
table consistent with the release, by linear programming over the suppressed cells. ``q`` is
protected iff that range reaches down to 0 and up to ``k``: the attacker can tell neither that the
group is non-empty nor that it is small. For 2-D tables the constraint matrix (released cells, row
sums, column sums, grand total: two laminar families of cell sets) is totally unimodular, so the LP
bounds are attained by integer tables and equal the bounds of an integer attacker.

Not covered by this criterion: sums of several suppressed cells that are not a row or a column
(e.g. two hidden neighbours whose sum is small), and differencing across several releases (handled
elsewhere: :mod:`fedhem_kernel.privacy.ledger`).

This module depends on numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

__all__ = ["TableSuppression", "audit_table", "suppress_table"]

_TOL = 1e-7  # LP tolerance of the protection test
_IMPROVE = 1e-6  # smallest change of an LP bound that counts as an improvement
_LOOKAHEAD_CELLS = 6  # cell candidates tried per greedy step before margins are considered
_LOOKAHEAD_MARGINS = 8
_POOL_MAX = 512  # feasible tables remembered as witnesses

Key = tuple[str, tuple[int, ...]]  # ("cell", (i, j)), ("row", (i,)), ("col", (j,)), ("total", ())


@dataclass(frozen=True, eq=False)
class TableSuppression:
    """What a site hides of a table (True = suppressed, i.e. not released).

    ``cells``, ``row_totals``, ``col_totals`` and ``total`` are the suppression masks of the table,
    of its margins and of its grand total. ``primary`` marks cells hidden because
    ``1 <= count < k``; ``n_secondary`` counts the cells hidden only to protect others (suppressed
    margins that are not themselves sensitive are visible in the margin masks). When margins are
    not released at all (``release_margins=False``) the margin masks are all True.

    The arrays are read-only copies. Equality is identity (numpy arrays have no scalar ``==``).
    """

    cells: np.ndarray
    row_totals: np.ndarray
    col_totals: np.ndarray
    total: bool
    primary: np.ndarray
    n_secondary: int

    def __post_init__(self) -> None:
        cells = _readonly_bool(self.cells, "cells", 2)
        rows = _readonly_bool(self.row_totals, "row_totals", 1)
        cols = _readonly_bool(self.col_totals, "col_totals", 1)
        primary = _readonly_bool(self.primary, "primary", 2)
        if rows.shape != (cells.shape[0],) or cols.shape != (cells.shape[1],):
            raise ValueError(
                f"margin masks {rows.shape}, {cols.shape} do not fit a {cells.shape} table"
            )
        if primary.shape != cells.shape:
            raise ValueError(f"primary mask {primary.shape} does not fit a {cells.shape} table")
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "row_totals", rows)
        object.__setattr__(self, "col_totals", cols)
        object.__setattr__(self, "primary", primary)
        object.__setattr__(self, "total", bool(self.total))
        object.__setattr__(self, "n_secondary", int(self.n_secondary))

    @property
    def any_suppressed(self) -> bool:
        """True if any cell, margin or the grand total is withheld."""
        return bool(
            self.cells.any() or self.row_totals.any() or self.col_totals.any() or self.total
        )


def suppress_table(counts: np.ndarray, k: int, *, release_margins: bool = True) -> TableSuppression:
    """Primary and secondary suppression of a table of counts for threshold ``k``.

    Parameters
    ----------
    counts : array of shape (R, C)
        Non-negative integer counts (integral floats are accepted). A 1-D table is (R, 1) or (1, C).
    k : int
        The site's ``min_cell_count``: a released count is 0 or at least ``k``. ``k == 1`` makes
        nothing sensitive.
    release_margins : bool
        Whether row totals, column totals and the grand total are released with the table. If
        False they are withheld (their masks are all True) and only primary suppression is needed.

    Returns
    -------
    TableSuppression
        Masks such that :func:`audit_table` finds nothing an attacker can pin down.

    Algorithm: suppress every sensitive cell and margin; then, while the LP audit finds an
    unprotected quantity ``q`` (first in row-major order: cells, row totals, column totals, grand
    total), hide one more released item. Candidates are the released cells in the row or column of
    ``q``, then those in rows/columns already holding a hidden cell, then the rest; non-zero counts
    before zeros (a hidden 0 cannot be lowered to cover a sensitive cell), smallest count first,
    ties in row-major order. The first few cell candidates, then margin candidates, are tried and
    the first whose suppression widens ``q``'s feasible range is taken; if none does alone, the
    first cell candidate is taken (complements often only work as a set, e.g. the other three
    corners of a rectangle), or the first margin when no cell is left. This terminates: with
    everything hidden nothing is pinned. A final pass re-releases secondary suppressions (margins
    first, then cells by decreasing count) whenever the audit still passes without them.
    """
    table = _as_counts(counts)
    k = _as_k(k)
    nrow, ncol = table.shape
    auditor = _Auditor(table, k)
    primary = (table >= 1) & (table < k)

    state = _Mask(
        cells=primary.copy(),
        rows=np.ones(nrow, dtype=bool),
        cols=np.ones(ncol, dtype=bool),
        total=True,
    )
    if release_margins:
        state.rows = auditor.sensitive_value(auditor.row_sums)
        state.cols = auditor.sensitive_value(auditor.col_sums)
        state.total = bool(auditor.sensitive_value(np.array([auditor.grand]))[0])
        for key in auditor.sensitive_keys():
            auditor.hide(state, key)  # 1-D tables: a cell and its own margin are one number

    if auditor.quantities:
        state = _greedy(auditor, state, release_margins)
        state = _prune(auditor, state, release_margins)

    return TableSuppression(
        cells=state.cells,
        row_totals=state.rows,
        col_totals=state.cols,
        total=state.total,
        primary=primary,
        n_secondary=int((state.cells & ~primary).sum()),
    )


def audit_table(counts: np.ndarray, s: TableSuppression, k: int) -> list[Key]:
    """Sensitive quantities an attacker can pin down from what ``s`` releases (empty = safe).

    The attacker knows the released cells, the released row/column totals and grand total, and that
    counts are non-negative. A sensitive quantity (a cell, row total, column total or grand total
    with value in ``[1, k-1]``) is reported unless its feasible range (continuous LP relaxation)
    has minimum ``<= 0`` and maximum ``>= k``; a released sensitive quantity is always reported.

    Returns keys ``("cell", (i, j))``, ``("row", (i,))``, ``("col", (j,))``, ``("total", ())`` in
    that order (row-major within each kind).
    """
    table = _as_counts(counts)
    k = _as_k(k)
    if s.cells.shape != table.shape:
        raise ValueError(f"suppression mask {s.cells.shape} does not fit a {table.shape} table")
    auditor = _Auditor(table, k)
    state = _Mask(
        cells=s.cells.copy(), rows=s.row_totals.copy(), cols=s.col_totals.copy(), total=s.total
    )
    return [q.key for q in auditor.unprotected(state)]


# ----------------------------------------------------------------------------------------------
# validation


def _readonly_bool(value: object, name: str, ndim: int) -> np.ndarray:
    arr = np.array(value, dtype=bool, copy=True)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def _as_counts(counts: np.ndarray) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 2:
        raise ValueError(
            f"counts must be a 2-D table (use (R, 1) or (1, C) for 1-D), got {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError("counts is an empty table")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"counts must be integers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError("counts must be whole numbers")
        if np.abs(arr).max() >= 2**53:
            raise ValueError("counts too large")
    if (arr < 0).any():
        raise ValueError("counts must be non-negative")
    return arr.astype(np.int64)


def _as_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return int(k)


# ----------------------------------------------------------------------------------------------
# state and quantities


@dataclass
class _Mask:
    """Mutable suppression state (True = hidden)."""

    cells: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    total: bool

    def copy(self) -> _Mask:
        return _Mask(self.cells.copy(), self.rows.copy(), self.cols.copy(), self.total)

    def hidden(self, key: Key) -> bool:
        kind, idx = key
        if kind == "cell":
            return bool(self.cells[idx])
        if kind == "row":
            return bool(self.rows[idx[0]])
        if kind == "col":
            return bool(self.cols[idx[0]])
        return self.total

    def set(self, key: Key, value: bool) -> None:
        kind, idx = key
        if kind == "cell":
            self.cells[idx] = value
        elif kind == "row":
            self.rows[idx[0]] = value
        elif kind == "col":
            self.cols[idx[0]] = value
        else:
            self.total = value


@dataclass(frozen=True)
class _Quantity:
    key: Key
    coef: np.ndarray  # bool (R, C): the cells summed by this quantity
    value: int

    @property
    def flat(self) -> np.ndarray:
        return self.coef.ravel()


class _LP:
    """The attacker's LP for one suppression state: variables are the hidden cells."""

    def __init__(self, auditor: _Auditor, state: _Mask) -> None:
        counts = auditor.counts
        hid = state.cells
        self.var_pos = np.flatnonzero(hid.ravel())
        self.nv = int(self.var_pos.size)
        self.known = np.where(hid, 0, counts)  # released cells, 0 where hidden
        index = np.full(counts.size, -1, dtype=np.int64)
        index[self.var_pos] = np.arange(self.nv)
        index = index.reshape(counts.shape)
        a_rows: list[np.ndarray] = []
        b: list[float] = []

        def add(sel: np.ndarray, target: int) -> None:
            vars_ = index[sel & hid]
            if vars_.size:
                row = np.zeros(self.nv)
                row[vars_] = 1.0
                a_rows.append(row)
                b.append(float(target - self.known[sel].sum()))

        for i in np.flatnonzero(~state.rows):
            add(auditor.row_masks[i], int(auditor.row_sums[i]))
        for j in np.flatnonzero(~state.cols):
            add(auditor.col_masks[j], int(auditor.col_sums[j]))
        if not state.total:
            add(np.ones(counts.shape, dtype=bool), auditor.grand)
        self.a_eq = np.array(a_rows) if a_rows else None
        self.b_eq = np.array(b) if b else None

    def objective(self, coef: np.ndarray) -> tuple[np.ndarray, int]:
        """Coefficients on the hidden cells and the released part of a quantity."""
        return coef.ravel()[self.var_pos].astype(float), int(self.known[coef].sum())

    def solve(
        self, c: np.ndarray, maximize: bool, caps: list[tuple[np.ndarray, float]] | None = None
    ) -> np.ndarray | None:
        """Optimal hidden-cell values (None if the solver failed), with c_i . x <= cap_i."""
        a_ub = b_ub = None
        if caps:
            a_ub = np.array([row for row, _ in caps])
            b_ub = np.array([cap for _, cap in caps])
        res = linprog(
            -c if maximize else c,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=self.a_eq,
            b_eq=self.b_eq,
            bounds=(0, None),
            method="highs",
        )
        if res.status != 0 or res.x is None:
            return None
        return np.asarray(res.x, dtype=float)

    def table(self, x: np.ndarray) -> np.ndarray:
        full = self.known.astype(float).ravel()
        full[self.var_pos] = x
        return full.reshape(self.known.shape)


class _Session:
    """Protection checks for one suppression state, sharing the LP and the witness tables."""

    def __init__(self, auditor: _Auditor, state: _Mask) -> None:
        self.auditor = auditor
        self.state = state
        self._lp: _LP | None = None
        self._witnesses: np.ndarray | None = None  # (n, R*C) feasible integer tables, lazily
        self._extra: list[np.ndarray] = []  # witnesses found by this session
        self._known: tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None = None
        self._lo: dict[Key, float] = {}
        self._hi: dict[Key, float] = {}

    @property
    def lp(self) -> _LP:
        if self._lp is None:
            self._lp = _LP(self.auditor, self.state)
        return self._lp

    def _released(self, q: _Quantity) -> bool:
        """Released, or derivable by chains of lines with one unknown cell (no LP needed)."""
        if not self.state.hidden(q.key):
            return True
        if self._known is None:
            self._known = _derivable(self.state)
        kind, idx = q.key
        known_cells, known_rows, known_cols, known_total = self._known
        if kind == "cell":
            return bool(known_cells[idx])
        if kind == "row":
            return bool(known_rows[idx[0]])
        if kind == "col":
            return bool(known_cols[idx[0]])
        return known_total

    def _witnessed(self, q: _Quantity, low: bool) -> bool:
        """Whether a known feasible table shows q can be 0 (low) or at least k (not low)."""
        if self._witnesses is None:
            self._witnesses = self.auditor.valid_witnesses(self.state)
        if self._extra:
            self._witnesses = np.concatenate([self._witnesses, np.stack(self._extra)])
            self._extra = []
        if not self._witnesses.shape[0]:
            return False
        vals = self._witnesses[:, q.flat].sum(axis=1)
        return bool((vals <= 0).any() if low else (vals >= self.auditor.k).any())

    def _add_witness(self, x: np.ndarray) -> None:
        table = self.auditor.accept_witness(self.lp.table(x), self.state)
        if table is not None:
            self._extra.append(table)

    def lo(self, q: _Quantity) -> float:
        """Minimum of q over the feasible tables (0.0 when a witness shows it can be 0)."""
        if q.key not in self._lo:
            if self._released(q):
                val = float(q.value)
            elif self._witnessed(q, low=True):
                val = 0.0
            else:
                c, const = self.lp.objective(q.coef)
                val = float(const)
                if c.any():
                    x = self.lp.solve(c, maximize=False)
                    if x is None:
                        val = float(q.value)  # solver failure: assume the attacker knows q
                    else:
                        val = const + float(c @ x)
                        self._add_witness(x)
            self._lo[q.key] = val
        return self._lo[q.key]

    def hi(self, q: _Quantity) -> float:
        """Maximum of q over the feasible tables, capped at k."""
        k = self.auditor.k
        if q.key not in self._hi:
            if self._released(q):
                val = float(q.value)
            elif self._witnessed(q, low=False):
                val = float(k)
            else:
                c, const = self.lp.objective(q.coef)
                val = float(const)
                if c.any() and const < k:
                    x = self.lp.solve(c, maximize=True, caps=[(c, float(k - const))])
                    if x is None:
                        val = float(q.value)
                    else:
                        val = const + float(c @ x)
                        self._add_witness(x)
            self._hi[q.key] = val
        return self._hi[q.key]

    def protected(self, q: _Quantity) -> bool:
        return self.lo(q) <= _TOL and self.hi(q) >= self.auditor.k - _TOL

    def presolve(self, qs: list[_Quantity]) -> None:
        """Two joint LPs that usually settle every quantity at once (each solution is a witness)."""
        if self._lp is None and not self.state.cells.any():
            return
        k = self.auditor.k
        low = [q for q in qs if not self._released(q) and not self._witnessed(q, low=True)]
        if len(low) > 1:
            objs = [c for c, const in map(self.lp.objective, [q.coef for q in low]) if const == 0]
            if len(objs) > 1:
                x = self.lp.solve(np.sum(objs, axis=0), maximize=False)
                if x is not None:
                    self._add_witness(x)
        high = [q for q in qs if not self._released(q) and not self._witnessed(q, low=False)]
        if len(high) > 1:
            objs = [self.lp.objective(q.coef) for q in high]
            caps = [(c, float(k - const)) for c, const in objs if c.any() and const < k]
            if len(caps) > 1:
                x = self.lp.solve(np.sum([c for c, _ in caps], axis=0), maximize=True, caps=caps)
                if x is not None:
                    self._add_witness(x)


def _derivable(state: _Mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Cells, row totals, column totals and grand total an attacker gets by plain subtraction.

    Repeatedly: a known line total with a single unknown cell gives that cell; a line whose cells
    are all known is known; a known grand total with a single unknown row (column) total gives it.
    Every step is a valid deduction, so whatever this marks is pinned (the LP finds more).
    """
    cells = ~state.cells
    rows = ~state.rows
    cols = ~state.cols
    total = not state.total
    while True:
        before = (int(cells.sum()), int(rows.sum()), int(cols.sum()), total)
        rows = rows | cells.all(axis=1)
        cols = cols | cells.all(axis=0)
        cells[rows & ((~cells).sum(axis=1) == 1)] = True
        cells[:, cols & ((~cells).sum(axis=0) == 1)] = True
        rows = rows | cells.all(axis=1)
        cols = cols | cells.all(axis=0)
        total = total or bool(rows.all()) or bool(cols.all())
        if total and (~rows).sum() == 1:
            rows[:] = True
        if total and (~cols).sum() == 1:
            cols[:] = True
        if (int(cells.sum()), int(rows.sum()), int(cols.sum()), total) == before:
            return cells, rows, cols, total


class _Auditor:
    """Sensitive quantities of one table and a pool of feasible tables reused as witnesses."""

    def __init__(self, counts: np.ndarray, k: int) -> None:
        self.counts = counts
        self.k = k
        nrow, ncol = counts.shape
        self.row_sums = counts.sum(axis=1)
        self.col_sums = counts.sum(axis=0)
        self.grand = int(counts.sum())
        self.row_masks = [np.zeros(counts.shape, dtype=bool) for _ in range(nrow)]
        for i, m in enumerate(self.row_masks):
            m[i, :] = True
        self.col_masks = [np.zeros(counts.shape, dtype=bool) for _ in range(ncol)]
        for j, m in enumerate(self.col_masks):
            m[:, j] = True
        self.items: list[_Quantity] = []  # every releasable item, in canonical order
        for i in range(nrow):
            for j in range(ncol):
                coef = np.zeros(counts.shape, dtype=bool)
                coef[i, j] = True
                self.items.append(_Quantity(("cell", (i, j)), coef, int(counts[i, j])))
        for i in range(nrow):
            self.items.append(_Quantity(("row", (i,)), self.row_masks[i], int(self.row_sums[i])))
        for j in range(ncol):
            self.items.append(_Quantity(("col", (j,)), self.col_masks[j], int(self.col_sums[j])))
        self.items.append(_Quantity(("total", ()), np.ones(counts.shape, dtype=bool), self.grand))
        # items summing the same cells are the same number (1-D tables): hidden or released together
        groups: dict[bytes, list[Key]] = {}
        for q in self.items:
            groups.setdefault(q.coef.tobytes(), []).append(q.key)
        self.group = {q.key: groups[q.coef.tobytes()] for q in self.items}
        self.quantities = [q for q in self.items if 1 <= q.value < k]
        size = counts.size
        self._pool = np.zeros((_POOL_MAX, size), dtype=np.int64)  # ring buffer of flat tables
        self._pool_rows = np.zeros((_POOL_MAX, nrow), dtype=np.int64)
        self._pool_cols = np.zeros((_POOL_MAX, ncol), dtype=np.int64)
        self._pool_n = 0  # tables ever added

    def sensitive_value(self, values: np.ndarray) -> np.ndarray:
        return (values >= 1) & (values < self.k)

    def sensitive_keys(self) -> list[Key]:
        return [q.key for q in self.quantities]

    def hide(self, state: _Mask, key: Key) -> None:
        for member in self.group[key]:
            state.set(member, True)

    # witnesses --------------------------------------------------------------------------------

    def accept_witness(self, table: np.ndarray, state: _Mask) -> np.ndarray | None:
        """Round an LP vertex to integers; keep it if it is exactly consistent with ``state``."""
        rounded = np.rint(table)
        if np.abs(rounded - table).max() > 1e-6 or (rounded < 0).any():
            return None
        w = rounded.astype(np.int64)
        rows, cols = w.sum(axis=1), w.sum(axis=0)
        if not self._feasible(w.reshape(1, -1), rows[None], cols[None], state)[0]:
            return None
        slot = self._pool_n % _POOL_MAX
        self._pool[slot] = w.ravel()
        self._pool_rows[slot] = rows
        self._pool_cols[slot] = cols
        self._pool_n += 1
        return w.ravel()

    def _feasible(
        self, flat: np.ndarray, rows: np.ndarray, cols: np.ndarray, state: _Mask
    ) -> np.ndarray:
        rel = ~state.cells.ravel()
        ok = (flat[:, rel] == self.counts.ravel()[rel]).all(axis=1)
        rel_rows = ~state.rows
        ok &= (rows[:, rel_rows] == self.row_sums[rel_rows]).all(axis=1)
        rel_cols = ~state.cols
        ok &= (cols[:, rel_cols] == self.col_sums[rel_cols]).all(axis=1)
        if not state.total:
            ok &= rows.sum(axis=1) == self.grand
        return ok

    def valid_witnesses(self, state: _Mask) -> np.ndarray:
        n = min(self._pool_n, _POOL_MAX)
        pool = self._pool[:n]
        return pool[self._feasible(pool, self._pool_rows[:n], self._pool_cols[:n], state)]

    # audit ------------------------------------------------------------------------------------

    def unprotected(self, state: _Mask, first_only: bool = False) -> list[_Quantity]:
        session = _Session(self, state)
        session.presolve(self.quantities)
        bad: list[_Quantity] = []
        for q in self.quantities:
            if not session.protected(q):
                bad.append(q)
                if first_only:
                    break
        return bad


# ----------------------------------------------------------------------------------------------
# secondary suppression


def _greedy(auditor: _Auditor, state: _Mask, release_margins: bool) -> _Mask:
    state = state.copy()
    n_items = len(auditor.items)
    for _ in range(n_items + 1):
        session = _Session(auditor, state)
        session.presolve(auditor.quantities)
        focus = next((q for q in auditor.quantities if not session.protected(q)), None)
        if focus is None:
            return state
        choice = _choose(auditor, session, focus, release_margins)
        if choice is None:  # pragma: no cover - with everything hidden nothing is pinned
            raise RuntimeError("table suppression: no candidate left for an unprotected quantity")
        auditor.hide(state, choice)
    raise RuntimeError("table suppression did not terminate")  # pragma: no cover


def _lines(state: _Mask, q: _Quantity) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns whose cells can compensate a change of q."""
    nrow, ncol = state.cells.shape
    rows = np.zeros(nrow, dtype=bool)
    cols = np.zeros(ncol, dtype=bool)
    kind, idx = q.key
    if kind == "cell":
        rows[idx[0]] = True
        cols[idx[1]] = True
    elif kind == "row":
        rows[idx[0]] = True
        cols |= state.cells[idx[0], :]
    elif kind == "col":
        cols[idx[0]] = True
        rows |= state.cells[:, idx[0]]
    else:
        rows[:] = True
        cols[:] = True
    return rows, cols


def _cell_candidates(auditor: _Auditor, state: _Mask, q: _Quantity) -> list[Key]:
    counts = auditor.counts
    rows, cols = _lines(state, q)
    near = rows[:, None] | cols[None, :]
    touched = state.cells.any(axis=1)[:, None] | state.cells.any(axis=0)[None, :]
    linked = touched & ~near
    rest = ~near & ~linked
    free = ~state.cells
    nonzero = counts > 0
    out: list[Key] = []
    for tier, want_nonzero in ((near, True), (linked, True), (near, False), (linked, False),
                               (rest, True), (rest, False)):  # fmt: skip
        sel = tier & free & (nonzero if want_nonzero else ~nonzero)
        ij = np.argwhere(sel)
        if ij.size:
            order = np.lexsort((ij[:, 1], ij[:, 0], counts[sel]))
            out.extend(("cell", (int(i), int(j))) for i, j in ij[order])
    return out


def _margin_candidates(auditor: _Auditor, state: _Mask, q: _Quantity) -> list[Key]:
    rows, cols = _lines(state, q)
    touched_rows = state.cells.any(axis=1)
    touched_cols = state.cells.any(axis=0)
    ranked: list[tuple[int, int, int, int, Key]] = []
    for i in np.flatnonzero(~state.rows):
        tier = 0 if rows[i] else 1 if touched_rows[i] else 3
        ranked.append((tier, int(auditor.row_sums[i]), 0, int(i), ("row", (int(i),))))
    for j in np.flatnonzero(~state.cols):
        tier = 0 if cols[j] else 1 if touched_cols[j] else 3
        ranked.append((tier, int(auditor.col_sums[j]), 1, int(j), ("col", (int(j),))))
    if not state.total:
        ranked.append((2, auditor.grand, 2, 0, ("total", ())))
    ranked.sort(key=lambda t: t[:4])
    return [t[4] for t in ranked]


def _choose(
    auditor: _Auditor, session: _Session, q: _Quantity, release_margins: bool
) -> Key | None:
    state = session.state
    cells = _cell_candidates(auditor, state, q)
    margins = _margin_candidates(auditor, state, q) if release_margins else []
    seen = {frozenset(auditor.group[c]) for c in cells}  # 1-D: a margin may be a cell
    margins = [m for m in margins if frozenset(auditor.group[m]) not in seen]
    lo, hi = session.lo(q), session.hi(q)
    lo_bad, hi_bad = lo > _TOL, hi < auditor.k - _TOL
    for key in cells[:_LOOKAHEAD_CELLS] + margins[:_LOOKAHEAD_MARGINS]:
        trial = state.copy()
        auditor.hide(trial, key)
        t = _Session(auditor, trial)
        if (lo_bad and t.lo(q) < lo - _IMPROVE) or (hi_bad and t.hi(q) > hi + _IMPROVE):
            return key
    if cells:
        return cells[0]
    return margins[0] if margins else None


def _prune(auditor: _Auditor, state: _Mask, release_margins: bool) -> _Mask:
    """Re-release secondary suppressions that turned out unnecessary."""
    sensitive = set(auditor.sensitive_keys())
    order: list[Key] = []
    if release_margins:
        if state.total:
            order.append(("total", ()))
        order += [("row", (int(i),)) for i in np.flatnonzero(state.rows)]
        order += [("col", (int(j),)) for j in np.flatnonzero(state.cols)]
    ij = np.argwhere(state.cells)
    vals = auditor.counts[state.cells]
    for r in np.lexsort((ij[:, 1], ij[:, 0], -vals)):
        order.append(("cell", (int(ij[r, 0]), int(ij[r, 1]))))
    done: set[Key] = set()
    for key in order:
        # without released margins a cell stands alone; with them, 1-D cells go with their margin
        group = auditor.group[key] if release_margins else [key]
        if key in done or any(g in sensitive for g in group) or not state.hidden(key):
            continue
        done.update(group)
        trial = state.copy()
        for member in group:
            trial.set(member, False)
        if not auditor.unprotected(trial, first_only=True):
            state = trial
    return state


def pooled_cells_shown(noisy: np.ndarray, k: int, n_sites: int, empty: np.ndarray) -> np.ndarray:
    """Which cells of a pooled table to show exactly, decided from its perturbed total.

    ``noisy`` is the total over ``n_sites`` sites of each cell plus a perturbation in {-1, 0, 1}
    per site; ``empty`` marks cells known to be 0. A cell is shown when its perturbed total is at
    least ``k + n_sites`` (so it holds at least ``k`` patients). Margins can be had from other
    releases (a describe by the row column counts each row), so a row or column never keeps a
    single hidden cell: the shown cell of smallest perturbed total there is hidden with it (first
    in row-major order on ties), until no row or column has exactly one. The rule reads only
    ``noisy`` and ``empty``, so every site can check a decision by making it again.
    """
    noisy = np.asarray(noisy, dtype=np.int64)
    empty = np.asarray(empty, dtype=bool)
    shown = (noisy >= k + n_sites) & ~empty
    for _ in range(noisy.size + 1):  # each pass hides at least one more cell, or stops
        changed = False
        for axis in (1, 0):
            hidden = ~shown & ~empty
            lone = np.flatnonzero(hidden.sum(axis=axis) == 1)
            for line in lone:
                cells = shown[line] if axis == 1 else shown[:, line]
                if not cells.any():
                    continue
                values = noisy[line] if axis == 1 else noisy[:, line]
                pick = int(np.flatnonzero(cells)[np.argmin(values[cells])])
                if axis == 1:
                    shown[line, pick] = False
                else:
                    shown[pick, line] = False
                changed = True
        if not changed:
            break
    return shown


def singled_out(totals: dict, k: int, n_sites: int) -> int | None:
    """The first design column that singles out a few patients over the sites (None if none),
    from the setup round's totals: ``others`` (per column, each site's patients without its
    most common value, perturbed) and ``varied`` (how many sites have any). A column some site
    varies in must have, over the sites, a perturbed total of at least ``k + n_sites`` such
    patients (so at least k): else all but a few share one value, and the fit's coefficient
    would be their survival (the one-hot attack). Sites whose most common values differ make
    this conservative, never lax."""
    others = np.asarray(totals["others"], dtype=np.int64)
    varied = np.asarray(totals["varied"], dtype=np.int64)
    bad = np.flatnonzero((varied > 0) & (others < k + n_sites))
    return int(bad[0]) if len(bad) else None
