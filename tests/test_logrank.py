"""Weighted and stratified log-rank tests: equal to pooled references, and nothing small released.

Accuracy (``Policy.unrestricted()``, public data split over three sites): unstratified weighted tests
equal lifelines' ``multivariate_logrank_test(..., weightings=...)`` (and ``logrank_test`` for two
groups); stratified tests equal an independent row-level reference written here (per stratum observed
minus expected and its variance, as R's ``survdiff(Surv(t, e) ~ g + strata(s))``, summed over strata),
and each stratum's own test equals lifelines on that stratum's rows. All within 1e-8 relative.

Adversarial (default policy): every released count is 0 or >= k, a tiny stratum is refused by the
site with its reason and no values, bad parameters are refused with errors naming what is wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import public, split_rows, without_secure_sums
from lifelines.statistics import logrank_test, multivariate_logrank_test

import fedhem_kernel as fh
from fedhem_kernel.analyses.logrank.combine import event_time_weights, stratum_statistics

REL = 1e-8
K = 5

WEIGHTINGS = [
    (None, {}),
    ("wilcoxon", {}),
    ("tarone-ware", {}),
    ("peto", {}),
    ("fleming-harrington", {"p": 1.0, "q": 0.0}),
    ("fleming-harrington", {"p": 0.5, "q": 2.0}),
    ("fleming-harrington", {"p": 0.0, "q": 1.0}),
]


# -- data -----------------------------------------------------------------------------------
def labelled(name: str, columns: list[str]) -> pd.DataFrame:
    """A public dataset with ``columns`` as the text labels FedHem uses (1.0 -> '1'); rows with a
    missing label dropped (FedHem leaves them out, with a note)."""
    df = public(name).dropna(subset=columns).reset_index(drop=True)
    for c in columns:
        if pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].round().astype(int).astype(str)
        else:
            df[c] = df[c].astype(str)
    return df


def with_site_column(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    parts = split_rows(df, 3, seed)
    return pd.concat([p.assign(site=s) for s, p in parts.items()], ignore_index=True)


_FEDS: dict[tuple[str, int], fh.Federation] = {}


@pytest.fixture(scope="module")
def federation():
    """One unrestricted federation per (dataset, seed), reused by the tests of this module."""

    def get(name: str, seed: int = 0) -> fh.Federation:
        if (name, seed) not in _FEDS:
            sites = {s: {"data": p} for s, p in split_rows(public(name), 3, seed).items()}
            _FEDS[name, seed] = fh.Federation.local(sites, policy=fh.Policy.unrestricted())
        return _FEDS[name, seed]

    yield get
    for fed in _FEDS.values():
        fed.close()
    _FEDS.clear()


# -- independent row-level reference --------------------------------------------------------
def reference_stratified(
    df: pd.DataFrame,
    duration: str,
    event: str,
    group: str,
    strata: list[str] | None,
    weightings: str | None = None,
    p: float = 0.0,
    q: float = 0.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Stratified weighted log-rank from the rows: statistic, observed and expected per group.

    At each distinct event time of a stratum, from the rows themselves: n_j at risk and d_j events per
    group, weight w from the stratum's rows, U += w (d_j - n_j d / n), V += w² d (n - d) / (n - 1)
    (diag(n_j / n) - n_j n_hᵀ / n²); U and V summed over strata; statistic U' V⁻ U on the first G-1.
    """
    levels = sorted(df[group].unique())
    g = len(levels)
    u = np.zeros(g)
    v = np.zeros((g, g))
    obs = np.zeros(g)
    exp = np.zeros(g)
    parts = [df] if not strata else [part for _, part in df.groupby(strata)]
    for part in parts:
        t = part[duration].to_numpy(dtype=float)
        e = part[event].to_numpy().astype(bool)
        member = np.stack([(part[group] == lv).to_numpy() for lv in levels])  # G × rows
        s_left = 1.0  # Kaplan-Meier just before t_i
        peto = 1.0  # Peto-Peto's modified survival at t_i
        for ti in np.unique(t[e]):
            n_j = (member & (t >= ti)).sum(axis=1).astype(float)
            d_j = (member & (t == ti) & e).sum(axis=1).astype(float)
            n, d = n_j.sum(), d_j.sum()
            peto *= 1 - d / (n + 1)
            w = {
                None: 1.0,
                "wilcoxon": n,
                "tarone-ware": np.sqrt(n),
                "peto": peto,
                "fleming-harrington": s_left**p * (1 - s_left) ** q,
            }[weightings]
            u += w * (d_j - n_j * d / n)
            obs += d_j
            exp += n_j * d / n
            if n > 1:
                v += w**2 * d * (n - d) / (n - 1) * (np.diag(n_j / n) - np.outer(n_j, n_j) / n**2)
            s_left *= 1 - d / n
    stat = float(u[:-1] @ np.linalg.pinv(v[:-1, :-1]) @ u[:-1])
    return stat, obs, exp


def lifelines_test(rows, duration, event, group, weightings, kw):
    return multivariate_logrank_test(
        rows[duration], rows[group], rows[event], weightings=weightings, **kw
    )


# -- accuracy: unstratified, against lifelines ----------------------------------------------
UNSTRATIFIED = [
    ("rossi", "week", "arrest", "fin"),
    ("rossi", "week", "arrest", "race"),
    ("lung", "time", "status", "sex"),
    ("lung", "time", "status", "ph.ecog"),
    ("gbsg2", "time", "cens", "tgrade"),
    ("gbsg2", "time", "cens", "horTh"),
]


@pytest.mark.parametrize(("name", "duration", "event", "group"), UNSTRATIFIED)
def test_weighted_tests_equal_lifelines(federation, name, duration, event, group):
    df = labelled(name, [group])
    fed = federation(name)
    for weightings, kw in WEIGHTINGS:
        ref = lifelines_test(df, duration, event, group, weightings, kw)
        res = fed.logrank("data", duration, event, group, weightings=weightings, **kw)
        what = f"{weightings} {kw}"
        assert res.test_statistic == pytest.approx(ref.test_statistic, rel=REL), what
        assert res.p_value == pytest.approx(ref.p_value, rel=1e-6, abs=1e-300), what
        assert res.degrees_of_freedom == ref.degrees_of_freedom
        assert res.weightings == weightings and res.strata is None
        # lifelines' test names (which spell "Flemington-Harrington")
        assert res.test_name == ref.test_name.replace("Flemington", "Fleming"), what
        levels = sorted(df[group].unique())
        if len(levels) == 2:
            a, b = (df[df[group] == lv] for lv in levels)
            ref2 = logrank_test(
                a[duration], b[duration], a[event], b[event], weightings=weightings, **kw
            )
            assert res.test_statistic == pytest.approx(ref2.test_statistic, rel=REL), what
        # observed and expected events per group (unweighted), from the rows
        _, obs, exp = reference_stratified(df, duration, event, group, None)
        np.testing.assert_allclose(res.summary["observed"], obs, rtol=1e-12)
        np.testing.assert_allclose(res.summary["expected"], exp, rtol=1e-10)


def test_reference_agrees_with_lifelines_so_it_can_judge_the_stratified_tests():
    df = labelled("gbsg2", ["tgrade"])
    for weightings, kw in WEIGHTINGS:
        ours = reference_stratified(df, "time", "cens", "tgrade", None, weightings, **kw)[0]
        ref = lifelines_test(df, "time", "cens", "tgrade", weightings, kw)
        assert ours == pytest.approx(ref.test_statistic, rel=1e-10), weightings


# -- accuracy: stratified -------------------------------------------------------------------
STRATIFIED = [
    # dataset, duration, event, group, strata
    ("rossi", "week", "arrest", "fin", ["wexp"]),
    ("rossi", "week", "arrest", "fin", ["race"]),
    ("rossi", "week", "arrest", "fin", ["wexp", "mar"]),
    ("lung", "time", "status", "ph.ecog", ["sex"]),
    ("gbsg2", "time", "cens", "tgrade", ["horTh"]),
    ("gbsg2", "time", "cens", "horTh", ["menostat", "tgrade"]),
]


@pytest.mark.parametrize(("name", "duration", "event", "group", "strata"), STRATIFIED)
def test_stratified_tests_equal_the_pooled_reference(
    federation, name, duration, event, group, strata
):
    df = labelled(name, [group, *strata])
    fed = federation(name)
    for weightings, kw in WEIGHTINGS:
        what = f"{weightings} {kw}"
        stat, obs, exp = reference_stratified(df, duration, event, group, strata, weightings, **kw)
        arg = strata[0] if len(strata) == 1 else strata
        res = fed.logrank("data", duration, event, group, strata=arg, weightings=weightings, **kw)
        assert res.test_statistic == pytest.approx(stat, rel=REL), what
        assert res.degrees_of_freedom == df[group].nunique() - 1
        assert res.strata == tuple(strata)
        assert res.test_name.startswith("stratified_multivariate_")
        np.testing.assert_allclose(res.summary["observed"], obs, rtol=1e-12)
        np.testing.assert_allclose(res.summary["expected"], exp, rtol=1e-10)
        # per stratum: the test on that stratum's rows alone equals lifelines
        tests = res.strata_tests
        assert len(tests) == df.groupby(strata).ngroups
        for values, rows in df.groupby(strata):
            values = values if isinstance(values, tuple) else (values,)
            label = ", ".join(f"{c}={v}" for c, v in zip(strata, values, strict=True))
            ref = lifelines_test(rows, duration, event, group, weightings, kw)
            got = tests.loc[label]
            assert got["test_statistic"] == pytest.approx(ref.test_statistic, rel=REL), label
            assert got["degrees_of_freedom"] == rows[group].nunique() - 1
            expected = res.strata_summary.loc[label, "observed"]
            counts = rows.groupby(group)[event].sum()
            np.testing.assert_array_equal(expected.to_numpy(), counts.loc[expected.index])
        # the summary is the per-stratum table summed over strata
        summed = res.strata_summary.groupby(level=group)[["observed", "expected"]].sum()
        np.testing.assert_allclose(summed.loc[res.summary.index], res.summary[summed.columns])


def test_strata_site_stratifies_by_hospital(federation):
    df = with_site_column(labelled("rossi", ["fin", "wexp"]), seed=0)
    fed = federation("rossi")
    for weightings, kw in WEIGHTINGS[:5]:
        res = fed.logrank(
            "data", "week", "arrest", "fin", strata="site", weightings=weightings, **kw
        )
        stat, _, _ = reference_stratified(df, "week", "arrest", "fin", ["site"], weightings, **kw)
        assert res.test_statistic == pytest.approx(stat, rel=REL), weightings
        assert list(res.strata_tests.index) == ["site=site_a", "site=site_b", "site=site_c"]
    res = fed.logrank("data", "week", "arrest", "fin", strata=["site", "wexp"])
    stat, _, _ = reference_stratified(df, "week", "arrest", "fin", ["site", "wexp"])
    assert res.test_statistic == pytest.approx(stat, rel=REL)
    assert len(res.strata_tests) == 6


def test_stratified_with_a_where_filter(federation):
    df = labelled("rossi", ["fin", "wexp"])
    sub = df[df["age"] >= 20]
    res = federation("rossi").logrank(
        "data", "week", "arrest", "fin", strata="wexp", weightings="peto", where="age >= 20"
    )
    stat, _, _ = reference_stratified(sub, "week", "arrest", "fin", ["wexp"], "peto")
    assert res.test_statistic == pytest.approx(stat, rel=REL)


def test_stratum_statistics_match_the_unstratified_helper():
    rng = np.random.default_rng(3)
    n = rng.integers(1, 30, size=(12, 3)).astype(float)
    d = np.minimum(rng.integers(0, 3, size=(12, 3)), n).astype(float)
    w = event_time_weights(n.sum(axis=1), d.sum(axis=1), "fleming-harrington", 1.0, 1.0)
    assert w[0] == 0.0 and np.all(w >= 0)  # (1 - S(t-))^q vanishes at the first time
    z, v, _, _ = stratum_statistics(n, d, w)
    assert z.sum() == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(v.sum(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(v, v.T)


# -- display --------------------------------------------------------------------------------
def test_result_says_which_test_and_shows_observed_and_expected(federation):
    res = federation("rossi").logrank(
        "data", "week", "arrest", "fin", strata="wexp", weightings="fleming-harrington", p=1, q=0
    )
    assert res.test_name == "stratified_multivariate_Fleming-Harrington_test"
    assert res.title.startswith("stratified Fleming–Harrington (p=1, q=0) test")
    assert "weighted observed - expected" in res.summary
    html = res._repr_html_()
    assert res.test_name in html and "summed over strata" in html and "wexp=1" in html
    state = res.widget().get_state()
    assert state["title"] == res.title
    head, summary, per_stratum = state["tables"]
    assert head["rows"][0]["values"][0] == pytest.approx(res.test_statistic)
    assert [r["index"][0] for r in summary["rows"]] == ["0", "1"]
    assert [r["index"][0] for r in per_stratum["rows"]] == ["wexp=0", "wexp=1"]
    assert "stratified_multivariate_Fleming-Harrington_test" in repr(res)


# -- adversarial, default policy ------------------------------------------------------------
COUNT_KEYS = {"n", "at_risk", "events", "censored", "counts", "total"}


def released_counts(payload, key=None):
    if isinstance(payload, dict):
        for k, v in payload.items():
            yield from released_counts(v, k)
    elif isinstance(payload, list):
        for v in payload:
            yield from released_counts(v, key)
    elif key in COUNT_KEYS:
        yield from (int(x) for x in np.atleast_1d(np.asarray(payload)).ravel())


def assert_no_small_counts(releases, k=K):
    checked = 0
    for reply in releases:
        for value in released_counts(reply.payload or {}):
            checked += 1
            assert value == 0 or value >= k, f"{reply.site} released a count of {value}"
    assert checked > 0, "the spy saw no counts"


def cohort(
    seed: int, n: int, n_late: int, arm_b_early: int | None = None, n_unknown: int = 0
) -> pd.DataFrame:
    """Patients in two stages (strata) and two arms; ``n_late`` in the late stage, ``n_unknown``
    early-stage patients whose ``stage`` is missing (``grade`` is ``stage`` without missing values)."""
    rng = np.random.default_rng(seed)
    stage = np.array(["early"] * (n - n_late) + ["late"] * n_late, dtype=object)
    arm = rng.choice(["A", "B"], size=n)
    if arm_b_early is not None:  # exactly this many early-stage patients in arm B
        early = np.flatnonzero(stage == "early")
        arm[early] = "A"
        arm[early[:arm_b_early]] = "B"
    scale = np.where(stage == "late", 12.0, 40.0) * np.where(arm == "B", 1.5, 1.0)
    time = rng.exponential(scale)
    censor = rng.uniform(0, 90, n)
    grade = stage.copy()
    stage[n - n_late - n_unknown : n - n_late] = None
    return pd.DataFrame(
        {
            "stage": stage,
            "grade": grade,
            "arm": arm,
            "rare": np.where(np.arange(n) < 2, "yes", "no"),  # 2 patients per site
            "age": rng.normal(60, 10, n).round(1),
            "time": np.minimum(time, censor).round(2),
            "event": (time <= censor).astype(int),
        }
    )


@pytest.fixture
def fed():
    tables = {
        "big": {"c": cohort(0, 300, 120)},
        "mid": {"c": cohort(1, 120, 50, arm_b_early=3)},  # a group too small in one stratum
        "small": {"c": cohort(2, 44, 3, n_unknown=4)},  # a tiny stratum
    }
    columns = {
        "c": {"time": {"type": "float", "unit": "months"}, "stage": "category", "grade": "category"}
    }
    with without_secure_sums(tables, columns=columns) as f:
        yield f


def site_payload(releases, site: str, step: str = "logrank_tables") -> dict:
    payloads = [
        r.payload for r in releases if r.site == site and r.payload and "strata" in r.payload
    ]
    assert payloads, f"{site} released no log-rank tables"
    return payloads[-1]


def test_every_released_count_is_zero_or_at_least_k_with_strata(fed, releases):
    for weightings, kw in WEIGHTINGS[:5]:
        fed.logrank("c", "time", "event", "arm", strata="stage", weightings=weightings, **kw)
    fed.logrank("c", "time", "event", "arm", strata=["stage", "rare"])
    fed.logrank("c", "time", "event", "arm", strata="site")
    fed.logrank("c", "time", "event", "arm")
    assert_no_small_counts(releases)
    for reply in releases:  # and every released time is on the monthly grid
        for s in (reply.payload or {}).get("strata", []):
            for g in s["groups"]:
                if "time" in g:
                    np.testing.assert_allclose(g["time"], np.round(g["time"]))


def test_a_tiny_stratum_is_refused_by_that_site_with_its_reason_and_no_values(fed, releases):
    res = fed.logrank("c", "time", "event", "arm", strata="stage")
    small = res.privacy.outcome("small")
    assert small.status == "suppressed"
    reason = "stratum 'stage=late': fewer than 5 patients at this site"
    assert reason in small.details
    assert not any("3 patients" in d or "3 " == d[:2] for d in small.details)  # never the count
    payload = site_payload(releases, "small")
    assert [s["stratum"] for s in payload["strata"]] == ["stage=early"]
    assert payload["withheld"] == ["stage=late"]  # a name only, no counts
    assert any("small: stratum 'stage=late' left out" in n for n in res.privacy.notes)
    # the late stratum is tested on the two other sites only: their patients, not small's
    late = res.strata_summary.loc["stage=late"]
    events = [
        g["events"].sum()
        for site in ("big", "mid")
        for s in site_payload(releases, site)["strata"]
        if s["stratum"] == "stage=late"
        for g in s["groups"]
    ]
    assert len(events) == 4
    assert late["observed"].sum() == sum(events)


def released_patients(payload: dict) -> int:
    """Patients in a site's released log-rank tables (at risk at each group's first step)."""
    return sum(
        int(g["at_risk"][0]) for s in payload["strata"] for g in s["groups"] if "at_risk" in g
    )


def test_patients_left_out_by_strata_cannot_be_counted_by_difference(fed, releases):
    # small: 'grade=late' has 3 patients: a stratified release without them, compared with the
    # unstratified one, would count them; through the release ledger they join the larger stratum
    # (a stratum is a row set of the ledger), and whatever the strata, the patients a site
    # releases differ from its unstratified release by 0 or at least k
    unstratified = fed.logrank("c", "time", "event", "arm")
    whole = {s: released_patients(site_payload(releases, s)) for s in ("big", "mid", "small")}
    res = fed.logrank("c", "time", "event", "arm", strata="grade")
    assert [s["stratum"] for s in site_payload(releases, "small")["strata"]] == ["grade=early"]
    assert res.test_statistic != unstratified.test_statistic  # stratified elsewhere
    for strata in ("grade", "stage", ["stage", "rare"], "rare"):
        fed.logrank("c", "time", "event", "arm", strata=strata)
        for site, n in whole.items():
            diff = n - released_patients(site_payload(releases, site))
            assert diff == 0 or diff >= K, (strata, site, diff)
    assert_no_small_counts(releases)


def test_a_group_too_small_in_a_stratum_joins_the_larger_group(fed, releases):
    # mid: group 'B' has 3 patients in stage=early: as a row set of the ledger they join group
    # 'A' there, so no group of 1..k-1 is ever released and nothing can be differenced
    fed.logrank("c", "time", "event", "arm", strata="stage")
    payload = site_payload(releases, "mid")
    early = next(s for s in payload["strata"] if s["stratum"] == "stage=early")
    b = next(g for g in early["groups"] if g["group"] == "B")
    assert b.get("empty") or int(b["at_risk"][0]) >= K
    fed.logrank("c", "time", "event", "arm", where="stage == 'early'")
    cohort = site_payload(releases, "mid")["strata"][0]
    b = next(g for g in cohort["groups"] if g["group"] == "B")
    assert b.get("empty") or int(b["at_risk"][0]) >= K
    assert_no_small_counts(releases)


def test_a_stratum_column_that_isolates_a_few_patients_never_names_them(fed, releases):
    # 'rare' is 'yes' for 2 patients per site: the level is never named; stratifying on it leaves
    # those 2 out together with others (k in all), never exactly them
    unstratified = fed.logrank("c", "time", "event", "arm")
    whole = {s: released_patients(site_payload(releases, s)) for s in ("big", "mid", "small")}
    res = fed.logrank("c", "time", "event", "arm", strata="rare")
    assert res.test_statistic != unstratified.test_statistic
    for site, n in whole.items():
        diff = n - released_patients(site_payload(releases, site))
        assert diff == 0 or diff >= K, (site, diff)
    for reply in releases:
        assert "yes" not in repr(reply.payload)
        assert "yes" not in repr(reply.suppressions)


def test_a_filter_down_to_a_few_patients_has_no_patients(fed):
    with pytest.raises(fh.DisclosureError) as info:
        fed.logrank(
            "c", "time", "event", "arm", strata="stage", where="age > 82"
        )  # 4, 0 and 1 patients: each joins the rest of its site's rows
    assert "ledger" in info.value.rule
    assert "no patients in this cohort" in str(info.value)


def test_default_policy_says_times_were_coarsened(fed):
    res = fed.logrank("c", "time", "event", "arm", strata="stage", weightings="wilcoxon")
    assert any("times were coarsened" in n for n in res.privacy.notes)
    assert any("times coarsened up to a grid of 1 month" in n for n in res.privacy.notes)


def test_unrestricted_exact_times_have_no_coarsening_note(federation):
    res = federation("rossi").logrank("data", "week", "arrest", "fin", strata="wexp")
    assert not any("coarsened" in n for n in res.privacy.notes)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"weightings": "gehan"}, "'weightings' must be one of"),
        ({"weightings": "Wilcoxon"}, "'weightings' must be one of"),
        ({"weightings": "fleming-harrington"}, "needs 'p'"),
        ({"weightings": "fleming-harrington", "p": 1}, "needs 'q'"),
        ({"weightings": "fleming-harrington", "p": -1, "q": 0}, "needs 'p'"),
        ({"weightings": "peto", "p": 1, "q": 1}, "applies only to"),
        ({"strata": "arm"}, "cannot be both a stratum and"),
        ({"strata": []}, "'strata' must be"),
        ({"strata": ["stage", "stage"]}, "names a column twice"),
        ({"strata": [3]}, "'strata' must be"),
    ],
)
def test_bad_parameters_are_refused_before_any_site_is_asked(fed, releases, kwargs, text):
    with pytest.raises(fh.ParameterError, match=text):
        fed.logrank("c", "time", "event", "arm", **kwargs)
    assert releases == []


def test_bad_strata_columns_name_site_dataset_and_column(fed):
    with pytest.raises(fh.SchemaError) as info:
        fed.logrank("c", "time", "event", "arm", strata="nonexistent")
    assert (info.value.dataset, info.value.column) == ("c", "nonexistent")
    assert info.value.site in ("big", "mid", "small")
    with pytest.raises(fh.SchemaError) as info:
        fed.logrank("c", "time", "event", "arm", strata=["stage", "age"])
    assert (info.value.dataset, info.value.column) == ("c", "age")
    assert "continuous" in info.value.reason
