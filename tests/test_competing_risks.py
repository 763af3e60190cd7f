"""Competing risks: federated Aalen–Johansen and Gray's test equal the pooled-row references.

Data (all public, each split over three sites with ``split_rows``):

* scikit-survival's ``flchain`` (7874 rows): death by ICD chapter, coded 1 = circulatory,
  2 = neoplasms, 3 = any other chapter (or unknown), 0 = alive at last follow-up;
* scikit-survival's ``cgvhd`` (100 rows, causes 1-3) and ``bmt`` (35 rows, 1 = transplant-related
  mortality, 2 = relapse);
* the data of R cmprsk's own test (``set.seed(2)`` example of ``cuminc``, 100 rows, three groups
  and two strata), dumped from R and checked against the values printed in cmprsk's
  ``tests/test.Rout.save``;
* the demo federation's AML ``efs_months`` / ``efs_cause`` (1 = relapse, 2 = death without relapse).

References: scikit-survival's ``cumulative_incidence_competing_risks`` (ties as recorded, Aalen
variance, log-log intervals) for the curves; for Gray's test, :func:`gray_reference` below, a
row-by-row loop over the distinct times following Gray (1988) and R cmprsk's ``crstm``, checked
against cmprsk's published statistics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import split_rows
from scipy import stats
from sksurv.datasets import load_bmt, load_cgvhd, load_flchain
from sksurv.nonparametric import cumulative_incidence_competing_risks
from test_widgets import widget_page

import fedhem_kernel as fh
from fedhem_kernel.analyses.cumulative_incidence import COMPETING
from fedhem_kernel.analyses.cumulative_incidence.combine import (
    aalen_johansen,
    gray_score_variance,
    gray_statistic,
)
from fedhem_kernel.analyses.cumulative_incidence.result import CumulativeIncidenceResult
from fedhem_kernel.demo.cohorts import COLUMN_TYPES, make_demo_tables

K = 5

# -- data ---------------------------------------------------------------------------------------
# R cmprsk tests/test.R: set.seed(2); ss <- rexp(100); gg <- factor(sample(1:3, ...)); cc <-
# sample(0:2, ...); strt <- sample(1:2, ...) (R's pre-3.6 sampling), dumped with 6 decimals (the
# statistics depend on the order of the times only).
R_TIME = """
0.686305 0.149818 1.611875 1.077275 1.553027 0.286783 0.234919 0.255626 0.536215 1.420936 1.979941
0.816767 0.970783 3.376077 1.407218 0.229477 2.821243 1.598966 0.661166 0.291716 2.421805 0.264711
0.419970 0.994872 5.248650 0.493777 0.036222 0.039556 2.225511 1.896816 1.562481 2.080967 0.062462
0.308574 0.854363 1.086975 0.183905 0.877297 0.166353 1.346992 3.303843 0.723761 0.043173 1.635107
1.022373 1.565542 0.734400 1.705071 1.527256 1.921497 1.854679 0.310276 2.424571 0.515172 1.251790
1.054940 0.010267 1.079949 0.136024 0.466943 1.348637 0.113960 2.535242 0.762922 0.432438 0.666299
0.862624 0.479771 0.397440 1.493170 0.661091 0.540539 1.355944 0.773167 3.902563 0.117417 1.786273
0.072698 0.259388 2.092709 0.229584 0.490496 0.425987 0.335195 0.697602 0.097860 0.917998 0.174528
0.680717 1.835194 2.997399 1.937913 0.520418 1.653625 2.238665 0.149357 0.720766 0.096726 0.831950
1.003850
"""
R_STATUS = "1202210220022000001021111200101112001201212020021211210202120221212210000202222000112122101112122011"
R_GROUP = "cacabbbcbbabbcbcaabaacbcaaaacaabcbcacbaccccbbaabbbcaacbccaabacbabcaacccabcaabbccbccbbbbcbabaabaaaaba"
R_STRATA = "1122222111212222111121221211222111211212222111111212221121211112111222121121211112211212221211212222"


def r_cmprsk_data() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ss": np.array(R_TIME.split(), dtype=float),
            "cc": np.array(list(R_STATUS), dtype=int),
            "gg": list(R_GROUP),
            "strt": np.array(list(R_STRATA), dtype=int),
        }
    )


def flchain() -> pd.DataFrame:
    x, y = load_flchain()
    chapter = x["chapter"].astype(object)
    cause = np.select(
        [~y["death"], chapter == "Circulatory", chapter == "Neoplasms"], [0, 1, 2], default=3
    )
    return pd.DataFrame(
        {
            "futime": y["futime"],
            "cause": cause,
            "sex": x["sex"].astype(str).to_numpy(),
            "flc": x["flc.grp"].astype(str).to_numpy(),
        }
    )


def cgvhd() -> pd.DataFrame:
    x, y = load_cgvhd()
    return pd.DataFrame(
        {
            "ftime": y["ftime"],
            "status": y["status"],
            "dx": x["dx"].astype(str).to_numpy(),
            "tx": x["tx"].astype(str).to_numpy(),
        }
    )


def bmt() -> pd.DataFrame:
    x, y = load_bmt()
    return pd.DataFrame(
        {"ftime": y["ftime"], "status": y["status"], "dis": x["dis"].astype(str).to_numpy()}
    )


def demo_aml() -> pd.DataFrame:
    return pd.concat([t["aml"] for t in make_demo_tables().values()], ignore_index=True)


CASES = {
    # name: (loader, duration, event, group)
    "flchain": (flchain, "futime", "cause", "sex"),
    "cgvhd": (cgvhd, "ftime", "status", "tx"),
    "bmt": (bmt, "ftime", "status", "dis"),
    "cmprsk_test": (r_cmprsk_data, "ss", "cc", "gg"),
    "demo_aml": (demo_aml, "efs_months", "efs_cause", "eln_risk"),
}


def federation(df: pd.DataFrame, seed: int = 0, policy: fh.Policy | None = None) -> fh.Federation:
    sites = {site: {"data": part} for site, part in split_rows(df, 3, seed).items()}
    columns = {"data": COLUMN_TYPES["aml"]} if "efs_cause" in df else None  # months for the demo
    return fh.Federation.local(sites, policy=policy or fh.Policy.unrestricted(), columns=columns)


# -- Gray's test: a row-level reference ---------------------------------------------------------
def _gray_one_stratum(
    time: np.ndarray, status: np.ndarray, group: np.ndarray, cause: int, n_groups: int, rho: float
) -> tuple[np.ndarray, np.ndarray]:
    """Score and covariance in one stratum: a plain loop over the rows, time by time."""
    order = np.argsort(time, kind="stable")
    time, status, group = time[order], status[order], group[order]
    g_n = n_groups
    at_risk = np.bincount(group, minlength=g_n).astype(float)
    surv_left = np.ones(g_n)  # all-cause KM per group just before the current time
    cif_left = np.zeros(g_n)  # CIF of the cause of interest per group just before
    pooled_left = 0.0
    score = np.zeros(g_n)
    c_mat = np.zeros((g_n, g_n))
    v_mat = np.zeros((g_n, g_n))
    v2 = np.zeros((g_n, g_n))
    v3 = np.zeros(g_n)
    i = 0
    while i < len(time):
        j = i
        while j < len(time) and time[j] == time[i]:
            j += 1
        d1 = np.zeros(g_n)
        d2 = np.zeros(g_n)
        leaving = np.zeros(g_n)
        for r in range(i, j):
            leaving[group[r]] += 1
            if status[r] == cause:
                d1[group[r]] += 1
            elif status[r] != 0:
                d2[group[r]] += 1
        n1, n2 = d1.sum(), d2.sum()
        surv = surv_left.copy()
        cif = cif_left.copy()
        pooled = pooled_left
        if n1 + n2 > 0:
            risk_sum = 0.0  # sum over groups of n_g / S_g(t-)
            sub_sum = 0.0  # sum over groups of n_g (1 - F_g(t-)) / S_g(t-)
            for g in range(g_n):
                if at_risk[g] > 0:
                    surv[g] = surv_left[g] * (at_risk[g] - d1[g] - d2[g]) / at_risk[g]
                    cif[g] = cif_left[g] + surv_left[g] * d1[g] / at_risk[g]
                    risk_sum += at_risk[g] / surv_left[g]
                    sub_sum += at_risk[g] * (1 - cif_left[g]) / surv_left[g]
            pooled = pooled_left + n1 / risk_sum
            w = (1 - pooled_left) ** rho
            a = np.zeros((g_n, g_n))
            for g in range(g_n):
                if at_risk[g] <= 0:
                    continue
                hg = at_risk[g] / surv_left[g]
                for h in range(g_n):
                    if at_risk[h] <= 0:
                        continue
                    hh = at_risk[h] / surv_left[h]
                    a[g, h] = w * (hg * (1 - hg / risk_sum) if g == h else -hg * hh / risk_sum)
            c_mat += a * n1 / (risk_sum * (1 - pooled_left))
            for g in range(g_n):
                if at_risk[g] > 0:
                    expected = n1 * at_risk[g] * (1 - cif_left[g]) / (surv_left[g] * sub_sum)
                    score[g] += w * (d1[g] - expected)
            if n1 > 0:
                for k in range(g_n):
                    if at_risk[k] <= 0:
                        continue
                    t4 = 1 - (1 - pooled) / surv[k] if surv[k] > 0 else 1.0
                    t5 = 1 - (n1 - 1) / (risk_sum * surv_left[k] - 1) if n1 > 1 else 1.0
                    t3 = t5 * surv_left[k] * n1 / (risk_sum * at_risk[k])
                    v3[k] += t4 * t4 * t3
                    for g in range(g_n):
                        b_g = a[g, k] - t4 * c_mat[g, k]
                        v2[g, k] += b_g * t4 * t3
                        for h in range(g_n):
                            v_mat[g, h] += b_g * (a[h, k] - t4 * c_mat[h, k]) * t3
            if n2 > 0:
                for k in range(g_n):
                    if surv[k] <= 0 or d2[k] <= 0:
                        continue
                    t4 = (1 - pooled) / surv[k]
                    t5 = 1 - (d2[k] - 1) / (at_risk[k] - 1) if d2[k] > 1 else 1.0
                    t3 = t5 * surv_left[k] ** 2 * d2[k] / at_risk[k] ** 2
                    v3[k] += t4 * t4 * t3
                    for g in range(g_n):
                        v2[g, k] -= t4 * c_mat[g, k] * t4 * t3
                        for h in range(g_n):
                            v_mat[g, h] += t4 * c_mat[g, k] * t4 * c_mat[h, k] * t3
        at_risk -= leaving
        surv_left, cif_left, pooled_left = surv, cif, pooled
        i = j
    for g in range(g_n):
        for h in range(g_n):
            for k in range(g_n):
                v_mat[g, h] += c_mat[g, k] * c_mat[h, k] * v3[k]
                v_mat[g, h] += c_mat[g, k] * v2[h, k] + c_mat[h, k] * v2[g, k]
    return score[: g_n - 1], v_mat[: g_n - 1, : g_n - 1]


def gray_reference(
    time: np.ndarray,
    status: np.ndarray,
    group: np.ndarray,
    cause: int,
    strata: np.ndarray | None = None,
    rho: float = 0.0,
) -> tuple[float, int, float]:
    """Gray's K-sample test (statistic, df, p) from rows; strata sum scores and covariances."""
    labels = sorted(set(group))
    codes = np.array([labels.index(g) for g in group])
    strata = np.zeros(len(time), dtype=int) if strata is None else np.asarray(strata)
    score = np.zeros(len(labels) - 1)
    var = np.zeros((len(labels) - 1, len(labels) - 1))
    for s in np.unique(strata):
        m = strata == s
        sc, v = _gray_one_stratum(
            np.asarray(time)[m], np.asarray(status)[m], codes[m], cause, len(labels), rho
        )
        score += sc
        var += v
    stat = float(score @ np.linalg.solve(var, score))
    return stat, len(labels) - 1, float(stats.chi2.sf(stat, len(labels) - 1))


# -- published values -----------------------------------------------------------------------------
# cmprsk tests/test.Rout.save: cuminc(ss, cc, gg, strt) and the same with subset gg != 'b', as
# printed (statistic, p-value, df); a value matches when it rounds to the printed digits.
PUBLISHED_GRAY = {
    ("abc", 1): ("3.393977", "0.1832345", 2),
    ("abc", 2): ("1.989511", "0.3698139", 2),
    ("ac", 1): ("3.5151549", "0.06080997", 1),
    ("ac", 2): ("0.1400145", "0.70826655", 1),
}
# cuminc(ss, cc)$est at times 1..5 (cause 1, cause 2)
PUBLISHED_CIF = {
    1: [0.2352861, 0.3287068, 0.4247898, 0.4247898, 0.4247898],
    2: [0.2567862, 0.3931580, 0.4631781, 0.4911861, 0.4911861],
}


def matches_printed(value: float, printed: str) -> bool:
    decimals = len(printed.split(".")[1])
    return abs(value - float(printed)) <= 0.5 * 10**-decimals + 1e-15


def _counts_by_group(df: pd.DataFrame, cause: int, groups: list[str]):
    times = np.unique(df["ss"])
    n = np.array([[((df.ss >= t) & (df.gg == g)).sum() for g in groups] for t in times])
    hit = [[(df.ss == t) & (df.gg == g) for g in groups] for t in times]
    d1 = np.array([[(m & (df.cc == cause)).sum() for m in row] for row in hit])
    d2 = np.array([[(m & (df.cc > 0) & (df.cc != cause)).sum() for m in row] for row in hit])
    return n, d1, d2


@pytest.mark.parametrize(("subset", "cause"), list(PUBLISHED_GRAY))
def test_gray_test_reproduces_cmprsk_published_values(subset, cause):
    df = r_cmprsk_data()
    df = df[df.gg.isin(list(subset))]
    stat, p, dof = PUBLISHED_GRAY[(subset, cause)]
    # the row-level reference, stratified as in cmprsk's example
    ref = gray_reference(df.ss.to_numpy(), df.cc.to_numpy(), df.gg.to_numpy(), cause, df.strt)
    assert matches_printed(ref[0], stat) and matches_printed(ref[2], p) and ref[1] == dof
    # the vectorised module function on per-stratum counts, summed over strata
    groups = sorted(set(df.gg))
    score, var = 0, 0
    for s in (1, 2):
        sc, v = gray_score_variance(*_counts_by_group(df[df.strt == s], cause, groups))
        score, var = score + sc, var + v
    ours = gray_statistic(score, var)
    assert matches_printed(ours[0], stat) and matches_printed(ours[2], p) and ours[1] == dof
    assert ours[0] == pytest.approx(ref[0], rel=1e-12)


def test_cumulative_incidence_reproduces_cmprsk_published_estimates():
    df = r_cmprsk_data()
    with federation(df, seed=4) as fed:
        res = fed.cumulative_incidence("data", "ss", "cc")
    for cause, values in PUBLISHED_CIF.items():
        ours = res.cumulative_incidence_at_times([1, 2, 3, 4, 5], cause=cause).to_numpy()
        np.testing.assert_allclose(ours, values, rtol=0, atol=6e-8)


# -- accuracy under Policy.unrestricted() --------------------------------------------------------
def assert_equals_sksurv(res: CumulativeIncidenceResult, rows: pd.DataFrame, label: str, dur, ev):
    tt, cif, ci = cumulative_incidence_competing_risks(
        rows[ev].to_numpy(), rows[dur].to_numpy(), conf_type="log-log"
    )
    for code in range(1, len(res.causes) + 1):
        ours = res.cumulative_incidence_at_times(tt, cause=code, group=label).to_numpy()
        lo = res.confidence_interval[(label, str(code), "lower_0.95")].reindex(tt).to_numpy()
        hi = res.confidence_interval[(label, str(code), "upper_0.95")].reindex(tt).to_numpy()
        if code < cif.shape[0]:
            np.testing.assert_allclose(ours, cif[code], rtol=0, atol=1e-9)
            np.testing.assert_allclose(lo, ci[code, 0], rtol=0, atol=1e-9)
            np.testing.assert_allclose(hi, ci[code, 1], rtol=0, atol=1e-9)
        else:  # a cause with no event in this group
            assert np.all(ours == 0)
    # all-cause: scikit-survival's cum_inc[0] = 1 - S(t), interval 1 - (KM log-log interval)
    surv = res.survival_function[label].reindex(tt).to_numpy()
    np.testing.assert_allclose(1 - surv, cif[0], rtol=0, atol=1e-9)
    sci = res.survival_confidence_interval
    np.testing.assert_allclose(1 - sci[f"{label}_lower_0.95"].reindex(tt), ci[0, 0], atol=1e-9)
    np.testing.assert_allclose(1 - sci[f"{label}_upper_0.95"].reindex(tt), ci[0, 1], atol=1e-9)
    # numbers at risk at every time
    at_risk = res.at_risk[label].reindex(tt).to_numpy()
    expected = (rows[dur].to_numpy()[None, :] >= tt[:, None]).sum(axis=1)
    np.testing.assert_array_equal(at_risk, expected)


@pytest.mark.parametrize("name", list(CASES))
def test_cumulative_incidence_equals_sksurv_on_pooled_rows(name):
    loader, dur, ev, group = CASES[name]
    df = loader()
    with federation(df, seed=1) as fed:
        grouped = fed.cumulative_incidence("data", dur, ev, group=group)
        whole = fed.cumulative_incidence("data", dur, ev) if len(df) < 3000 else None
    for label in grouped.groups:
        assert_equals_sksurv(grouped, df[df[group].astype(str) == label], label, dur, ev)
    if whole is not None:
        assert whole.groups == ["all"] and whole.gray_test is None
        assert_equals_sksurv(whole, df, "all", dur, ev)
    # causes, the event of interest and the note on exact times
    assert grouped.causes == tuple(str(c) for c in sorted(set(df[ev])) if c > 0)
    assert grouped.event_of_interest == "1"
    assert "exact times" in grouped.notes[0]


@pytest.mark.parametrize("name", list(CASES))
def test_gray_test_equals_row_level_reference(name):
    loader, dur, ev, group = CASES[name]
    df = loader()
    with federation(df, seed=2) as fed:
        res = fed.cumulative_incidence("data", dur, ev, group=group)
    labels = df[group].astype(str).to_numpy()
    for cause in res.causes:
        stat, dof, p = gray_reference(df[dur].to_numpy(), df[ev].to_numpy(), labels, int(cause))
        row = res.gray_tests.loc[cause]
        assert row["test_statistic"] == pytest.approx(stat, rel=1e-8)
        assert row["degrees_of_freedom"] == dof == len(set(labels)) - 1
        assert row["p_value"] == pytest.approx(p, rel=1e-6, abs=1e-300)
    assert res.gray_test.cause == "1"
    assert res.gray_test.test_statistic == res.gray_tests.loc["1", "test_statistic"]


def test_gray_test_with_many_groups_and_a_where_filter():
    df = flchain()
    sub = df[df["sex"] == "F"]
    with federation(df, seed=3) as fed:
        res = fed.cumulative_incidence(
            "data", "futime", "cause", 2, group="flc", where="sex == 'F'"
        )
    stat, dof, p = gray_reference(
        sub.futime.to_numpy(), sub.cause.to_numpy(), sub.flc.to_numpy(), cause=2
    )
    assert dof == 9 and res.gray_test.degrees_of_freedom == 9
    assert res.gray_test.cause == "2"
    assert res.gray_test.test_statistic == pytest.approx(stat, rel=1e-8)
    assert res.gray_test.p_value == pytest.approx(p, rel=1e-6)
    for label in ("1", "10"):
        rows = sub[sub.flc == label]
        tt, cif = cumulative_incidence_competing_risks(
            rows.cause.to_numpy(), rows.futime.to_numpy()
        )
        ours = res.cumulative_incidence_at_times(tt, cause=3, group=label).to_numpy()
        np.testing.assert_allclose(ours, cif[3], atol=1e-9)


def test_aalen_johansen_counts_function_is_order_free_of_censor_only_rows():
    # rows with only censorings change nothing but the number at risk
    time = np.array([1.0, 2.0, 3.0, 4.0])
    n = np.array([10, 8, 6, 3])
    d = np.array([[1, 1], [0, 0], [2, 0], [0, 1]])
    full = aalen_johansen(time, n, d)
    drop = aalen_johansen(time[[0, 2, 3]], n[[0, 2, 3]], d[[0, 2, 3]])
    np.testing.assert_allclose(full.cumulative_incidence[[0, 2, 3]], drop.cumulative_incidence)
    np.testing.assert_allclose(full.variance[[0, 2, 3]], drop.variance, atol=1e-15)
    # S(t) + sum of the CIFs is 1 at every time
    np.testing.assert_allclose(full.survival + full.cumulative_incidence.sum(axis=1), 1.0)


# -- the demo federation ----------------------------------------------------------------------------
def test_demo_aml_relapse_vs_death_without_relapse(demo):
    res = demo.cumulative_incidence(
        "aml",
        "efs_months",
        "efs_cause",
        event_of_interest="relapse",
        group="eln_risk",
        cause_names={1: "relapse", 2: "death without relapse"},
    )
    assert res.causes == ("relapse", "death without relapse")
    assert res.event_of_interest == "relapse"
    assert res.cause_codes == {"relapse": 1, "death without relapse": 2}
    assert set(res.groups) == {"favourable", "intermediate", "adverse"}
    cif = res.cumulative_incidence
    for g in res.groups:
        total = cif[g].sum(axis=1) + res.survival_function[g]
        np.testing.assert_allclose(total, 1.0, atol=1e-12)
        assert (np.diff(cif[g].to_numpy(), axis=0) >= -1e-15).all()
        # default policy: released times on the monthly grid
        times = res.event_tables[g].index.to_numpy()
        np.testing.assert_allclose(times, np.round(times))
        assert (res.event_tables[g]["at_risk"] >= K).all()
    # relapse: favourable < adverse at five years; death without relapse highest when adverse
    at60 = {
        (g, c): float(res.cumulative_incidence_at_times(60, cause=c, group=g).iloc[0])
        for g in res.groups
        for c in res.causes
    }
    assert at60[("favourable", "relapse")] < at60[("intermediate", "relapse")]
    assert (
        at60[("adverse", "death without relapse")] > at60[("favourable", "death without relapse")]
    )
    assert res.gray_test.p_value < 1e-4 and res.gray_test.degrees_of_freedom == 2
    # pooled through secure sums: no site withheld or merged anything of its own
    assert set(res.privacy.to_frame()["rule"]) <= {""}
    assert "pooled through secure sums" in res.notes[0] and "1 month" in res.notes[0]


def test_demo_aml_unrestricted_equals_sksurv():
    tables = make_demo_tables()
    sites = {s: {"aml": t["aml"]} for s, t in tables.items()}
    rows = demo_aml()
    with fh.Federation.local(
        sites, policy=fh.Policy.unrestricted(), columns={"aml": COLUMN_TYPES["aml"]}
    ) as fed:
        res = fed.cumulative_incidence(
            "aml", "efs_months", "efs_cause", group="treatment_intensity"
        )
    for label in res.groups:
        assert_equals_sksurv(
            res, rows[rows.treatment_intensity == label], label, "efs_months", "efs_cause"
        )
    stat, _, _ = gray_reference(
        rows.efs_months.to_numpy(),
        rows.efs_cause.to_numpy(),
        rows.treatment_intensity.astype(str).to_numpy(),
        1,
    )
    assert res.gray_test.test_statistic == pytest.approx(stat, rel=1e-8)


def test_demo_efs_columns_are_coherent_with_os_and_relapse():
    for tables in make_demo_tables().values():
        aml = tables["aml"]
        cause = aml["efs_cause"]
        assert set(cause.unique()) == {0, 1, 2}
        assert (aml["efs_months"] > 0).all() and (aml["efs_months"] <= aml["os_months"]).all()
        assert ((cause == 1) == (aml["relapse"] == 1)).all()
        died = cause == 2
        assert (aml.loc[died, "os_status"] == 1).all()
        assert (aml.loc[died, "efs_months"] == aml.loc[died, "os_months"]).all()
        assert (aml.loc[cause == 0, "os_status"] == 0).all()


# -- parameters -------------------------------------------------------------------------------------
def test_event_of_interest_by_code_name_or_text_and_combined_competing_causes():
    df = cgvhd()
    with federation(df, seed=5) as fed:
        by_code = fed.cumulative_incidence("data", "ftime", "status", 2, group="dx")
        by_text = fed.cumulative_incidence("data", "ftime", "status", "2", group="dx")
        names = {1: "cgvhd", 2: "relapse", 3: "death"}
        by_name = fed.cumulative_incidence(
            "data", "ftime", "status", "relapse", group="dx", cause_names=names
        )
        combined = fed.cumulative_incidence(
            "data", "ftime", "status", 2, group="dx", combine_competing=True
        )
        with pytest.raises(fh.ParameterError, match="event_of_interest"):
            fed.cumulative_incidence("data", "ftime", "status", "nonsense")
        with pytest.raises(fh.ParameterError, match="censored"):
            fed.cumulative_incidence("data", "ftime", "status", 0)
        with pytest.raises(fh.DisclosureError, match="not among the causes"):
            fed.cumulative_incidence("data", "ftime", "status", 7)
    assert by_code.gray_test.test_statistic == by_text.gray_test.test_statistic
    assert by_name.gray_test.test_statistic == by_code.gray_test.test_statistic
    assert by_name.event_of_interest == "relapse" and by_name.causes == (
        "cgvhd",
        "relapse",
        "death",
    )
    # every other cause as one curve: the cause of interest and Gray's test do not change
    assert combined.causes == ("2", COMPETING)
    np.testing.assert_allclose(
        combined.cumulative_incidence.xs("2", axis=1, level="cause"),
        by_code.cumulative_incidence.xs("2", axis=1, level="cause"),
        atol=1e-12,
    )
    assert combined.gray_test.test_statistic == pytest.approx(
        by_code.gray_test.test_statistic, rel=1e-12
    )
    other = by_code.cumulative_incidence.xs("1", axis=1, level="cause") + (
        by_code.cumulative_incidence.xs("3", axis=1, level="cause")
    )
    np.testing.assert_allclose(
        combined.cumulative_incidence.xs(COMPETING, axis=1, level="cause"), other, atol=1e-12
    )


# -- display ----------------------------------------------------------------------------------------
def test_html_plot_and_text(demo):
    res = demo.cumulative_incidence("aml", "efs_months", "efs_cause", group="sex")
    html = res._repr_html_()
    assert "data:image/png;base64," in html and "Privacy report" in html.replace(
        "privacy", "Privacy"
    )
    assert "Gray" in html and "efs_cause" in html
    for site in demo.policies:
        assert site in html
    assert "CumulativeIncidenceResult(efs_months, efs_cause, group=sex" in repr(res)
    bundle = res._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}  # no widget outside a kernel
    axes = res.plot(stacked=False)
    assert len(axes) == 2 and axes[0].get_ylabel() == "cumulative incidence"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_in_a_kernel_the_result_is_a_widget(demo, monkeypatch):
    from fedhem_kernel.display import mimebundle
    from fedhem_kernel.display.cif_widget import CumulativeIncidenceWidget

    monkeypatch.setattr(mimebundle, "in_kernel", lambda: True)
    res = demo.cumulative_incidence("aml", "efs_months", "efs_cause", group="sex")
    bundle = res._repr_mimebundle_()
    view = bundle[mimebundle.WIDGET_MIME]
    assert view["version_major"] == 2 and view["model_id"]
    assert "data:image/png;base64" in bundle["text/html"] and bundle["text/plain"] == repr(res)
    widget = res.widget()
    assert isinstance(widget, CumulativeIncidenceWidget)
    assert widget.get_state()["_kind"] == "cif" and widget.mode == "stacked"
    assert widget.privacy["outcomes"][0]["site"] == res.privacy.outcomes[0].site


@pytest.mark.slow
def test_plain_python_never_imports_the_widget_stack():
    code = textwrap.dedent(
        """
        import sys, fedhem_kernel as fh
        fed = fh.Federation.demo()
        res = fed.cumulative_incidence("aml", "efs_months", "efs_cause", group="sex")
        bundle = res._repr_mimebundle_()
        res.plot()
        assert "application/vnd.jupyter.widget-view+json" not in bundle
        assert "ipywidgets" not in sys.modules and "anywidget" not in sys.modules
        print("ok")
        """
    )
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_widget_state_holds_only_pooled_released_counts(releases, totals):
    df = demo_aml()
    with federation(df, seed=6, policy=fh.Policy()) as fed:
        res = fed.cumulative_incidence("data", "efs_months", "efs_cause", group="eln_risk")
    state = res.widget().cif
    # every site's table left masked; what the coordinator saw is the pooled release
    assert not [r for r in releases if r.payload and "groups" in r.payload]
    released, *_ = [t for step, t in totals if step == "cif_grid"]
    levels = sorted(df["eln_risk"].astype(str).unique())
    for g in state["groups"]:
        row = levels.index(g["name"])
        n = released.totals["n"][row]
        events = released.totals["events"][row].sum(axis=0)
        leaving = events + released.totals["censored"][row]
        at_risk = n - np.concatenate(([0], np.cumsum(leaving)[:-1]))
        steps = np.round(np.asarray(g["table"]["time"])).astype(int)
        assert g["table"]["at_risk"] == at_risk[steps].tolist()
        assert all(n >= K for n in g["table"]["at_risk"])
    assert state["causes"] == ["1", "2"] and state["gray"]["df"] == 2
    assert state["title"].startswith("Cumulative incidence: efs_months / efs_cause by eln_risk")


@pytest.mark.browser
def test_widget_renders_in_a_browser(demo, tmp_path):
    res = demo.cumulative_incidence(
        "aml", "efs_months", "efs_cause", group="eln_risk", cause_names={1: "relapse", 2: "death"}
    )
    w = res.widget()
    state = {k: v for k, v in w.get_state().items() if not k.startswith("_") or k == "_kind"}
    with widget_page({"cif": state}) as (page, errors):
        root = page.locator("#cif.fedhem-cif")
        assert root.locator(".fedhem-cif-panel").count() == 3
        assert root.locator("path.fedhem-cif-area").count() == 3 * 2
        risk = [int(x) for x in root.locator("text.fedhem-km-risk").all_text_contents()]
        assert risk and all(r == 0 or r >= K for r in risk)
        legend = root.locator(".fedhem-cif-legend").inner_text()
        assert "relapse" in legend and "event of interest" in legend and "Gray's test" in legend
        assert root.locator(".fedhem-privacy tbody tr").count() == len(res.privacy.outcomes)
        box = root.locator("rect.fedhem-km-overlay").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2)
        tip = root.locator(".fedhem-km-tooltip").first
        assert tip.is_visible() and "relapse:" in tip.inner_text()
        assert "at risk" in tip.inner_text()
        page.screenshot(path=str(tmp_path / "cif_stacked.png"), full_page=True)
        # switch to curves with their 95 % bands
        root.locator("button.fedhem-cif-mode-curves").click()
        assert root.locator("path.fedhem-cif-area").count() == 0
        assert root.locator("path.fedhem-km-band").count() == 3 * 2
        assert root.locator("path.fedhem-km-curve").count() == 3 * 2
        page.screenshot(path=str(tmp_path / "cif_curves.png"), full_page=True)
        assert errors == []
