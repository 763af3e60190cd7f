"""The release ledger (``privacy/ledger.py``): atoms of at least k, snapping, persistence.

The attacks through the public API are in ``tests/disclosure/test_ledger_attacks.py``; here the
ledger itself, on row labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhem_kernel.errors import SchemaError
from fedhem_kernel.privacy.ledger import Ledger, snap_labels

K = 5


def ledger(n=200, k=K, path=None):
    return Ledger("north", "d", n, k, path)


def release(led, mask_or_labels, fixed=None):
    labels = np.asarray(mask_or_labels)
    if labels.dtype == bool:
        labels = np.where(labels, 0, -1)
    with led.transaction() as txn:
        return txn.snap(labels, fixed)


def assert_atoms_safe(led):
    sizes = led.sizes()
    assert (sizes[sizes > 0] >= led.k).all(), sorted(sizes)[:5]


def assert_union_of_atoms(led, labels):
    for value in np.unique(labels):
        inside = labels == value
        touched = np.unique(led.atoms[inside])
        assert np.isin(led.atoms, touched).sum() == inside.sum()


def test_a_new_set_splits_the_whole_dataset_exactly():
    led = ledger()
    mask = np.arange(200) < 120
    assert np.array_equal(release(led, mask), np.where(mask, 0, -1))
    assert led.n_atoms == 2 and led.version == 1


def test_one_patient_more_or_less_is_answered_on_the_earlier_set():
    led = ledger()
    a = np.arange(200) < 120
    release(led, a)
    t = 150
    plus = a.copy()
    plus[t] = True  # A and patient t
    assert np.array_equal(release(led, plus), np.where(a, 0, -1))
    minus = a.copy()
    minus[3] = False  # A without patient 3
    assert np.array_equal(release(led, minus), np.where(a, 0, -1))
    everyone_but = np.ones(200, bool)
    everyone_but[t] = False
    assert (release(led, everyone_but) == 0).sum() in (120, 200)  # a union of atoms, t inside
    assert_atoms_safe(led)


def test_three_sets_cannot_isolate_a_patient():
    """X ∪ Y ∪ {t}, then X, then Y: Y is answered with t in it, so the three sums cancel."""
    led = ledger()
    idx = np.arange(200)
    x, y, t = idx < 60, (idx >= 60) & (idx < 130), 170
    s1 = x | y
    s1[t] = True
    r1 = release(led, s1) == 0
    r2 = release(led, x) == 0
    r3 = release(led, y) == 0
    diff = r1.astype(int) - r2 - r3
    assert not diff.any() or np.count_nonzero(diff) >= K


def test_random_sequences_keep_every_atom_at_least_k():
    rng = np.random.default_rng(0)
    led = ledger(n=500)
    released = []
    for _ in range(120):
        kind = rng.integers(3)
        if kind == 0:  # a random cohort
            labels = np.where(rng.random(500) < rng.uniform(0.05, 0.95), 0, -1)
        elif kind == 1:  # groups of a column with a few levels, some rows without a value
            labels = rng.integers(-1, rng.integers(2, 8), 500)
        else:  # a near-copy of an earlier release: a handful of rows flipped
            base = released[rng.integers(len(released))] if released else np.zeros(500, int)
            labels = base.copy()
            flip = rng.choice(500, rng.integers(1, 2 * K), replace=False)
            labels[flip] = np.where(labels[flip] < 0, 0, -1)
        fixed = rng.random(500) < 0.02 if rng.random() < 0.3 else None
        snapped = release(led, labels, fixed)
        if fixed is not None:
            assert (snapped[fixed] == -1).all()
        assert_atoms_safe(led)
        assert_union_of_atoms(led, snapped)
        released.append(snapped)
    # every difference of two released sets is 0 or at least k rows
    for a in released[-30:]:
        for b in released[-30:]:
            d = np.count_nonzero((a >= 0) != (b >= 0))
            assert d == 0 or d >= K


def test_snapping_a_union_of_atoms_changes_nothing():
    led = ledger()
    release(led, np.arange(200) % 3)
    again = np.arange(200) % 3
    version = led.version
    assert np.array_equal(release(led, again), again)
    assert led.version == version  # nothing to refine


def test_fixed_rows_stay_out_and_the_rows_left_out_are_k_or_none():
    led = ledger()
    fixed = np.zeros(200, bool)
    fixed[[10, 20]] = True  # two patients without the value the step needs
    snapped = release(led, np.zeros(200, int), fixed)
    left_out = snapped == -1
    assert left_out[[10, 20]].all() and left_out.sum() == K
    assert_atoms_safe(led)
    # the three others are chosen by the site's secret order, not the first rows
    other = np.flatnonzero(left_out & ~fixed)
    assert len(other) == 3


def test_a_group_too_small_to_split_goes_out_whole():
    led = ledger(n=8)  # one atom of 8: a group of 6 would leave 2 out, 5 would leave 3
    fixed = np.zeros(8, bool)
    fixed[:2] = True
    snapped = release(led, np.zeros(8, int), fixed)
    assert (snapped == -1).all()


def test_small_groups_join_the_largest_piece():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 40 + [-1] * 2)
    atoms = np.zeros(len(labels), dtype=np.int64)
    out = snap_labels(atoms, labels, K, np.arange(len(labels)))
    assert (out[50:53] == 0).all() and (out[-2:] == 0).all()
    assert (out[53:93] == 2).all()


def test_a_failed_transaction_keeps_the_atoms():
    led = ledger()
    with pytest.raises(RuntimeError), led.transaction() as txn:
        txn.snap(np.where(np.arange(200) < 100, 0, -1))
        raise RuntimeError("the step failed")
    assert led.n_atoms == 1 and led.version == 0


def test_the_ledger_survives_a_restart(tmp_path):
    path = tmp_path / "north" / "d.ledger.npz"
    led = ledger(path=path)
    release(led, np.arange(200) < 100)
    release(led, np.arange(200) % 2 == 0)
    again = ledger(path=path)
    assert np.array_equal(again.atoms, led.atoms)
    assert np.array_equal(again.ranks, led.ranks)  # the same secret order
    # the earlier cohort with one more patient is still answered on the earlier cohort
    plus = np.arange(200) < 100
    plus[150] = True
    assert (release(again, plus) == 0).sum() == 100


def test_a_changed_or_damaged_ledger_is_a_clear_error(tmp_path):
    path = tmp_path / "d.ledger.npz"
    release(ledger(path=path), np.arange(200) < 100)
    with pytest.raises(SchemaError, match="rows changed") as info:
        ledger(n=201, path=path)
    assert info.value.site == "north" and info.value.dataset == "d"
    path.write_bytes(b"not a ledger")
    with pytest.raises(SchemaError, match="cannot be read"):
        ledger(path=path)


def test_two_processes_keeping_the_same_ledger_see_each_others_releases(tmp_path):
    """A kernel and the Jupyter server may host the same site from one state_dir: each
    transaction reads what the other wrote (under a lock on the file) before it snaps."""
    path = tmp_path / "d.ledger.npz"
    kernel, server = ledger(path=path), ledger(path=path)
    a = np.arange(200) < 120
    release(kernel, a)
    plus = a.copy()
    plus[150] = True
    assert np.array_equal(release(server, plus), np.where(a, 0, -1))  # the server knows A
    release(kernel, np.arange(200) % 2 == 0)
    again = ledger(path=path)
    assert again.n_atoms == 4 and np.array_equal(again.ranks, kernel.ranks)
