"""Adversarial tests of crosstab small-cell suppression (fedhem_kernel.privacy.tables).

The attackers here are written independently of the module: they see only what a site releases
(released cells, released row/column totals, released grand total) and solve for the hidden
sensitive quantities, either with an LP over all cells (scipy directly) or, for tiny tables, by
enumerating every non-negative integer table consistent with the release.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from scipy.optimize import linprog

from fedhem_kernel.privacy.tables import TableSuppression, audit_table, suppress_table

KS = (3, 5, 10)


# ------------------------------------------------------------------------------------------------
# what the attacker sees, and the attackers


def released_view(counts: np.ndarray, s: TableSuppression) -> dict[str, object]:
    """Only the numbers a site publishes (None = withheld)."""
    counts = np.asarray(counts)
    return {
        "shape": counts.shape,
        "cells": np.where(s.cells, -1, counts),
        "cell_known": ~np.asarray(s.cells),
        "rows": [
            None if h else int(v) for h, v in zip(s.row_totals, counts.sum(axis=1), strict=True)
        ],
        "cols": [
            None if h else int(v) for h, v in zip(s.col_totals, counts.sum(axis=0), strict=True)
        ],
        "total": None if s.total else int(counts.sum()),
    }


def attacker_constraints(view: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    nrow, ncol = view["shape"]
    n = nrow * ncol
    a: list[np.ndarray] = []
    b: list[float] = []
    known = view["cell_known"]
    for i in range(nrow):
        for j in range(ncol):
            if known[i, j]:
                row = np.zeros(n)
                row[i * ncol + j] = 1
                a.append(row)
                b.append(view["cells"][i, j])
    for i, v in enumerate(view["rows"]):
        if v is not None:
            row = np.zeros((nrow, ncol))
            row[i, :] = 1
            a.append(row.ravel())
            b.append(v)
    for j, v in enumerate(view["cols"]):
        if v is not None:
            row = np.zeros((nrow, ncol))
            row[:, j] = 1
            a.append(row.ravel())
            b.append(v)
    if view["total"] is not None:
        a.append(np.ones(n))
        b.append(view["total"])
    if not a:
        return np.zeros((0, n)), np.zeros(0)
    return np.array(a), np.array(b)


def lp_attack(view: dict[str, object], coef: np.ndarray) -> tuple[float, float]:
    """Range of sum(coef * table) over all non-negative real tables matching the release."""
    a, b = attacker_constraints(view)
    c = np.asarray(coef, dtype=float).ravel()
    kw = {"bounds": (0, None), "method": "highs"}
    if a.shape[0]:
        kw |= {"A_eq": a, "b_eq": b}
    lo = linprog(c, **kw)
    assert lo.status == 0, lo.message
    hi = linprog(-c, **kw)
    if hi.status == 3:  # unbounded
        return float(lo.fun), float("inf")
    assert hi.status == 0, hi.message
    return float(lo.fun), float(-hi.fun)


def _compositions(n_parts: int, tmax: int) -> np.ndarray:
    """All non-negative integer vectors of length n_parts with sum <= tmax."""
    arr = np.zeros((1, 0), dtype=np.int64)
    sums = np.zeros(1, dtype=np.int64)
    for _ in range(n_parts):
        reps = tmax - sums + 1
        base = np.repeat(arr, reps, axis=0)
        starts = np.repeat(np.cumsum(reps) - reps, reps)
        vals = np.arange(int(reps.sum())) - starts
        arr = np.column_stack([base, vals])
        sums = arr.sum(axis=1)
    return arr


compositions = cache(_compositions)


def integer_tables(view: dict[str, object], k: int, true_total: int) -> np.ndarray:
    """Every non-negative integer table consistent with the release (grand total bounded by
    true_total + k when the grand total is withheld: the search box of the brute-force attacker)."""
    nrow, ncol = view["shape"]
    known = view["cell_known"]
    hidden = np.flatnonzero(~known.ravel())
    fixed = np.where(known, view["cells"], 0).ravel()
    budget = (view["total"] if view["total"] is not None else true_total + k) - int(fixed.sum())
    vals = compositions(len(hidden), int(budget))
    tables = np.repeat(fixed[None, :], len(vals), axis=0)
    tables[:, hidden] = vals
    tables = tables.reshape(-1, nrow, ncol)
    ok = np.ones(len(tables), dtype=bool)
    for i, v in enumerate(view["rows"]):
        if v is not None:
            ok &= tables[:, i, :].sum(axis=1) == v
    for j, v in enumerate(view["cols"]):
        if v is not None:
            ok &= tables[:, :, j].sum(axis=1) == v
    if view["total"] is not None:
        ok &= tables.sum(axis=(1, 2)) == view["total"]
    return tables[ok]


def sensitive_quantities(counts: np.ndarray, k: int) -> list[tuple[str, np.ndarray, int]]:
    counts = np.asarray(counts)
    nrow, ncol = counts.shape
    out = []
    for i in range(nrow):
        for j in range(ncol):
            m = np.zeros(counts.shape, dtype=bool)
            m[i, j] = True
            out.append((f"cell{(i, j)}", m, int(counts[i, j])))
    for i in range(nrow):
        m = np.zeros(counts.shape, dtype=bool)
        m[i, :] = True
        out.append((f"row{i}", m, int(counts[i].sum())))
    for j in range(ncol):
        m = np.zeros(counts.shape, dtype=bool)
        m[:, j] = True
        out.append((f"col{j}", m, int(counts[:, j].sum())))
    out.append(("total", np.ones(counts.shape, dtype=bool), int(counts.sum())))
    return [q for q in out if 1 <= q[2] < k]


def pinned_by_lp(counts: np.ndarray, s: TableSuppression, k: int) -> list[str]:
    """Sensitive quantities the independent LP attacker can pin (min > 0 or max < k)."""
    view = released_view(counts, s)
    bad = []
    for name, coef, _ in sensitive_quantities(counts, k):
        lo, hi = lp_attack(view, coef)
        if lo > 1e-7 or hi < k - 1e-7:
            bad.append(name)
    return bad


def assert_safe_release(counts: np.ndarray, k: int, s: TableSuppression) -> None:
    counts = np.asarray(counts)
    primary = (counts >= 1) & (counts < k)
    # (1) every primary cell is suppressed, and reported as primary
    assert np.array_equal(s.primary, primary)
    assert s.cells[primary].all()
    assert s.n_secondary == int((s.cells & ~primary).sum())
    # (4) nothing released lies in [1, k-1]
    released = counts[~s.cells]
    assert not ((released >= 1) & (released < k)).any()
    for hidden, values in (
        (s.row_totals, counts.sum(axis=1)),
        (s.col_totals, counts.sum(axis=0)),
        (np.array([s.total]), np.array([counts.sum()])),
    ):
        vis = values[~np.asarray(hidden)]
        assert not ((vis >= 1) & (vis < k)).any()
    # (2) the independent LP attacker pins nothing sensitive
    assert pinned_by_lp(counts, s, k) == []
    # and the module's own audit agrees
    assert audit_table(counts, s, k) == []


def manual(
    counts: np.ndarray, cells, rows=None, cols=None, total: bool = False
) -> TableSuppression:
    counts = np.asarray(counts)
    nrow, ncol = counts.shape
    return TableSuppression(
        cells=np.asarray(cells, dtype=bool),
        row_totals=np.zeros(nrow, bool) if rows is None else np.asarray(rows, dtype=bool),
        col_totals=np.zeros(ncol, bool) if cols is None else np.asarray(cols, dtype=bool),
        total=total,
        primary=np.zeros((nrow, ncol), bool),
        n_secondary=0,
    )


def random_table(rng: np.random.Generator, nrow: int, ncol: int) -> np.ndarray:
    """Counts with many zeros and small values, plus some large ones."""
    kind = rng.random((nrow, ncol))
    small = rng.integers(0, 6, size=(nrow, ncol))
    mid = rng.integers(3, 15, size=(nrow, ncol))
    large = rng.integers(10, 80, size=(nrow, ncol))
    return np.where(kind < 0.45, small, np.where(kind < 0.7, mid, large)).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# the attacker works: naive suppression is broken


def test_naive_primary_suppression_is_recovered_by_the_attacker():
    counts = np.array([[3, 20], [30, 40]])
    naive = manual(counts, [[True, False], [False, False]])
    view = released_view(counts, naive)
    coef = np.array([[True, False], [False, False]])
    assert lp_attack(view, coef) == pytest.approx((3.0, 3.0))
    tables = integer_tables(view, 5, int(counts.sum()))
    assert set(tables[:, 0, 0].tolist()) == {3}
    assert pinned_by_lp(counts, naive, 5) == ["cell(0, 0)"]
    assert audit_table(counts, naive, 5) == [("cell", (0, 0))]


def test_one_complement_is_not_enough():
    counts = np.array([[3, 20], [30, 40]])
    s = manual(counts, [[True, True], [False, False]])  # 3 = 33 - 30 via the first column
    assert lp_attack(released_view(counts, s), np.array([[1, 0], [0, 0]])) == pytest.approx((3, 3))
    assert audit_table(counts, s, 5) == [("cell", (0, 0))]


def test_hiding_every_cell_can_still_leak_through_margins():
    # rows 11, 10; cols 11, 10; total 21 => x00 = 1 + x11 >= 1 even with all cells hidden
    counts = np.array([[1, 10], [10, 0]])
    s = manual(counts, np.ones((2, 2)))
    lo, hi = lp_attack(released_view(counts, s), np.array([[1, 0], [0, 0]]))
    assert lo == pytest.approx(1.0)
    assert ("cell", (0, 0)) in audit_table(counts, s, 5)
    out = suppress_table(counts, 5)
    assert_safe_release(counts, 5, out)
    assert out.row_totals.any() or out.col_totals.any() or out.total


def test_hidden_sensitive_margin_recovered_from_the_total():
    counts = np.array([[1, 2, 0], [30, 40, 50]])
    s = manual(counts, [[True, True, False], [False, False, False]], rows=[True, False])
    assert "row0" in pinned_by_lp(counts, s, 5)
    assert ("row", (0,)) in audit_table(counts, s, 5)


# ------------------------------------------------------------------------------------------------
# hand-made cases


def test_classic_2x2():
    counts = np.array([[3, 20], [30, 40]])
    s = suppress_table(counts, 5)
    assert s.cells.all()
    assert not s.row_totals.any() and not s.col_totals.any() and not s.total
    assert s.n_secondary == 3
    assert s.any_suppressed
    assert_safe_release(counts, 5, s)
    lo, hi = lp_attack(released_view(counts, s), np.array([[1, 0], [0, 0]]))
    assert lo == pytest.approx(0) and hi >= 5


@pytest.mark.parametrize(
    "counts",
    [
        [[3, 20], [30, 40]],
        [[1, 0], [0, 0]],
        [[0, 1, 2], [5, 6, 7]],
        [[100]],
        [[1]],
        [[2], [3], [4]],
        [[1, 2, 3, 4]],
    ],
)
def test_k1_suppresses_nothing(counts):
    counts = np.array(counts)
    s = suppress_table(counts, 1)
    assert not s.any_suppressed
    assert not s.primary.any() and s.n_secondary == 0
    assert audit_table(counts, s, 1) == []


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 5), (5, 1)])
@pytest.mark.parametrize("k", KS)
def test_all_zero_table(shape, k):
    counts = np.zeros(shape, dtype=int)
    s = suppress_table(counts, k)
    assert not s.any_suppressed
    assert_safe_release(counts, k, s)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(
    "counts",
    [
        [[1, 2], [2, 1]],
        [[1, 1, 1], [1, 1, 1]],
        [[2, 0, 1], [0, 0, 0], [1, 2, 2]],
        [[1, 2], [3, 4]],
        [[4, 4, 4], [4, 4, 4], [4, 4, 4]],
    ],
)
def test_every_cell_small(counts, k):
    counts = np.array(counts)
    s = suppress_table(counts, k)
    assert_safe_release(counts, k, s)


def test_k_larger_than_every_count():
    counts = np.array([[7, 8, 9], [6, 5, 9]])
    s = suppress_table(counts, 20)  # margins 24, 20 and grand total 44 may be released
    assert s.cells.all()
    assert_safe_release(counts, 20, s)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(
    "counts",
    [
        [[3], [20], [30]],
        [[3, 20, 30]],
        [[1], [2], [40], [50], [0]],
        [[0, 0, 2, 0]],
        [[2, 60]],
        [[3]],
        [[30]],
        [[1], [1]],
        [[50], [50], [50], [4]],
    ],
)
def test_one_dimensional_tables(counts, k):
    counts = np.array(counts)
    s = suppress_table(counts, k)
    assert_safe_release(counts, k, s)
    flat_hidden = s.cells.ravel()
    n_small = int(((counts >= 1) & (counts < k)).sum())
    if n_small == 1 and not s.total:
        # a lone hidden cell next to a released total is a subtraction away
        assert flat_hidden.sum() >= 2


def test_one_dimensional_single_small_cell():
    counts = np.array([[3], [20], [30]])
    s = suppress_table(counts, 5)
    assert s.cells[0, 0]
    assert s.cells.sum() >= 2 or s.total
    # a hidden cell's own row total (the same number) is hidden with it
    assert np.array_equal(s.row_totals, s.cells[:, 0])
    assert_safe_release(counts, 5, s)


@pytest.mark.parametrize("k", KS)
def test_without_margins_only_primary_cells(k):
    counts = np.array([[3, 20, 1], [30, 40, 0], [2, 9, 11]])
    s = suppress_table(counts, k, release_margins=False)
    assert s.row_totals.all() and s.col_totals.all() and s.total
    assert np.array_equal(s.cells, (counts >= 1) & (counts < k))
    assert s.n_secondary == 0
    assert_safe_release(counts, k, s)


def test_secondary_suppression_prefers_small_complements():
    counts = np.array([[2, 90, 15], [80, 70, 60], [12, 85, 95]])
    s = suppress_table(counts, 5)
    assert_safe_release(counts, 5, s)
    # the cheap rectangle (0,0),(0,2),(2,0),(2,2) protects the 2
    assert s.cells[0, 2] and s.cells[2, 0]
    assert not s.cells[0, 1] and not s.cells[1, 0]


def test_deterministic():
    rng = np.random.default_rng(7)
    counts = random_table(rng, 6, 6)
    a = suppress_table(counts, 5)
    b = suppress_table(counts.copy(), 5)
    assert np.array_equal(a.cells, b.cells)
    assert np.array_equal(a.row_totals, b.row_totals)
    assert np.array_equal(a.col_totals, b.col_totals)
    assert a.total == b.total and a.n_secondary == b.n_secondary


def test_result_is_read_only():
    s = suppress_table(np.array([[3, 20], [30, 40]]), 5)
    with pytest.raises(ValueError):
        s.cells[0, 0] = False
    with pytest.raises(AttributeError):
        s.total = True  # type: ignore[misc]


def test_integral_floats_are_accepted():
    s = suppress_table(np.array([[3.0, 20.0], [30.0, 40.0]]), 5)
    assert s.cells.all()


@pytest.mark.parametrize(
    ("counts", "k"),
    [
        (np.array([[1.5, 2.0]]), 5),
        (np.array([[np.nan, 2.0]]), 5),
        (np.array([[np.inf, 2.0]]), 5),
        (np.array([[-1, 2]]), 5),
        (np.array([1, 2, 3]), 5),
        (np.zeros((2, 2, 2), dtype=int), 5),
        (np.zeros((0, 3), dtype=int), 5),
        (np.array([["a", "b"]]), 5),
        (np.array([[True, False]]), 5),
        (np.array([[1, 2]]), 0),
        (np.array([[1, 2]]), 2.5),
        (np.array([[1, 2]]), True),
    ],
)
def test_invalid_input(counts, k):
    with pytest.raises(ValueError):
        suppress_table(counts, k)


def test_audit_rejects_mismatched_masks():
    s = suppress_table(np.array([[3, 20], [30, 40]]), 5)
    with pytest.raises(ValueError):
        audit_table(np.array([[3, 20, 1], [30, 40, 1]]), s, 5)
    with pytest.raises(ValueError):
        manual(np.zeros((2, 2)), np.zeros((2, 3)))


def test_ten_by_ten_with_scattered_small_cells_is_protected():
    # (its speed is measured in benchmarks/bench_survival.py, not asserted here)
    rng = np.random.default_rng(3)
    counts = rng.integers(5, 200, size=(10, 10))
    counts[[1, 4, 7, 8], [2, 2, 5, 9]] = [1, 3, 2, 4]
    s = suppress_table(counts, 5)
    assert_safe_release(counts, 5, s)


# ------------------------------------------------------------------------------------------------
# random tables against the independent LP attacker

_RNG = np.random.default_rng(20240611)
RANDOM_TABLES = [
    random_table(_RNG, int(_RNG.integers(1, 7)), int(_RNG.integers(1, 7))) for _ in range(200)
]


#: The first tables run in ``make test-fast`` too; all of them in ``make test``.
FAST_TABLES = 20


@pytest.mark.parametrize(
    "idx",
    [
        i if i < FAST_TABLES else pytest.param(i, marks=pytest.mark.slow)
        for i in range(len(RANDOM_TABLES))
    ],
)
def test_random_tables_resist_lp_attacker(idx):
    counts = RANDOM_TABLES[idx]
    for k in KS:
        s = suppress_table(counts, k)
        assert_safe_release(counts, k, s)


@pytest.mark.parametrize("idx", range(0, 200, 4))
def test_random_tables_without_margins(idx):
    counts = RANDOM_TABLES[idx]
    for k in KS:
        s = suppress_table(counts, k, release_margins=False)
        assert s.n_secondary == 0
        assert_safe_release(counts, k, s)


@pytest.mark.parametrize("seed", range(60))
def test_audit_matches_independent_attacker_on_arbitrary_masks(seed):
    """audit_table, on random (mostly unsafe) suppression patterns, flags exactly what the
    independent LP attacker can pin."""
    rng = np.random.default_rng(1000 + seed)
    nrow, ncol = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    counts = random_table(rng, nrow, ncol)
    k = int(rng.choice(KS))
    s = manual(
        counts,
        rng.random((nrow, ncol)) < 0.5,
        rows=rng.random(nrow) < 0.3,
        cols=rng.random(ncol) < 0.3,
        total=bool(rng.random() < 0.3),
    )
    names = {"cell": "cell{}", "row": "row{}", "col": "col{}"}
    got = [
        "total" if kind == "total" else names[kind].format(idx if kind == "cell" else idx[0])
        for kind, idx in audit_table(counts, s, k)
    ]
    assert got == pinned_by_lp(counts, s, k)


# ------------------------------------------------------------------------------------------------
# tiny tables against an exhaustive integer attacker


def _tiny_tables() -> list[np.ndarray]:
    rng = np.random.default_rng(99)
    out = [
        np.array([[3, 20], [30, 40]]) // 6,
        np.array([[1, 4], [6, 2]]),
        np.array([[2, 9, 0], [1, 0, 3]]),
    ]
    while len(out) < 60:
        shape = (2, 2) if len(out) % 2 else (2, 3)
        t = rng.integers(0, 8, size=shape)
        if t.sum() <= 15:
            out.append(t)
    return out


TINY = _tiny_tables()


@pytest.mark.parametrize("idx", range(len(TINY)))
def test_tiny_tables_resist_integer_attacker(idx):
    counts = TINY[idx]
    for k in KS:
        s = suppress_table(counts, k)
        view = released_view(counts, s)
        tables = integer_tables(view, k, int(counts.sum()))
        assert len(tables) >= 1
        assert any(np.array_equal(t, counts) for t in tables)  # the truth is consistent
        for name, coef, _ in sensitive_quantities(counts, k):
            vals = tables[:, coef].sum(axis=1)
            assert vals.min() <= 0, (name, k, counts.tolist())
            assert vals.max() >= k, (name, k, counts.tolist())


@pytest.mark.parametrize("idx", range(len(TINY)))
def test_integer_and_lp_attackers_agree_on_naive_suppression(idx):
    """On primary-only suppression (often unsafe) the brute force and the LP attacker agree on
    which sensitive quantities are pinned: the LP relaxation is exact for these tables."""
    counts = TINY[idx]
    k = 5
    primary = (counts >= 1) & (counts < k)
    s = manual(counts, primary)
    view = released_view(counts, s)
    tables = integer_tables(view, k, int(counts.sum()))
    for _, coef, _ in sensitive_quantities(counts, k):
        vals = tables[:, coef].sum(axis=1)
        lo, hi = lp_attack(view, coef)
        assert vals.min() == pytest.approx(lo)
        if view["total"] is not None:
            assert vals.max() == pytest.approx(hi)
