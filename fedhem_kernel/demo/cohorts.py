"""Seeded synthetic cohorts for the demo federation (four hospitals, four diseases).

Every table is generated from a ``numpy.random.Generator`` seeded by SHA-256 of
``(site, seed, dataset)``, so ``make_site_tables(site, seed)`` is bit-for-bit reproducible on
every platform and Python version (Python's ``hash()`` is salted per process and is not used).
The rows are invented: no real patient is behind any of them.

Sites differ a little (case mix, treatment policy, follow-up, loss to follow-up and a small
hazard-ratio "site effect"), so the four hospitals are not copies of one another. Sizes of the
MDS/MM/SCD tables are fixed multiples of the site's AML size (at least 100 rows each).

Calibration targets
-------------------
The figures below are quoted from memory of the cited papers; they are plausibility targets for
a demo, not a reproduction of any study. Survival is simulated with Weibull proportional-hazards
models (AML: a mixture-cure model, since AML curves plateau) with covariate effects for age,
treatment and genetics, then censored administratively (staggered entry, site-specific maximum
follow-up of 6-10 years, giving long Kaplan-Meier tails with few patients at risk) and by a small
constant-rate loss to follow-up.

AML, ELN 2017 genetic risk (Döhner et al., Blood 2017;129:424-447; validated by Herold et al.,
Leukemia 2020;34:3161-3172, 1116 intensively treated patients aged 18-86):

* distribution roughly 30 % favourable / 35 % intermediate / 35 % adverse (adverse rises with
  age: about half of patients >= 60 y are adverse in Herold et al.);
* Herold et al. 5-year OS, age < 60 y: favourable 64 %, intermediate 42 %, adverse 20 %;
  age >= 60 y: 37 %, 16 %, 6 %;
* targets for the pooled demo cohort (all ages, intensive and non-intensive treatment): median OS
  favourable not reached / > 5 y with 5-year OS about 55-65 %, intermediate about 18-24 months,
  adverse about 8-10 months; older age and non-intensive treatment shorten survival (pooled
  over seeds the demo gives medians of about 100 / 21 / 8.7 months and a favourable 5-year OS of
  about 57 %; split by age it matches Herold's adverse and >= 60 y figures, while its < 60 y
  favourable and intermediate groups are 10-20 points more optimistic);
* molecular coherence with ELN 2017: NPM1 mutated about 30 % overall (favourable when without
  FLT3-ITD or with FLT3-ITD low allelic ratio, intermediate with FLT3-ITD high), FLT3-ITD about
  25 %, TP53 about 8-10 % and almost only in the adverse group (TP53 in a favourable patient is
  a deliberately rare combination: 0-3 patients per site), WBC log-normal with median about
  15 x 10^9/L and higher in NPM1/FLT3-ITD mutated disease.

MDS, IPSS-R (Greenberg et al., Blood 2012;120:2454-2465; 7012 untreated patients, median age
71 y): distribution very low 19 %, low 38 %, intermediate 20 %, high 13 %, very high 10 %;
median OS very low 8.8 y, low 5.3 y, intermediate 3.0 y, high 1.6 y, very high 0.8 y
(105.6 / 63.6 / 36.0 / 19.2 / 9.6 months). SF3B1 mutations (about 20-25 % of MDS, Papaemmanuil et
al., Blood 2013) are enriched in lower-risk disease and carry a slightly better prognosis.

Multiple myeloma:

* ISS (Greipp et al., J Clin Oncol 2005;23:3412-3420): median OS 62 / 44 / 29 months for
  stages I / II / III, in patients treated mostly before novel agents;
* R-ISS (Palumbo et al., J Clin Oncol 2015;33:2863-2869; 3060 patients from 11 trials, 95 %
  with novel agents): stages I / II / III in 28 / 62 / 10 %, 5-year OS 82 / 62 / 40 %, 5-year PFS
  55 / 36 / 24 %, median PFS 66 / 42 / 29 months; ISS distribution in that cohort about
  38 / 38 / 24 %, high-risk FISH [del(17p), t(4;14), t(14;16)] about 20-25 %, high LDH about
  10-13 %.

The two eras cannot both hold in one cohort (R-ISS I is a subset of ISS I, and 82 % alive at
5 years is incompatible with an ISS I median of 62 months), so the demo myeloma cohort is a
modern one calibrated to Palumbo et al.; ISS is kept strictly ordered but its medians are
longer than Greipp's historical figures.

Sickle cell disease (European paediatric and adult centres, ages 2-60):

* first stroke (Ohene-Frempong et al., Blood 1998;91:288-294, Cooperative Study of Sickle Cell
  Disease): in HbSS about 11 % by age 20, 15 % by 30 and 24 % by 45; incidence per 100
  patient-years in HbSS 0.13 (< 2 y), 1.02 (2-5 y), 0.79 (6-9 y), 0.41 (10-19 y); much lower in
  HbSC and HbSbeta+; higher HbF is protective (here HR about 0.95 per 1 % HbF);
* painful crises (Platt et al., N Engl J Med 1991;325:11-16): about 0.8 episodes per patient-year
  in HbSS, 1.0 in HbSbeta0, 0.4 in HbSC and HbSbeta+, very skewed (a third of patients have
  none), fewer with higher HbF;
* HbF median about 5-8 % in HbSS/HbSbeta0, about 1-2 % in HbSC; microalbuminuria rises with age
  (roughly 10-15 % of children and a third to half of adults with HbSS/HbSbeta0).

Properties kept on purpose for the privacy layer: rare combinations (TP53 in ELN favourable,
very-high-risk MDS with SF3B1, strokes in HbSbeta+), long survival tails with few patients at
risk, and about 2 % missing values in ``aml.wbc`` and ``scd.hbf_pct`` (at least one per site).
Survival times, statuses and the risk-group columns are never missing.

Competing risks: ``aml.efs_months`` / ``aml.efs_cause`` is event-free survival with the cause of the
first event, 1 = relapse (at the relapse time), 2 = death without relapse, 0 = censored. Both are
derived from the simulated relapse and death times without further random draws, so every other
column is the same as before they were added.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["COLUMN_TYPES", "DEMO_SITES", "make_demo_tables", "make_site_tables"]

DEMO_SITES: dict[str, int] = {
    "karolinska": 900,
    "charite": 600,
    "hopital_st_louis": 350,
    "policlinico_bari": 150,
}

_MONTHS = {"unit": "months"}

#: Public ranges a data steward would declare for the numbers (DP mode clips values to them).
_AGE = {"bounds": [0, 100]}
_FLAG = {"bounds": [0, 1], "levels": [0, 1]}

COLUMN_TYPES: dict[str, dict[str, dict[str, object]]] = {
    "aml": {
        "age": {"type": "float", **_AGE},
        "sex": {"type": "category"},
        "eln_risk": {"type": "category"},
        "npm1": {"type": "int", **_FLAG},
        "flt3_itd": {"type": "int", **_FLAG},
        "tp53": {"type": "int", **_FLAG},
        "wbc": {"type": "float", "bounds": [0, 150]},
        "treatment_intensity": {"type": "category"},
        "os_months": {"type": "float", **_MONTHS},
        "os_status": {"type": "int", **_FLAG},
        "relapse": {"type": "int", **_FLAG},
        "efs_months": {"type": "float", **_MONTHS},
        "efs_cause": {"type": "int", "levels": [0, 1, 2]},  # censored, relapse, death
    },
    "mds": {
        "age": {"type": "float", **_AGE},
        "sex": {"type": "category"},
        "ipss_r": {"type": "category"},
        "bm_blasts_pct": {"type": "float", "bounds": [0, 100]},
        "sf3b1": {"type": "int", **_FLAG},
        "os_months": {"type": "float", **_MONTHS},
        "os_status": {"type": "int", **_FLAG},
    },
    "mm": {
        "age": {"type": "float", **_AGE},
        "sex": {"type": "category"},
        "iss": {"type": "category"},
        "r_iss": {"type": "category"},
        "pfs_months": {"type": "float", **_MONTHS},
        "pfs_status": {"type": "int", **_FLAG},
        "os_months": {"type": "float", **_MONTHS},
        "os_status": {"type": "int", **_FLAG},
    },
    "scd": {
        "age": {"type": "float", **_AGE},
        "sex": {"type": "category"},
        "genotype": {"type": "category"},
        "hbf_pct": {"type": "float", "bounds": [0, 40]},
        "crp_mg_l": {"type": "float", "bounds": [0, 100]},
        "microalbuminuria": {"type": "int", **_FLAG},
        "crises_per_year": {"type": "float", "bounds": [0, 20]},
        "stroke": {"type": "int", **_FLAG},
    },
}

# Levels of the category columns, in their natural (risk) order.
_SEX = ("F", "M")
_ELN = ("favourable", "intermediate", "adverse")
_INTENSITY = ("intensive", "non-intensive")
_IPSS_R = ("very_low", "low", "intermediate", "high", "very_high")
_STAGES = ("I", "II", "III")
_GENOTYPES = ("HbSS", "HbSC", "HbSbeta0", "HbSbeta+")
_LEVELS: dict[str, dict[str, tuple[str, ...]]] = {
    "aml": {"sex": _SEX, "eln_risk": _ELN, "treatment_intensity": _INTENSITY},
    "mds": {"sex": _SEX, "ipss_r": _IPSS_R},
    "mm": {"sex": _SEX, "iss": _STAGES, "r_iss": _STAGES},
    "scd": {"sex": _SEX, "genotype": _GENOTYPES},
}

# the levels a data steward would declare (DP mode names only these)
for _ds, _columns in _LEVELS.items():
    for _col, _names in _columns.items():
        COLUMN_TYPES[_ds][_col]["levels"] = list(_names)

_LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class _SiteProfile:
    """How one demo hospital differs from the others."""

    prefix: str  # short code, used in seeds' domain separation
    age_shift: float  # years added to the adult age distributions
    adverse_tilt: float  # log-odds shift towards adverse AML / higher-risk MDS, MM (referrals)
    intensive_shift: float  # log-odds shift of receiving intensive AML treatment
    hazard_ratio: float  # small site effect on all death/progression hazards
    max_follow_up: float  # months between the first diagnosis and the data cut
    loss_rate: float  # loss to follow-up, per year
    size_factors: tuple[float, float, float]  # MDS, MM, SCD rows per AML row
    paediatric_share: float  # share of SCD patients younger than 18
    genotype_weights: tuple[float, float, float, float]  # HbSS, HbSC, HbSbeta0, HbSbeta+


_PROFILES: dict[str, _SiteProfile] = {
    "karolinska": _SiteProfile(
        prefix="KAR",
        age_shift=1.5,
        adverse_tilt=0.0,
        intensive_shift=0.5,
        hazard_ratio=0.92,
        max_follow_up=120.0,
        loss_rate=0.01,
        size_factors=(0.95, 1.05, 0.30),
        paediatric_share=0.55,
        genotype_weights=(0.62, 0.20, 0.10, 0.08),
    ),
    "charite": _SiteProfile(
        prefix="CHA",
        age_shift=0.0,
        adverse_tilt=0.05,
        intensive_shift=0.0,
        hazard_ratio=1.0,
        max_follow_up=96.0,
        loss_rate=0.03,
        size_factors=(0.85, 0.95, 0.40),
        paediatric_share=0.45,
        genotype_weights=(0.66, 0.18, 0.09, 0.07),
    ),
    "hopital_st_louis": _SiteProfile(
        prefix="SLS",
        age_shift=-3.0,
        adverse_tilt=0.15,
        intensive_shift=0.3,
        hazard_ratio=0.97,
        max_follow_up=84.0,
        loss_rate=0.04,
        size_factors=(1.10, 0.80, 0.95),
        paediatric_share=0.35,
        genotype_weights=(0.70, 0.18, 0.07, 0.05),
    ),
    "policlinico_bari": _SiteProfile(
        prefix="BAR",
        age_shift=1.0,
        adverse_tilt=-0.05,
        intensive_shift=-0.3,
        hazard_ratio=1.12,
        max_follow_up=72.0,
        loss_rate=0.05,
        size_factors=(1.00, 1.00, 0.75),
        paediatric_share=0.40,
        genotype_weights=(0.45, 0.10, 0.25, 0.20),
    ),
}

_MIN_ROWS = 100


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _rng(site: str, seed: int, dataset: str) -> np.random.Generator:
    """A generator seeded by SHA-256 of (site, seed, dataset): stable across runs and platforms."""
    digest = hashlib.sha256(f"fedhem-demo|{site}|{int(seed)}|{dataset}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _profile(site: str) -> _SiteProfile:
    try:
        return _PROFILES[site]
    except KeyError:
        known = ", ".join(DEMO_SITES)
        raise ValueError(f"unknown demo site {site!r} (known: {known})") from None


def _sizes(site: str) -> dict[str, int]:
    n_aml = DEMO_SITES[site]
    mds, mm, scd = _profile(site).size_factors
    return {
        "aml": n_aml,
        "mds": max(_MIN_ROWS, round(n_aml * mds)),
        "mm": max(_MIN_ROWS, round(n_aml * mm)),
        "scd": max(_MIN_ROWS, round(n_aml * scd)),
    }


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _truncated_normal(
    rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float, n: int
) -> np.ndarray:
    """Normal(mean, sd) restricted to [lo, hi] by resampling (no heaping at the bounds)."""
    out = rng.normal(mean, sd, n)
    bad = (out < lo) | (out > hi)
    while bad.any():
        out[bad] = rng.normal(mean, sd, int(bad.sum()))
        bad = (out < lo) | (out > hi)
    return out


def _weibull_ph(
    rng: np.random.Generator,
    median: np.ndarray | float,
    shape: np.ndarray | float,
    lp: np.ndarray,
) -> np.ndarray:
    """Event times with S(t) = exp(-ln2 (t / median)^shape exp(lp)) (median at lp = 0)."""
    e = rng.standard_exponential(lp.shape[0])
    return np.asarray(median) * (e * np.exp(-lp) / _LN2) ** (1.0 / shape)


def _censoring(rng: np.random.Generator, profile: _SiteProfile, n: int) -> np.ndarray:
    """Potential follow-up: staggered entry up to the data cut, plus loss to follow-up."""
    administrative = rng.uniform(3.0, profile.max_follow_up, n)
    lost = rng.exponential(12.0 / profile.loss_rate, n)
    return np.minimum(administrative, lost)


def _observe(event: np.ndarray, censor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observed time (months, 2 decimals, > 0) and status (1 = event, 0 = censored)."""
    status = (event <= censor).astype(np.int64)
    time = np.maximum(np.round(np.minimum(event, censor), 2), 0.01)
    return time, status


def _sex(rng: np.random.Generator, n: int, p_male: float) -> np.ndarray:
    return np.where(rng.random(n) < p_male, "M", "F")


def _choice(rng: np.random.Generator, probs: np.ndarray, levels: tuple[str, ...]) -> np.ndarray:
    """One level per row, row i drawn with probabilities probs[i] (shape n x len(levels))."""
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    idx = (rng.random(probs.shape[0])[:, None] > cum).sum(axis=1)
    return np.asarray(levels, dtype=object)[np.minimum(idx, len(levels) - 1)]


def _blank_some(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    """Set round(share * n) values (at least one) to NaN."""
    out = values.astype(float).copy()
    k = max(1, round(share * out.shape[0]))
    out[rng.choice(out.shape[0], size=k, replace=False)] = np.nan
    return out


def _frame(dataset: str, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Assemble a table with the dtypes declared in COLUMN_TYPES (categories with all levels)."""
    types = COLUMN_TYPES[dataset]
    if list(columns) != list(types):  # pragma: no cover - guards edits of this module
        raise RuntimeError(f"{dataset}: columns {list(columns)} != declared {list(types)}")
    data: dict[str, pd.Series | np.ndarray] = {}
    for name, values in columns.items():
        kind = types[name]["type"]
        if kind == "category":
            data[name] = pd.Categorical(values, categories=list(_LEVELS[dataset][name]))
        elif kind == "int":
            data[name] = np.asarray(values, dtype=np.int64)
        elif kind == "bool":
            data[name] = np.asarray(values, dtype=bool)
        else:
            data[name] = np.asarray(values, dtype=np.float64)
    return pd.DataFrame(data)


# --------------------------------------------------------------------------------------------
# AML
# --------------------------------------------------------------------------------------------

# Mixture-cure model, per ELN group: log-odds of cure under intensive treatment at age 55,
# and median survival (months) of the non-cured at age 65 with intensive treatment.
_AML_CURE_LOGIT = {"favourable": 1.40, "intermediate": -0.05, "adverse": -1.15}
_AML_MEDIAN = {"favourable": 24.0, "intermediate": 18.0, "adverse": 12.0}
_AML_SHAPE = 1.05


def _make_aml(site: str, seed: int, n: int) -> pd.DataFrame:
    p = _profile(site)
    rng = _rng(site, seed, "aml")
    age = np.round(_truncated_normal(rng, 68.0 + p.age_shift, 14.0, 18.0, 90.0, n), 1)
    sex = _sex(rng, n, 0.55)

    # ELN 2017 risk: adverse more common with age (log-odds vs favourable).
    a = (age - 67.0) / 10.0
    logits = np.column_stack(
        [
            np.zeros(n),
            0.15 + 0.10 * a,
            0.18 + 0.35 * a + p.adverse_tilt,
        ]
    )
    eln = _choice(rng, np.exp(logits), _ELN)
    fav, inter, adv = (eln == g for g in _ELN)

    # Mutations coherent with the ELN group.
    u = rng.random((4, n))
    npm1 = np.where(fav, u[0] < 0.55, np.where(inter, u[0] < 0.30, u[0] < 0.04))
    flt3_p = np.select(
        [fav & npm1, fav, inter & npm1, inter, adv & npm1, adv],
        [0.15, 0.0, 0.60, 0.25, 0.20, 0.28],
    )
    flt3 = u[1] < flt3_p
    tp53_p = np.select([fav, inter, adv & flt3, adv], [0.006, 0.015, 0.05, 0.25])
    tp53 = u[2] < tp53_p

    # WBC (x10^9/L): log-normal, proliferative in NPM1 / FLT3-ITD disease, low in TP53.
    log_wbc = np.log(11.0) + 0.55 * npm1 + 0.75 * flt3 - 0.35 * tp53 + rng.normal(0.0, 1.15, n)
    wbc = np.round(np.clip(np.exp(log_wbc), 0.3, 450.0), 1)

    # Treatment: the old and frail (and TP53/adverse) more often non-intensive.
    intensive = u[3] < _expit(
        0.25 - 0.18 * (age - 70.0) - 0.35 * adv - 0.5 * tp53 + p.intensive_shift
    )
    intensity = np.where(intensive, "intensive", "non-intensive")

    # Survival: cure fraction, Weibull for the non-cured, background mortality for the cured.
    cure_logit = (
        np.select([fav, inter, adv], [_AML_CURE_LOGIT[g] for g in _ELN])
        - 0.035 * (age - 55.0)
        - 2.5 * ~intensive
        - 2.5 * tp53
        - 0.5 * (inter & flt3)
    )
    cured = rng.random(n) < _expit(cure_logit)
    median = np.select([fav, inter, adv], [_AML_MEDIAN[g] for g in _ELN])
    lp = 0.02 * (age - 65.0) + 0.4 * ~intensive + 0.45 * tp53 + 0.15 * flt3 + np.log(p.hazard_ratio)
    t_disease = _weibull_ph(rng, median, _AML_SHAPE, lp)
    background_rate = 0.0008 * np.exp(0.095 * (age - 30.0)) / 12.0  # per month
    t_background = rng.exponential(1.0 / background_rate)
    t_death = np.where(cured, t_background, np.minimum(t_disease, t_background))
    censor = _censoring(rng, p, n)
    os_months, os_status = _observe(t_death, censor)

    # Relapse after complete remission: most non-cured who reach CR, a few salvaged "cured".
    cr_p = np.select([fav, inter, adv], [0.90, 0.75, 0.55]) * np.where(intensive, 1.0, 0.5)
    cr_p = np.where(tp53, cr_p * 0.6, cr_p)
    in_cr = rng.random(n) < cr_p
    t_relapse = np.where(cured, rng.uniform(6.0, 30.0, n), t_death * rng.uniform(0.35, 0.85, n))
    relapsing = np.where(cured, rng.random(n) < 0.08, in_cr)
    relapse = relapsing & (t_relapse <= censor) & (t_relapse < t_death)
    wbc_observed = _blank_some(rng, wbc, 0.02)  # the last draw: columns above never change

    # Event-free survival with competing causes, derived without further random draws:
    # 1 = relapse (at the relapse time), 2 = death without relapse, 0 = censored (alive, no relapse).
    efs_months = np.where(relapse, np.maximum(np.round(t_relapse, 2), 0.01), os_months)
    efs_cause = np.where(relapse, 1, np.where(os_status == 1, 2, 0))

    return _frame(
        "aml",
        {
            "age": age,
            "sex": sex,
            "eln_risk": eln,
            "npm1": npm1,
            "flt3_itd": flt3,
            "tp53": tp53,
            "wbc": wbc_observed,
            "treatment_intensity": intensity,
            "os_months": os_months,
            "os_status": os_status,
            "relapse": relapse,
            "efs_months": np.minimum(efs_months, os_months),
            "efs_cause": efs_cause,
        },
    )


# --------------------------------------------------------------------------------------------
# MDS
# --------------------------------------------------------------------------------------------

_MDS_PROBS = (0.19, 0.38, 0.20, 0.13, 0.10)
# Median OS (months) at age 71, before the spread added by covariates (tuned so that the
# pooled Kaplan-Meier medians land near Greenberg's 105.6 / 63.6 / 36.0 / 19.2 / 9.6 months).
_MDS_MEDIAN = (104.0, 67.0, 39.0, 19.5, 10.6)
_MDS_SHAPE = (1.15, 1.1, 1.05, 1.0, 1.0)
_MDS_SF3B1 = (0.38, 0.33, 0.15, 0.05, 0.02)
# Marrow blasts (%): gamma mean and upper bound per IPSS-R group.
_MDS_BLASTS = ((1.3, 4.9), (2.2, 9.9), (4.5, 19.0), (9.0, 19.5), (13.0, 19.9))


def _make_mds(site: str, seed: int, n: int) -> pd.DataFrame:
    p = _profile(site)
    rng = _rng(site, seed, "mds")
    age = np.round(_truncated_normal(rng, 72.5 + p.age_shift, 10.5, 25.0, 95.0, n), 1)
    sex = _sex(rng, n, 0.60)

    tilt = p.adverse_tilt * np.arange(5)
    probs = np.tile(np.log(_MDS_PROBS) + tilt, (n, 1))
    group = _choice(rng, np.exp(probs), _IPSS_R)
    gi = np.array([_IPSS_R.index(g) for g in group])

    mean_blasts = np.take([b[0] for b in _MDS_BLASTS], gi)
    max_blasts = np.take([b[1] for b in _MDS_BLASTS], gi)
    blasts = np.minimum(rng.gamma(2.0, mean_blasts / 2.0), max_blasts)
    blasts = np.round(blasts, 1)
    sf3b1 = rng.random(n) < np.take(_MDS_SF3B1, gi)

    lp = 0.035 * (age - 71.0) - 0.2 * sf3b1 + 0.15 * (sex == "M") + np.log(p.hazard_ratio)
    t_death = _weibull_ph(rng, np.take(_MDS_MEDIAN, gi), np.take(_MDS_SHAPE, gi), lp)
    os_months, os_status = _observe(t_death, _censoring(rng, p, n))

    return _frame(
        "mds",
        {
            "age": age,
            "sex": sex,
            "ipss_r": group,
            "bm_blasts_pct": blasts,
            "sf3b1": sf3b1,
            "os_months": os_months,
            "os_status": os_status,
        },
    )


# --------------------------------------------------------------------------------------------
# Multiple myeloma
# --------------------------------------------------------------------------------------------

_ISS_PROBS = (0.38, 0.38, 0.24)
_MM_HIGH_RISK_CA = (0.17, 0.21, 0.27)  # del(17p) / t(4;14) / t(14;16), by ISS stage
_MM_HIGH_LDH = (0.08, 0.11, 0.18)
# Median PFS (months) by R-ISS at age 65; median post-progression survival by R-ISS.
_MM_PFS_MEDIAN = (68.0, 46.0, 31.0)
_MM_PPS_MEDIAN = (50.0, 30.0, 13.0)


def _make_mm(site: str, seed: int, n: int) -> pd.DataFrame:
    p = _profile(site)
    rng = _rng(site, seed, "mm")
    age = np.round(_truncated_normal(rng, 66.0 + p.age_shift, 10.0, 30.0, 92.0, n), 1)
    sex = _sex(rng, n, 0.56)

    tilt = p.adverse_tilt * np.arange(3)
    iss = _choice(rng, np.exp(np.tile(np.log(_ISS_PROBS) + tilt, (n, 1))), _STAGES)
    si = np.array([_STAGES.index(s) for s in iss])
    ca = rng.random(n) < np.take(_MM_HIGH_RISK_CA, si)
    ldh = rng.random(n) < np.take(_MM_HIGH_LDH, si)
    ri = np.where((si == 0) & ~ca & ~ldh, 0, np.where((si == 2) & (ca | ldh), 2, 1))
    r_iss = np.asarray(_STAGES, dtype=object)[ri]

    # Within R-ISS II the ISS stage, FISH and LDH still matter a little.
    lp = (
        0.025 * (age - 65.0)
        + np.where(ri == 1, 0.3 * (si - 1) + 0.2 * ca + 0.15 * ldh, 0.0)
        + np.log(p.hazard_ratio)
    )
    t_prog = _weibull_ph(rng, np.take(_MM_PFS_MEDIAN, ri), 1.1, lp)
    t_pps = _weibull_ph(rng, np.take(_MM_PPS_MEDIAN, ri), 1.0, lp)
    death_rate = 0.004 * np.exp(0.08 * (age - 65.0)) / 12.0  # deaths before progression
    t_other = rng.exponential(1.0 / death_rate)
    t_death = np.minimum(t_prog + t_pps, t_other)
    t_pfs = np.minimum(t_prog, t_death)
    censor = _censoring(rng, p, n)
    pfs_months, pfs_status = _observe(t_pfs, censor)
    os_months, os_status = _observe(t_death, censor)

    return _frame(
        "mm",
        {
            "age": age,
            "sex": sex,
            "iss": iss,
            "r_iss": r_iss,
            "pfs_months": pfs_months,
            "pfs_status": pfs_status,
            "os_months": os_months,
            "os_status": os_status,
        },
    )


# --------------------------------------------------------------------------------------------
# Sickle cell disease
# --------------------------------------------------------------------------------------------

# First-stroke hazard per year in HbSS by age band (Ohene-Frempong et al. 1998): gives a
# cumulative risk of about 11 % by 20, 15 % by 30 and 24 % by 45 years.
_STROKE_AGES = np.array([0.0, 2.0, 6.0, 10.0, 20.0, 30.0, 45.0, 60.0])
_STROKE_RATES = np.array([0.0013, 0.0102, 0.0079, 0.0041, 0.0046, 0.0075, 0.0090])
_STROKE_CUM = np.concatenate([[0.0], np.cumsum(_STROKE_RATES * np.diff(_STROKE_AGES))])
_SCD_STROKE_RR = {"HbSS": 1.0, "HbSC": 0.25, "HbSbeta0": 0.8, "HbSbeta+": 0.15}
_SCD_HBF = {"HbSS": (6.0, 0.65), "HbSC": (1.5, 0.6), "HbSbeta0": (7.0, 0.6), "HbSbeta+": (3.5, 0.6)}
_SCD_CRISES = {"HbSS": 0.8, "HbSC": 0.4, "HbSbeta0": 1.0, "HbSbeta+": 0.4}
_SCD_CRP = {"HbSS": 5.0, "HbSC": 2.5, "HbSbeta0": 5.0, "HbSbeta+": 3.0}
_SCD_SEVERE = {"HbSS": True, "HbSC": False, "HbSbeta0": True, "HbSbeta+": False}


def _make_scd(site: str, seed: int, n: int) -> pd.DataFrame:
    p = _profile(site)
    rng = _rng(site, seed, "scd")
    child = rng.random(n) < p.paediatric_share
    adult_age = np.minimum(18.0 + rng.gamma(2.0, 6.5, n), 60.0)
    age = np.round(np.where(child, rng.uniform(2.0, 18.0, n), adult_age), 1)
    sex = _sex(rng, n, 0.50)

    weights = np.tile(np.asarray(p.genotype_weights), (n, 1))
    genotype = _choice(rng, weights, _GENOTYPES)

    def per_genotype(table: dict[str, float]) -> np.ndarray:
        return np.array([table[g] for g in genotype], dtype=float)

    hbf_median = np.array([_SCD_HBF[g][0] for g in genotype])
    hbf_sd = np.array([_SCD_HBF[g][1] for g in genotype])
    young = np.where(age < 6.0, 1.6, 1.0)  # HbF still falling in early childhood
    hbf = np.clip(hbf_median * young * np.exp(rng.normal(0.0, 1.0, n) * hbf_sd), 0.3, 35.0)
    hbf = np.round(hbf, 1)

    # Painful crises: gamma-Poisson rate observed over 1-5 years of follow-up at the centre.
    adult_factor = np.where(age >= 20.0, 1.3, np.where(age < 10.0, 0.7, 1.0))
    mean_rate = per_genotype(_SCD_CRISES) * adult_factor * np.exp(-0.04 * (hbf - 6.0))
    rate = rng.gamma(0.8, mean_rate / 0.8)
    years = np.minimum(rng.uniform(1.0, 5.0, n), np.maximum(age - 1.0, 1.0))
    crises = np.round(rng.poisson(rate * years) / years, 2)

    crp = per_genotype(_SCD_CRP) * (1.0 + 0.15 * rate) * np.exp(rng.normal(0.0, 0.8, n))
    crp = np.round(np.clip(crp, 0.1, 250.0), 1)

    severe = np.array([_SCD_SEVERE[g] for g in genotype])
    microalb = rng.random(n) < _expit(-2.4 + 0.06 * age - 1.0 * ~severe - 0.03 * (hbf - 6.0))

    cum_hazard = np.interp(age, _STROKE_AGES, _STROKE_CUM)
    hr = per_genotype(_SCD_STROKE_RR) * np.exp(-0.05 * (hbf - 8.0)) * p.hazard_ratio
    stroke = rng.standard_exponential(n) <= cum_hazard * hr

    return _frame(
        "scd",
        {
            "age": age,
            "sex": sex,
            "genotype": genotype,
            "hbf_pct": _blank_some(rng, hbf, 0.02),
            "crp_mg_l": crp,
            "microalbuminuria": microalb,
            "crises_per_year": crises,
            "stroke": stroke,
        },
    )


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

_MAKERS = {"aml": _make_aml, "mds": _make_mds, "mm": _make_mm, "scd": _make_scd}


def make_site_tables(site: str, seed: int = 2026) -> dict[str, pd.DataFrame]:
    """The four synthetic tables of one demo site: ``{"aml", "mds", "mm", "scd"} -> DataFrame``.

    Deterministic in ``(site, seed)``; columns and dtypes as declared in ``COLUMN_TYPES``.
    Raises ``ValueError`` for a site not in ``DEMO_SITES``.
    """
    _profile(site)
    sizes = _sizes(site)
    return {name: maker(site, seed, sizes[name]) for name, maker in _MAKERS.items()}


def make_demo_tables(seed: int = 2026) -> dict[str, dict[str, pd.DataFrame]]:
    """All demo sites: ``site -> dataset -> DataFrame`` (see ``make_site_tables``)."""
    return {site: make_site_tables(site, seed) for site in DEMO_SITES}
