"""pyradiomics parameters as both sides check them: canonical JSON, a digest, and the extractor they build.

The researcher's side validates a parameter set once by building an extractor (pyradiomics' own
message on error); each site builds its own from the JSON it is sent. No rows.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedhem_kernel.errors import ParameterError

PARAM_SECTIONS = ("setting", "imageType", "featureClass", "voxelSetting")
#: Settings that decide which images fail extraction (the mask's label, the smallest ROI, the
#: re-segmentation of the ROI by intensity), with pyradiomics' defaults: under a site's privacy
#: rules (any policy but unrestricted) a request may not change them. Varied by a researcher,
#: they would bisect lesion sizes and intensities through which extractions fail.
SITE_SETTINGS: dict[str, Any] = {
    "label": 1,
    "label_channel": 0,
    "minimumROISize": None,
    "minimumROIDimensions": 2,
    "resegmentRange": None,
    "resegmentMode": "absolute",
    "resegmentShape": False,
}


def check_site_settings(params: Any, **where: Any) -> None:
    """Refuse a parameter set that sets a setting of :data:`SITE_SETTINGS` to anything but
    pyradiomics' default (``where``: the error's site and dataset)."""
    setting = params.get("setting") if isinstance(params, Mapping) else None
    if not isinstance(setting, Mapping):
        return
    changed = sorted(
        name for name, default in SITE_SETTINGS.items() if setting.get(name, default) != default
    )
    if changed:
        raise ParameterError(
            f"radiomics setting '{changed[0]}' decides which images fail extraction: under the "
            "sites' privacy rules it keeps pyradiomics' default (the site's, not the request's)",
            **where,
        )


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
    build_extractor(json.dumps(out, sort_keys=True))
    return out


_BUILD = threading.Lock()


def build_extractor(params_json: str) -> Any:
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
