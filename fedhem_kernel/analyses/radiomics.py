"""radiomics: pyradiomics features extracted at each site; only a privacy-checked summary leaves it.

``fed.radiomics(dataset, params=None, where=None)`` runs on an imaging dataset (a table with one
``image`` and one ``mask`` path column, see :mod:`fedhem_kernel.site.imaging`). We use the
``pyradiomics-bhklab`` fork (import name ``radiomics``): PyPI's ``pyradiomics`` does not build on
Python >= 3.11, the fork installs as a wheel and computes the same features (it reproduces
pyradiomics' own baseline values, see ``tests/test_radiomics.py``).

Protocol:

1. ``radiomics_extract`` (repeated): each site extracts features for the cohort's rows that have an
   image, for about ``BUDGET_SECONDS`` per round, and replies with how many images it has done out
   of how many (shown per site in the notebook's progress widget). Sites work in parallel (the
   engine runs them on a thread pool); a round ends when every site has answered. Features are
   cached at the site under ``<data root>/.fedhem-cache/radiomics`` (in memory if the root is
   read-only), keyed by the SHA-256 of the image, of the mask and of the parameters (with the
   pyradiomics version): a repeated query reads them back instead of extracting again.
2. ``radiomics_keep``: each site keeps the features as derived columns of the dataset (float,
   marked ``radiomics`` in the catalog; missing outside the cohort and for rows without an image
   or whose extraction failed), so that ``fed.describe``, ``fed.cox``, ``fed.kmeans`` and
   ``fed.combat`` use them like any other column, and releases a describe summary of them: per
   feature the count, mean, SD and the histogram of bins of >= k patients from which the
   coordinator computes quantiles (no patient's own value, see :mod:`.describe`).

Column names: pyradiomics' feature names (``original_firstorder_Mean``), with every character that
cannot appear in a ``where=`` identifier replaced by ``_`` (``wavelet-LLH_glcm_Idm`` becomes
``wavelet_LLH_glcm_Idm``); ``RadiomicsResult.columns`` maps one to the other.

Release rules (at the site; k = ``min_cell_count``):

- the cohort's images number 0 or >= k, and the images successfully processed >= k (else
  ``min_cell_count``), so no summary describes fewer than k patients;
- the patients with an image must not differ from an earlier released row set by 1..k-1 patients
  (``differencing``; e.g. a cohort described before in which 1..k-1 patients have no image);
- a feature's cell is suppressed when 1..k-1 of the patients lack it (failed extractions), as in
  describe; the number of failed images is reported only when it is >= k;
- per-patient features are never released: a request for them (``release="features"``) is refused
  (``row_level``); ``RadiomicsResult.features`` explains where they are instead.

Extraction errors name no path: the site's own log keeps the row key; the reply says how many
images failed (when >= k).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.analyses.describe import combine_describe, site_describe
from fedhem_kernel.errors import DisclosureError, ParameterError, SchemaError
from fedhem_kernel.protocol.query import Ask, Payload
from fedhem_kernel.protocol.report import PrivacyReport
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

#: Seconds a site works per extraction round before it reports its progress.
BUDGET_SECONDS = 2.0
SOURCE = "radiomics"
PARAM_SECTIONS = ("setting", "imageType", "featureClass", "voxelSetting")
SUMMARY_COLUMNS = ["count", "mean", "sd", "min", "25%", "50%", "75%", "max", "n_sites"]


# -- parameters -------------------------------------------------------------------------------------
def _radiomics() -> Any:
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)  # pyradiomics logs every feature class at INFO
    return featureextractor


def canonical_params(params: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """``params`` (a dict, a YAML/JSON file, or None for pyradiomics' defaults) as a plain dict.

    Checked by building a pyradiomics extractor from it, so a bad setting is reported once, here,
    in pyradiomics' words (they quote the researcher's own parameters, never data).
    """
    if params is None:
        out: dict[str, Any] = {}
    elif isinstance(params, str | Path):
        path = Path(params)
        if not path.is_file():
            raise ParameterError(f"radiomics parameter file not found: {path.name}")
        import yaml

        try:
            out = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ParameterError(f"the parameter file is not valid YAML ({exc})") from None
    elif isinstance(params, Mapping):
        out = dict(params)
    else:
        raise ParameterError("params must be a dict, a YAML file or None")
    if not isinstance(out, dict):
        raise ParameterError("radiomics parameters are a mapping of setting/imageType/featureClass")
    unknown = set(out) - set(PARAM_SECTIONS)
    if unknown:
        raise ParameterError(
            f"unknown radiomics parameter sections {sorted(unknown)} (use {', '.join(PARAM_SECTIONS)})"
        )
    try:
        out = json.loads(json.dumps(out))  # plain JSON types: what travels to the sites
    except (TypeError, ValueError):
        raise ParameterError("radiomics parameters must be numbers, text, lists and maps") from None
    _extractor(json.dumps(out, sort_keys=True))
    return out


_BUILD = threading.Lock()


def _extractor(params_json: str) -> Any:
    """A pyradiomics extractor for these parameters (a new one: extractors keep state).

    Built under a lock: pykwalify's schema parsing is not thread-safe, and sites run on threads.
    """
    featureextractor = _radiomics()
    try:
        with _BUILD:
            return featureextractor.RadiomicsFeatureExtractor(json.loads(params_json))
    except Exception as exc:  # noqa: BLE001 - pykwalify / ValueError: the researcher's parameters
        raise ParameterError(f"pyradiomics rejected the parameters: {exc}") from None


def params_digest(params_json: str) -> str:
    import hashlib

    import radiomics

    version = getattr(radiomics, "__version__", "?")
    return hashlib.sha256(f"{version}\0{params_json}".encode()).hexdigest()


def column_name(feature: str) -> str:
    """The site column for a pyradiomics feature name (usable in ``where=``)."""
    name = re.sub(r"\W", "_", feature)
    return name if name[:1].isalpha() else f"f_{name}"


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
    n = int(has_image.sum())
    k = data.k
    if n == 0:
        raise SchemaError("no images in the cohort", **data.err(cols.image), rule="imaging")
    if n < k and not data.policy.is_unrestricted:
        raise data.refuse(
            "min_cell_count", f"the cohort has fewer than {k} images", column=cols.image
        )
    state = _Run(str(params["run"]), np.flatnonzero(has_image))
    _image_rows(data, state.rows)  # before the first reply releases how many images there are
    data.scratch["radiomics"] = state
    return state


def _image_rows(data: SiteData, rows: np.ndarray) -> np.ndarray:
    """Cohort flags of the patients with an image, refused if within k of an earlier release.

    Checked when the first round is answered (its reply counts the images) and again when the
    summary is released (another query may have released a row set in between).
    """
    selected = np.zeros(len(data.cohort), dtype=bool)
    selected[rows] = True
    if data.near_released(selected):
        raise data.refuse(
            "differencing",
            f"the patients with an image differ from an earlier released group by fewer than "
            f"{data.k}",
        )
    return selected


def site_radiomics_extract(data: SiteData, params: Payload) -> Payload:
    _check_release(data, params)
    state = _state(data, params)
    cols = image_columns(data.schema)
    assert cols is not None and data.root is not None
    params_json = json.dumps(params["params"], sort_keys=True)
    digest = params_digest(params_json)
    cache = FeatureCache(data.root)
    extractor = _extractor(params_json) if state.done < len(state.rows) else None
    budget = float(params.get("budget", BUDGET_SECONDS))
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
    ok = np.array(sorted(state.features), dtype=np.int64)
    if len(ok) < k and not unrestricted:
        raise data.refuse(
            "min_cell_count", f"fewer than {k} images could be processed at this site"
        )
    if len(ok) == 0:
        raise SchemaError("no image could be processed at this site", **data.err(), rule="imaging")
    selected = _image_rows(data, state.rows)
    names = list(dict.fromkeys(n for i in ok for n in state.features[int(i)]))
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
    sub = replace(data, cohort=frame, schema=sub_schema, derived={})
    summary = site_describe(sub, {"columns": list(frame.columns), "by": None, "levels": None})
    data.remember_released(selected)
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


STEPS = [
    SiteStep("radiomics_extract", "radiomics", site_radiomics_extract, _image_columns),
    SiteStep("radiomics_keep", "radiomics", site_radiomics_keep, _image_columns),
]


# -- coordinator ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RadiomicsResult:
    """Summary of radiomic features over the federation; the per-patient values stay at the sites.

    ``summary``: DataFrame indexed by pyradiomics feature name, columns ``count``, ``mean``, ``sd``,
    quantiles ``25%``/``50%``/``75%`` from pooled k-patient bins (``min``/``max`` only where every
    site allows them) and ``n_sites``. ``by_site``: count, mean and SD per site and feature.
    ``columns``: feature name -> the column each site now holds (for ``fed.cox``, ``fed.kmeans``,
    ``fed.describe``). ``n_images``: images in the cohort per site (failed extractions included:
    the notes say how many failed, when that number is 0 or >= k).
    """

    summary: pd.DataFrame
    by_site: pd.DataFrame
    columns: dict[str, str]
    n_images: dict[str, int]
    params: dict[str, Any]
    privacy: PrivacyReport

    @property
    def feature_names(self) -> list[str]:
        return list(self.summary.index)

    @property
    def features(self) -> pd.DataFrame:
        """Per-patient features are not released: this explains where they are instead."""
        raise DisclosureError(
            "per-patient radiomic features never leave the sites; they are kept there as columns "
            f"of dataset '{self.privacy.dataset}' (see .columns): use them in fed.describe, "
            "fed.cox, fed.kmeans or fed.combat",
            dataset=self.privacy.dataset,
            rule="row_level",
        )

    def _repr_html_(self) -> str:
        from fedhem_kernel.display.html import result_html

        n = sum(self.n_images.values())
        return result_html(
            f"radiomics on '{self.privacy.dataset}': {len(self.summary)} features, {n} images",
            self.summary,
            self.privacy,
            footnote="Per-patient features stay at the sites as columns; quantiles from pooled "
            "site histograms (no patient's own value is released).",
        )

    def widget(self) -> Any:
        """This result as a widget: the summary table and the privacy panel."""
        from fedhem_kernel.display.widgets import radiomics_widget

        return radiomics_widget(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from fedhem_kernel.display.mimebundle import result_mimebundle

        return result_mimebundle(self, self.widget, include, exclude)

    def __repr__(self) -> str:
        return f"RadiomicsResult(\n{self.summary.to_string()}\n{self.privacy!r})"


def run_radiomics(
    q: Ask, params: Mapping[str, Any] | str | Path | None, budget: float | None = None
) -> RadiomicsResult:
    settings = canonical_params(params)
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
    kept = q.ask("radiomics_keep", base)
    table, by_site = combine_describe(kept)
    table = table.drop(columns="group").set_index("variable").rename(columns={"std": "sd"})
    by_site = by_site.drop(columns="group").rename(columns={"std": "sd"})
    names = list(dict.fromkeys(n for p in kept.values() for n in p["features"]))
    columns = {n: column_name(n) for n in names}
    back = {c: n for n, c in columns.items()}
    table.index = [back.get(c, c) for c in table.index]
    table.index.name = "feature"
    by_site["variable"] = by_site["variable"].map(lambda c: back.get(c, c))
    by_site = by_site.rename(columns={"variable": "feature"})
    table = table[[c for c in SUMMARY_COLUMNS if c in table.columns]]
    n_images = {site: int(p["n_images"]) for site, p in kept.items()}
    return RadiomicsResult(table, by_site, columns, n_images, settings, q.report())
