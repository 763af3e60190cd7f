"""The seeded synthetic cohorts of the demo federation (fedhem_kernel.demo.cohorts)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fedhem_kernel.demo.cohorts import (
    COLUMN_TYPES,
    DEMO_SITES,
    make_demo_tables,
    make_site_tables,
)

DATASETS = ("aml", "mds", "mm", "scd")

# Allowed levels, written out from the specification (not imported from the module under test).
LEVELS: dict[str, dict[str, set[str]]] = {
    "aml": {
        "sex": {"F", "M"},
        "eln_risk": {"favourable", "intermediate", "adverse"},
        "treatment_intensity": {"intensive", "non-intensive"},
    },
    "mds": {
        "sex": {"F", "M"},
        "ipss_r": {"very_low", "low", "intermediate", "high", "very_high"},
    },
    "mm": {"sex": {"F", "M"}, "iss": {"I", "II", "III"}, "r_iss": {"I", "II", "III"}},
    "scd": {"sex": {"F", "M"}, "genotype": {"HbSS", "HbSC", "HbSbeta0", "HbSbeta+"}},
}
# (time, status) pairs per dataset.
SURVIVAL = {
    "aml": [("os_months", "os_status")],
    "mds": [("os_months", "os_status")],
    "mm": [("pfs_months", "pfs_status"), ("os_months", "os_status")],
    "scd": [],
}
BINARY = {
    "aml": ["npm1", "flt3_itd", "tp53", "os_status", "relapse"],
    "mds": ["sf3b1", "os_status"],
    "mm": ["pfs_status", "os_status"],
    "scd": ["microalbuminuria", "stroke"],
}
MAY_BE_MISSING = {("aml", "wbc"), ("scd", "hbf_pct")}
AGE_RANGE = {"aml": (18, 90), "mds": (18, 100), "mm": (18, 100), "scd": (2, 60)}


@pytest.fixture(scope="module")
def demo() -> dict[str, dict[str, pd.DataFrame]]:
    return make_demo_tables()


@pytest.fixture(scope="module")
def pooled(demo: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    return {
        ds: pd.concat([tables[ds] for tables in demo.values()], ignore_index=True)
        for ds in DATASETS
    }


def km_medians(df: pd.DataFrame, group: str, levels: list[str], time: str, status: str):
    lifelines = pytest.importorskip("lifelines")
    out = {}
    for level in levels:
        sub = df[df[group] == level]
        fit = lifelines.KaplanMeierFitter().fit(sub[time], sub[status])
        out[level] = float(fit.median_survival_time_)
    return out


def strictly_decreasing(values: list[float]) -> bool:
    return all(a > b for a, b in zip(values, values[1:], strict=False))


# -- determinism -------------------------------------------------------------------------------


def test_same_site_and_seed_give_identical_tables() -> None:
    first = make_site_tables("charite", seed=7)
    second = make_site_tables("charite", seed=7)
    assert set(first) == set(DATASETS)
    for ds in DATASETS:
        pd.testing.assert_frame_equal(first[ds], second[ds])


def test_default_seed_is_2026(demo: dict[str, dict[str, pd.DataFrame]]) -> None:
    again = make_site_tables("policlinico_bari", 2026)
    for ds in DATASETS:
        pd.testing.assert_frame_equal(demo["policlinico_bari"][ds], again[ds])


def test_other_seed_or_site_gives_other_data() -> None:
    base = make_site_tables("karolinska", seed=2026)
    reseeded = make_site_tables("karolinska", seed=2027)
    other_site = make_site_tables("charite", seed=2026)
    for ds in DATASETS:
        assert not base[ds].equals(reseeded[ds])
        n = min(len(base[ds]), len(other_site[ds]))
        assert not base[ds].head(n).reset_index(drop=True).equals(other_site[ds].head(n))
    # Not a relabelled copy either: the case mix differs between sites.
    assert base["aml"]["age"].mean() != other_site["aml"]["age"].mean()


def test_unknown_site_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown demo site"):
        make_site_tables("nowhere_general")


# -- sizes -------------------------------------------------------------------------------------


def test_demo_sites_sizes(demo: dict[str, dict[str, pd.DataFrame]]) -> None:
    assert len(DEMO_SITES) == 4
    assert len(set(DEMO_SITES.values())) == 4, "sites should have different sizes"
    assert list(demo) == list(DEMO_SITES)
    for site, n_aml in DEMO_SITES.items():
        assert site == site.lower() and site.isidentifier()
        assert 150 <= n_aml <= 900
        assert len(demo[site]["aml"]) == n_aml
        for ds in ("mds", "mm", "scd"):
            assert 100 <= len(demo[site][ds]) <= 2 * n_aml, (site, ds)


# -- schema ------------------------------------------------------------------------------------


def test_column_types_declaration() -> None:
    assert set(COLUMN_TYPES) == set(DATASETS)
    for ds, columns in COLUMN_TYPES.items():
        for name, spec in columns.items():
            assert spec["type"] in {"float", "int", "bool", "category"}, (ds, name)
            assert set(spec) <= {"type", "unit", "bounds", "levels"}
            if name.endswith("_months"):
                assert spec == {"type": "float", "unit": "months"}, (ds, name)
            else:
                assert "unit" not in spec, (ds, name)
            if spec["type"] == "category":
                assert name in LEVELS[ds], (ds, name)
                assert set(spec["levels"]) == set(LEVELS[ds][name])  # declared for DP mode
            if spec["type"] in ("float", "int") and "unit" not in spec and name != "efs_cause":
                low, high = spec["bounds"]  # public ranges for DP mode
                assert low < high, (ds, name)


@pytest.mark.parametrize("site", list(DEMO_SITES))
def test_tables_match_column_types(demo: dict[str, dict[str, pd.DataFrame]], site: str) -> None:
    for ds in DATASETS:
        df = demo[site][ds]
        assert list(df.columns) == list(COLUMN_TYPES[ds]), (site, ds)
        assert isinstance(df.index, pd.RangeIndex)
        for name, spec in COLUMN_TYPES[ds].items():
            col = df[name]
            kind = spec["type"]
            if kind == "category":
                assert isinstance(col.dtype, pd.CategoricalDtype), (ds, name)
                assert set(col.cat.categories) <= LEVELS[ds][name], (ds, name)
            elif kind == "int":
                assert col.dtype == np.int64, (ds, name, col.dtype)
            elif kind == "float":
                assert col.dtype == np.float64, (ds, name, col.dtype)
            if (ds, name) not in MAY_BE_MISSING:
                assert not col.isna().any(), (site, ds, name)
        for col in BINARY[ds]:
            assert set(df[col].unique()) <= {0, 1}, (site, ds, col)
        for time, status in SURVIVAL[ds]:
            assert (df[time] > 0).all(), (site, ds, time)
            assert set(df[status].unique()) == {0, 1}, (site, ds, status)
        lo, hi = AGE_RANGE[ds]
        assert df["age"].between(lo, hi).all(), (site, ds)


def test_values_are_rounded(demo: dict[str, dict[str, pd.DataFrame]]) -> None:
    for tables in demo.values():
        for ds, df in tables.items():
            assert np.allclose(df["age"], df["age"].round(1)), ds
            for name in df.columns:
                if name.endswith("_months"):
                    assert np.allclose(df[name], df[name].round(2)), (ds, name)


def test_some_missing_values_where_expected(demo: dict[str, dict[str, pd.DataFrame]]) -> None:
    for site, tables in demo.items():
        for ds, name in MAY_BE_MISSING:
            share = tables[ds][name].isna().mean()
            assert 0 < share <= 0.05, (site, ds, name, share)


def test_mm_progression_precedes_death(pooled: dict[str, pd.DataFrame]) -> None:
    mm = pooled["mm"]
    assert (mm["pfs_months"] <= mm["os_months"]).all()
    # A death observed at the PFS time is a PFS event too.
    same = (mm["pfs_months"] == mm["os_months"]) & (mm["os_status"] == 1)
    assert (mm.loc[same, "pfs_status"] == 1).all()


# -- clinical coherence --------------------------------------------------------------------------


def test_aml_case_mix_is_plausible(pooled: dict[str, pd.DataFrame]) -> None:
    aml = pooled["aml"]
    assert 62 <= aml["age"].median() <= 72
    shares = aml["eln_risk"].value_counts(normalize=True)
    for level in ("favourable", "intermediate", "adverse"):
        assert 0.2 <= shares[level] <= 0.45, shares
    assert 0.2 <= aml["npm1"].mean() <= 0.4
    assert 0.15 <= aml["flt3_itd"].mean() <= 0.35
    assert 0.05 <= aml["tp53"].mean() <= 0.12
    assert 10 <= aml["wbc"].median() <= 20
    by_risk = aml.groupby("eln_risk", observed=True)
    assert by_risk["tp53"].mean()["adverse"] > 5 * by_risk["tp53"].mean()["favourable"]
    assert by_risk["npm1"].mean()["favourable"] > by_risk["npm1"].mean()["adverse"]
    # ELN 2017: NPM1 wild-type with FLT3-ITD is never favourable.
    fav = aml[aml["eln_risk"] == "favourable"]
    assert not ((fav["npm1"] == 0) & (fav["flt3_itd"] == 1)).any()
    age_by_intensity = aml.groupby("treatment_intensity", observed=True)["age"].median()
    assert age_by_intensity["non-intensive"] > age_by_intensity["intensive"] + 5


def test_rare_combinations_exist(demo: dict[str, dict[str, pd.DataFrame]]) -> None:
    counts = [
        int(t["aml"].loc[t["aml"]["eln_risk"] == "favourable", "tp53"].sum()) for t in demo.values()
    ]
    assert min(counts) <= 3, counts  # TP53 in ELN favourable: (almost) absent at some sites


def test_other_diseases_are_coherent(pooled: dict[str, pd.DataFrame]) -> None:
    mds = pooled["mds"]
    sf3b1 = mds.groupby("ipss_r", observed=True)["sf3b1"].mean()
    assert sf3b1["very_low"] + sf3b1["low"] > 4 * (sf3b1["high"] + sf3b1["very_high"]) / 2
    blasts = mds.groupby("ipss_r", observed=True)["bm_blasts_pct"].median()
    assert blasts["very_high"] > blasts["very_low"]

    mm = pooled["mm"]
    # R-ISS I needs ISS I, R-ISS III needs ISS III.
    assert (mm.loc[mm["r_iss"] == "I", "iss"] == "I").all()
    assert (mm.loc[mm["r_iss"] == "III", "iss"] == "III").all()

    scd = pooled["scd"]
    assert (scd["age"] < 18).mean() > 0.2 and (scd["age"] >= 18).mean() > 0.2
    assert (scd["crises_per_year"] >= 0).all() and (scd["crp_mg_l"] > 0).all()
    by_genotype = scd.groupby("genotype", observed=True)
    assert by_genotype["hbf_pct"].median()["HbSS"] > by_genotype["hbf_pct"].median()["HbSC"]
    assert by_genotype["stroke"].mean()["HbSS"] > by_genotype["stroke"].mean()["HbSC"]
    assert (
        by_genotype["crises_per_year"].mean()["HbSS"]
        > by_genotype["crises_per_year"].mean()["HbSC"]
    )


# -- survival calibration (pooled over the four sites) ---------------------------------------------


def test_aml_survival_by_eln_risk(pooled: dict[str, pd.DataFrame]) -> None:
    med = km_medians(
        pooled["aml"],
        "eln_risk",
        ["favourable", "intermediate", "adverse"],
        "os_months",
        "os_status",
    )
    assert med["favourable"] > med["intermediate"] > med["adverse"], med
    assert med["favourable"] > 48 or math.isinf(med["favourable"]), med
    assert 12 <= med["intermediate"] <= 36, med
    assert 5 <= med["adverse"] <= 14, med

    lifelines = pytest.importorskip("lifelines")
    fav = pooled["aml"][pooled["aml"]["eln_risk"] == "favourable"]
    five_year = float(
        lifelines.KaplanMeierFitter().fit(fav["os_months"], fav["os_status"]).predict(60)
    )
    assert 0.45 <= five_year <= 0.70, five_year


def test_aml_has_a_long_thin_tail(pooled: dict[str, pd.DataFrame]) -> None:
    aml = pooled["aml"]
    at_risk_late = int((aml["os_months"] >= 96).sum())
    assert 0 < at_risk_late < 0.05 * len(aml), at_risk_late


def test_mds_survival_by_ipss_r(pooled: dict[str, pd.DataFrame]) -> None:
    levels = ["very_low", "low", "intermediate", "high", "very_high"]
    med = km_medians(pooled["mds"], "ipss_r", levels, "os_months", "os_status")
    assert strictly_decreasing([med[g] for g in levels]), med
    # Greenberg et al. 2012: 63.6 / 36.0 / 19.2 / 9.6 months for low .. very high.
    assert 40 <= med["low"] <= 90, med
    assert 24 <= med["intermediate"] <= 50, med
    assert 12 <= med["high"] <= 30, med
    assert 5 <= med["very_high"] <= 15, med


def test_mm_survival_by_stage(pooled: dict[str, pd.DataFrame]) -> None:
    stages = ["I", "II", "III"]
    os_iss = km_medians(pooled["mm"], "iss", stages, "os_months", "os_status")
    assert strictly_decreasing([os_iss[s] for s in stages]), os_iss
    os_riss = km_medians(pooled["mm"], "r_iss", stages, "os_months", "os_status")
    assert strictly_decreasing([os_riss[s] for s in stages]), os_riss
    pfs_riss = km_medians(pooled["mm"], "r_iss", stages, "pfs_months", "pfs_status")
    assert strictly_decreasing([pfs_riss[s] for s in stages]), pfs_riss
    # Palumbo et al. 2015: median PFS 66 / 42 / 29 months.
    assert 45 <= pfs_riss["I"] <= 90 and 30 <= pfs_riss["II"] <= 55, pfs_riss
    assert 18 <= pfs_riss["III"] <= 40, pfs_riss
