"""Attacks on the pooled PCA (two secure sums: pca/site.py).

The coordinator sees the first round's total (the complete rows' count, the one-hot check's
perturbed counts), then Σx and Σxxᵀ. Every site checks the first round's signed total before it
sends its sums: at least 10 rows per feature over the sites, no feature singling out 1..k-1
patients. A coordinator that skips its own check meets every site's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

import fedhem_kernel as fh
from fedhem_kernel.engine.coordinator import Query
from fedhem_kernel.errors import FedHemError

SECRET = 123.456


def cohort(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.normal(60, 10, n), "wbc": rng.gamma(2, 10, n), "flag": 0.0})


@pytest.fixture
def fed():
    tables = {s: cohort(i, n) for i, (s, n) in enumerate({"a": 120, "b": 80, "c": 40}.items())}
    tables["a"].loc[3, "flag"] = SECRET  # one patient's value in an otherwise constant column
    with fh.Federation.local({s: {"d": t} for s, t in tables.items()}) as f:
        yield f


def rounds(fed, features, where=None):
    q = Query(fed.coordinator, "pca", "d", where=where, who="mallory")
    return q, q.ask_sum("pca_pool_setup", {"features": features})


def test_a_feature_singling_out_one_patient_is_refused_by_the_coordinator_and_every_site(
    fed, releases
):
    with pytest.raises(fh.DisclosureError) as info:
        fed.pca("d", ["age", "flag"])
    assert info.value.column == "flag" and info.value.rule == "min_cell_count"
    q, setup = rounds(fed, ["age", "flag"])  # skipping the coordinator's own check
    with pytest.raises(FedHemError):
        q.ask_sum("pca_pool_sums", {"features": ["age", "flag"], "evidence": setup.evidence})
    refused = [o for o in q.report().outcomes if not o.released]
    assert len(refused) == 3 and all("min_cell_count" in o.rules for o in refused)
    assert str(SECRET) not in repr([r.payload for r in releases])


def test_sums_over_fewer_than_ten_rows_per_feature_are_refused_at_every_site(fed):
    q, setup = rounds(fed, ["age", "wbc"], where="age > 75")  # a handful over the sites
    assert int(setup.totals["n"][0]) < 20
    with pytest.raises(FedHemError):
        q.ask_sum("pca_pool_sums", {"features": ["age", "wbc"], "evidence": setup.evidence})
    refused = [o for o in q.report().outcomes if not o.released]
    assert refused and all("max_parameters" in o.rules for o in refused)


def test_sums_need_the_first_round_of_the_same_request(fed):
    _, other = rounds(fed, ["age", "wbc"], where="age > 40")
    q = Query(fed.coordinator, "pca", "d", who="mallory")
    with pytest.raises(FedHemError):  # evidence of another cohort's first round
        q.ask_sum("pca_pool_sums", {"features": ["age", "wbc"], "evidence": other.evidence})
    for step in ("pca_pool_setup", "pca_pool_sums"):  # never answered in the clear
        with pytest.raises(FedHemError):
            Query(fed.coordinator, "pca", "d", who="mallory").ask(step, {"features": ["age"]})


def test_the_pooled_pca_uses_every_site_and_equals_scikit_learn():
    tables = {s: cohort(i, n) for i, (s, n) in enumerate({"a": 120, "b": 80, "c": 40}.items())}
    with fh.Federation.local({s: {"d": t} for s, t in tables.items()}) as f:
        res = f.pca("d", ["age", "wbc"], standardize=False)
    assert res.privacy.released_sites == ["a", "b", "c"] and res.n_samples == 240
    rows = pd.concat(tables.values())[["age", "wbc"]]
    ref = PCA().fit(rows)
    np.testing.assert_allclose(res.explained_variance, ref.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(res.components.to_numpy(), ref.components_, atol=1e-9)


def test_a_site_in_secure_sums_gives_no_statistics_of_its_own(fed):
    """Its own XᵀX, against the pooled one, would give the rest: a small site's (pooled_only)."""
    q = Query(fed.coordinator, "pca", "d", who="mallory")
    with pytest.raises(fh.DisclosureError) as info:
        q.ask("pca_stats", {"features": ["age", "wbc"]})
    assert set(info.value.rule.split(",")) == {"pooled_only"}
