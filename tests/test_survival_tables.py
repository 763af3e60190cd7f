"""Merging of small KM steps: every released count obeys k, and k == 1 is the exact table."""

from __future__ import annotations

import numpy as np
import pytest

from fedhem_kernel.privacy.survival import (
    check_event_table,
    coarsen_times,
    event_table,
    merge_small_steps,
)


def test_coarsening_rounds_up_to_the_grid():
    t = np.array([0.0, 0.2, 1.0, 1.01, 2.999999999999, 30.4375])
    np.testing.assert_allclose(coarsen_times(t, 1.0), [0, 1, 1, 2, 3, 31])
    np.testing.assert_allclose(coarsen_times(t, None), t)


def test_event_table_matches_counts():
    tab = event_table(np.array([3, 1, 1, 2, 3, 5.0]), np.array([1, 1, 0, 0, 1, 0]))
    np.testing.assert_array_equal(tab.time, [1, 2, 3, 5])
    np.testing.assert_array_equal(tab.at_risk, [6, 4, 3, 1])
    np.testing.assert_array_equal(tab.events, [1, 0, 2, 0])
    np.testing.assert_array_equal(tab.censored, [1, 1, 0, 1])


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("k", [2, 5, 10])
def test_merged_tables_obey_k_and_stay_consistent(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    times = np.ceil(rng.exponential(rng.uniform(3, 40), n))
    events = rng.random(n) < rng.uniform(0.2, 0.9)
    tab = event_table(times, events)
    merged, n_merged = merge_small_steps(tab, k)
    if merged is None:
        # nothing releasable: the group is too small or has too few events or censorings
        assert n < k or 0 < events.sum() < k or 0 < (~events).sum() < k or n_merged == len(tab)
        return
    assert check_event_table(merged, k) == []
    assert merged.at_risk[0] == n
    assert merged.events.sum() == events.sum() and merged.censored.sum() == (~events).sum()
    assert np.all(np.diff(merged.time) > 0)
    assert set(merged.time) <= set(tab.time)


def test_k1_is_the_exact_table():
    rng = np.random.default_rng(0)
    tab = event_table(rng.exponential(10, 100).round(1), rng.random(100) < 0.6)
    merged, n_merged = merge_small_steps(tab, 1)
    assert n_merged == 0
    np.testing.assert_array_equal(merged.at_risk, tab.at_risk)


def test_a_single_late_death_is_merged_not_released():
    times = np.array([1.0] * 10 + [2.0] * 6 + [40.0])
    events = np.array([1] * 10 + [0] * 6 + [1])
    merged, _ = merge_small_steps(event_table(times, events), 5)
    assert merged is not None
    assert np.all((merged.events == 0) | (merged.events >= 5))
    assert 40.0 not in merged.time[merged.events == 1]
