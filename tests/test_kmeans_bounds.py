"""The site's nearest-centre state across Lloyd rounds (Hamerly's bounds) equals a full recomputation.

Labels, counts, sums and sums of squared norms after every update are compared with recomputing
every row from scratch, over centre sequences that move a little (Lloyd), jump, collapse onto each
other, and change their number.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhem_kernel.analyses.kmeans.site import nearest
from fedhem_kernel.analyses.kmeans.site_bounds import NearestCentres


def rows(n: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(6, p))
    x = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, p))
    xa = np.column_stack([x, np.ones(n)])
    return xa, np.einsum("ij,ij->i", x, x)


def check(state: NearestCentres, xa: np.ndarray, centers: np.ndarray) -> None:
    k = len(centers)
    labels, _ = nearest(xa, centers, sums=False, ones=True)
    np.testing.assert_array_equal(state.labels, labels)
    x = xa[:, :-1]
    np.testing.assert_array_equal(state.counts, np.bincount(labels, minlength=k))
    sums = np.stack([x[labels == j].sum(axis=0) for j in range(k)])
    np.testing.assert_allclose(state.sums, sums, rtol=1e-12, atol=1e-9)
    norms = np.bincount(labels, np.einsum("ij,ij->i", x, x), minlength=k)
    np.testing.assert_allclose(state.norms, norms, rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_lloyd_rounds_equal_a_full_recomputation_and_skip_settled_rows(seed):
    xa, norms = rows(3000, 4, seed)
    rng = np.random.default_rng(100 + seed)
    centers = xa[rng.choice(len(xa), 5, replace=False), :-1]
    state = NearestCentres.start(xa, norms, centers)
    check(state, xa, centers)
    recomputed = []
    for _ in range(30):  # Lloyd: the state's own sums give the next centres
        filled = state.counts > 0
        centers = centers.copy()
        centers[filled] = state.sums[filled] / state.counts[filled, None]
        state.update(centers)
        check(state, xa, centers)
        recomputed.append(state.recomputed)
    assert recomputed[-1] < len(xa) // 20  # late rounds recompute few rows


def test_jumps_ties_and_a_new_number_of_centres():
    xa, norms = rows(2000, 3, 7)
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 3))
    state = NearestCentres.start(xa, norms, centers)
    sequence = [
        rng.normal(scale=8.0, size=(4, 3)),  # far jumps
        np.zeros((4, 3)),  # every centre the same: ties everywhere, the first wins
        np.vstack([np.zeros((2, 3)), np.ones((2, 3))]),  # two pairs of equal centres
        rng.normal(size=(4, 3)),
        rng.normal(size=(7, 3)),  # another number of centres: rebuilt
        rng.normal(size=(1, 3)),  # one centre
        rng.normal(size=(3, 3)),
    ]
    for centers in sequence:
        state.update(centers)
        check(state, xa, centers)


def test_rows_on_the_bisector_are_recomputed():
    # two centres at -1 and +1 on a line; rows exactly at 0 are tied: kept only by a strict test
    x = np.array([[0.0], [0.0], [0.5], [-0.5]])
    xa = np.column_stack([x, np.ones(len(x))])
    norms = (x**2).ravel()
    state = NearestCentres.start(xa, norms, np.array([[-1.0], [1.0]]))
    check(state, xa, np.array([[-1.0], [1.0]]))
    state.update(np.array([[-1.0], [1.0 - 1e-15]]))  # the tie tips towards the second centre
    check(state, xa, np.array([[-1.0], [1.0 - 1e-15]]))


def test_many_centres_run_in_blocks_and_the_centre_gaps_stay_lower_bounds():
    from fedhem_kernel.analyses.kmeans import site_bounds as kmeans_bounds

    xa, norms = rows(5000, 20, 3)
    rng = np.random.default_rng(2)
    centers = xa[rng.choice(len(xa), 600, replace=False), :-1]  # 2**20 // 600 rows per block
    state = NearestCentres.start(xa, norms, centers)
    check(state, xa, centers)
    state.update(centers + rng.normal(scale=0.05, size=centers.shape))
    check(state, xa, state.centers)
    gaps = kmeans_bounds._nearest_other(centers)
    exact = np.sqrt(((centers[:, None] - centers[None]) ** 2).sum(axis=2))
    np.fill_diagonal(exact, np.inf)
    assert (gaps <= exact.min(axis=1)).all()
    np.testing.assert_allclose(gaps, exact.min(axis=1), rtol=1e-6)
