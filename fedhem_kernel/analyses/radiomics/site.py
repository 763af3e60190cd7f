"""Site steps of ``radiomics``: pyradiomics on the site's images in rounds of about ``budget`` seconds
(features cached by content hashes), then the features kept as derived columns and summarised.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.describe.site import site_describe
from fedhem_kernel.analyses.radiomics import BUDGET_SECONDS
from fedhem_kernel.analyses.radiomics.params import (
    build_extractor,
    check_site_settings,
    column_name,
    params_digest,
)
from fedhem_kernel.errors import SchemaError
from fedhem_kernel.protocol.params import BOOL, NONE, Constraint, Params, number, options, text
from fedhem_kernel.protocol.query import Payload
from fedhem_kernel.site.imaging import (
    ImageReadError,
    file_digest,
    image_columns,
    read_image,
    resolve,
    row_labels,
)
from fedhem_kernel.site.schema import ColumnSpec, DatasetSchema
from fedhem_kernel.site.steps import SiteData, SiteStep

log = logging.getLogger("fedhem.site.radiomics")


SOURCE = "radiomics"


# -- the site's feature cache -----------------------------------------------------------------------
_MEMORY: dict[str, dict[str, dict[str, float]]] = {}  # per data root, for read-only roots


class FeatureCache:
    """Features per (image, mask, parameters) digest: JSON files under the data root, else memory."""

    def __init__(self, root: Path) -> None:
        self.folder: Path | None = None
        self._memory = _MEMORY.setdefault(str(root.resolve()), {})
        folder = root / ".fedhem-cache" / "radiomics"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                self.folder = folder
        except OSError:
            self.folder = None

    def get(self, key: str) -> dict[str, float] | None:
        if key in self._memory:
            return self._memory[key]
        if self.folder is not None:
            path = self.folder / f"{key}.json"
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            self._memory[key] = found
            return found
        return None

    def put(self, key: str, features: dict[str, float]) -> None:
        self._memory[key] = features
        if self.folder is None:
            return
        try:  # written whole, then renamed: a crash never leaves half a file
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(features, fh)
            os.replace(tmp, self.folder / f"{key}.json")
        except OSError:
            log.warning("radiomics cache: could not write under the data root", exc_info=True)


def extract_one(extractor: Any, image: Path, mask: Path) -> dict[str, float]:
    """pyradiomics' features (diagnostics left out) for one image and its mask."""
    img = read_image(image) if image.is_dir() else str(image)
    msk = read_image(mask) if mask.is_dir() else str(mask)
    result = extractor.execute(img, msk)
    return {
        name: _real(value) for name, value in result.items() if not name.startswith("diagnostics_")
    }


def _real(value: Any) -> float:
    """A feature value as a float (pyradiomics' axis-length ratios can come out as complex numbers
    with a rounding-size imaginary part; a truly complex value is missing)."""
    v = complex(np.asarray(value).item())
    if abs(v.imag) > 1e-9 * max(1.0, abs(v.real)):
        return math.nan
    return float(v.real)


# -- site steps -------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One radiomics query's state at a site, kept between its rounds in ``data.scratch``."""

    run: str
    rows: np.ndarray  # cohort positions (0..n-1) of the rows with an image
    features: dict[int, dict[str, float]] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)
    done: int = 0


def _check_release(data: SiteData, params: Payload) -> None:
    if params.get("release", "summary") != "summary":
        raise data.refuse(
            "row_level",
            "per-patient radiomic features never leave the site: use them here as columns in "
            "fed.describe, fed.cox or fed.kmeans; fed.radiomics releases a summary only",
        )


def _state(data: SiteData, params: Payload) -> _Run:
    cols = image_columns(data.schema)
    if cols is None:
        raise SchemaError("the dataset has no image and mask columns", **data.err(), rule="imaging")
    state = data.scratch.get("radiomics")
    if isinstance(state, _Run) and state.run == params["run"]:
        return state
    has_image = data.cohort[cols.image].notna().to_numpy()
    if not has_image.any():
        raise SchemaError("no images in the cohort", **data.err(cols.image), rule="imaging")
    # the patients whose images are processed: a row set (its size is released), snapped to the
    # release ledger before the first reply says how many there are
    selected = data.release_rows(has_image, fixed=~has_image)
    if not selected.any():
        raise data.refuse(
            "min_cell_count",
            f"the cohort has no group of {data.k} or more images at this site",
            column=cols.image,
        )
    state = _Run(str(params["run"]), np.flatnonzero(selected))
    data.scratch["radiomics"] = state
    return state


def site_radiomics_extract(data: SiteData, params: Payload) -> Payload:
    _check_release(data, params)
    if not data.policy.is_unrestricted:
        check_site_settings(params["params"], site=data.site, dataset=data.dataset)
    state = _state(data, params)
    cols = image_columns(data.schema)
    assert cols is not None and data.root is not None
    params_json = json.dumps(params["params"], sort_keys=True)
    digest = params_digest(params_json)
    cache = FeatureCache(data.root)
    extractor = build_extractor(params_json) if state.done < len(state.rows) else None
    budget = params.get("budget")
    budget = float(BUDGET_SECONDS if budget is None else budget)
    started = time.monotonic()
    done_before = state.done
    images = data.cohort[cols.image].to_numpy(dtype=object)
    masks = data.cohort[cols.mask].to_numpy(dtype=object)
    while state.done < len(state.rows):  # at least one image per round, then until the budget
        if state.done > done_before and time.monotonic() - started >= budget:
            break
        i = int(state.rows[state.done])
        state.done += 1
        image, mask = resolve(data.root, str(images[i])), resolve(data.root, str(masks[i]))
        try:
            if image is None or mask is None:
                raise ImageReadError("path outside the data root")  # checked on load already
            key = f"{file_digest(image)[:32]}-{file_digest(mask)[:32]}-{digest[:32]}"
            found = cache.get(key)
            if found is None:
                found = extract_one(extractor, image, mask)
                cache.put(key, found)
            state.features[i] = found
        except Exception:  # noqa: BLE001 - one bad image: its features are missing
            label = _row_label(data, i)
            log.warning(
                "site %s, dataset %s, %s: radiomics extraction failed",
                data.site,
                data.dataset,
                label,
                exc_info=True,
            )
            state.failed.append(i)
    return {"done": state.done, "total": len(state.rows)}


def _row_label(data: SiteData, i: int) -> str:
    """The row as the site's own log names it (row key, else the dataset's row number)."""
    if data.key is not None:
        return row_labels(data.cohort, data.key, [i])[0]
    return f"row {int(data.cohort.index[i]) + 1}"


def site_radiomics_keep(data: SiteData, params: Payload) -> Payload:
    _check_release(data, params)
    state = data.scratch.get("radiomics")
    if not isinstance(state, _Run) or state.run != params.get("run"):
        raise SchemaError("no extraction to keep (run radiomics_extract first)", **data.err())
    if state.done < len(state.rows):
        raise SchemaError("the extraction has not finished", **data.err())
    k = data.k
    unrestricted = data.policy.is_unrestricted
    processed = np.zeros(len(data.cohort), dtype=bool)
    processed[np.array(sorted(state.features), dtype=np.int64)] = True
    if not processed.any():
        raise SchemaError("no image could be processed at this site", **data.err(), rule="imaging")
    # the summary's rows (failed extractions left out): a row set, snapped to the ledger
    summarised = data.release_rows(processed, fixed=~processed)
    if not summarised.any():
        raise data.refuse(
            "min_cell_count", f"fewer than {k} images could be processed at this site"
        )
    names = list(
        dict.fromkeys(n for i in np.flatnonzero(processed) for n in state.features[int(i)])
    )
    columns = {name: column_name(name) for name in names}
    # the feature table of the patients with an image (failed extractions: missing values)
    rows = state.rows
    values = np.full((len(rows), len(names)), np.nan)
    position = {n: j for j, n in enumerate(names)}
    for r, i in enumerate(rows):
        for name, v in state.features.get(int(i), {}).items():
            values[r, position[name]] = v
    frame = pd.DataFrame(values, index=data.cohort.index[rows], columns=[columns[n] for n in names])
    # keep them at the site: one derived column per feature (older radiomics columns dropped)
    for spec in data.schema.columns.values():
        if spec.derived == SOURCE and spec.name not in frame.columns:
            data.derive(spec.name, None, "float", SOURCE)
    full = pd.DataFrame(np.nan, index=data.cohort.index, columns=frame.columns)
    full.loc[frame.index] = frame.to_numpy()
    for col in frame.columns:
        data.derive(col, full[col].to_numpy(), "float", SOURCE)
    # the summary, with describe's rules, over the patients with an image
    sub_schema = DatasetSchema(
        data.site, data.dataset, {c: ColumnSpec(c, "float", None, SOURCE) for c in frame.columns}
    )
    summary: Payload = {}
    if params.get("summary", True):  # else summarised by describe's secure sums afterwards
        data.per_site_table("feature summaries")
        shown = frame.loc[data.cohort.index[summarised]]
        sub = replace(data, cohort=shown, schema=sub_schema, derived={})
        summary = site_describe(sub, {"columns": list(frame.columns), "by": None, "levels": None})
    failed = len(state.failed)
    if failed:
        count = (
            f"{failed} image{'s' if failed > 1 else ''}"
            if failed >= k or unrestricted
            else (f"fewer than {k} images")
        )
        data.log.note(
            f"{count} could not be processed (their features are missing; the site's log names "
            "them)"
        )
    data.scratch.pop("radiomics", None)
    return {**summary, "features": names, "n_images": int(len(state.rows))}


def _image_columns(params: Payload) -> list[str]:
    return []  # the image and mask columns are found from the schema, not named by the researcher


#: pyradiomics settings as JSON (a dict of its sections); the site builds its own extractor.
SETTINGS = Constraint(
    lambda v: isinstance(v, dict) and len(json.dumps(v)) <= 100_000,
    "a dict of pyradiomics settings",
)
RUN: Params = {
    "params": SETTINGS,
    "run": text(64),
    "release": (options("summary", "features"), NONE),
}
KEEP: Params = {**RUN, "summary": (BOOL, NONE)}

STEPS = [
    SiteStep(
        "radiomics_extract",
        "radiomics",
        site_radiomics_extract,
        _image_columns,
        {**RUN, "budget": (number(0, 3600), NONE)},
    ),
    SiteStep("radiomics_keep", "radiomics", site_radiomics_keep, _image_columns, KEEP),
]
