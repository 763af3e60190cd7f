"""Combine step of ``radiomics``: extraction rounds with per-site progress, then describe's pooled summary."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fedhem_kernel.analyses.common.combine_catalog import pooled_k, pooled_sums
from fedhem_kernel.analyses.describe.combine import combine_describe, combine_pooled
from fedhem_kernel.analyses.radiomics import BUDGET_SECONDS
from fedhem_kernel.analyses.radiomics.params import (
    canonical_params,
    check_site_settings,
    column_name,
)
from fedhem_kernel.analyses.radiomics.result import RadiomicsResult
from fedhem_kernel.errors import ParameterError
from fedhem_kernel.protocol.query import Ask

SUMMARY_COLUMNS = ["count", "mean", "sd", "min", "25%", "50%", "75%", "max", "n_sites"]


def run(
    q: Ask, params: Mapping[str, Any] | str | Path | None = None, budget: float | None = None
) -> RadiomicsResult:
    settings = canonical_params(params)
    if pooled_k(q) > 1:  # a site with privacy rules: failures must not be the researcher's to steer
        check_site_settings(settings, dataset=q.dataset)
    budget = BUDGET_SECONDS if budget is None else budget
    if not (isinstance(budget, int | float) and math.isfinite(budget) and budget >= 0):
        raise ParameterError("budget must be a number of seconds (0: one image per round)")
    base = {"params": settings, "run": uuid.uuid4().hex}
    while True:
        payloads = q.ask("radiomics_extract", {**base, "budget": float(budget)})
        for site, p in payloads.items():
            q.progress(site, f"{p['done']}/{p['total']} images")
        if all(p["done"] >= p["total"] for p in payloads.values()):
            break
    pooled = pooled_sums(q, "radiomics") and pooled_sums(q, "describe")
    kept = q.ask("radiomics_keep", {**base, "summary": not pooled})
    names = list(dict.fromkeys(n for p in kept.values() for n in p["features"]))
    columns = {n: column_name(n) for n in names}
    if pooled:  # the features kept at the sites, summarised as describe does: secure sums
        table = combine_pooled(q, {"columns": list(columns.values()), "by": None, "levels": None})
        by_site = pd.DataFrame(columns=["site", "variable", "count", "mean", "std"])
    else:
        table, by_site = combine_describe(kept)
        by_site = by_site.drop(columns="group")
    table = table.drop(columns="group").set_index("variable").rename(columns={"std": "sd"})
    by_site = by_site.rename(columns={"std": "sd"})
    back = {c: n for n, c in columns.items()}
    table.index = [back.get(c, c) for c in table.index]
    table.index.name = "feature"
    by_site["variable"] = by_site["variable"].map(lambda c: back.get(c, c))
    by_site = by_site.rename(columns={"variable": "feature"})
    table = table[[c for c in SUMMARY_COLUMNS if c in table.columns]]
    n_images = {site: int(p["n_images"]) for site, p in kept.items()}
    return RadiomicsResult(table, by_site, columns, n_images, settings, q.report())
