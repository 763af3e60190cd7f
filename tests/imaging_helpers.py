"""Small imaging fixtures for the tests: pyradiomics' sample cases and quick synthetic phantoms."""

from __future__ import annotations

import ast
import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLES = Path(__file__).parent / "data" / "pyradiomics"
CASES = ("brain1", "brain2", "breast1")


def baseline() -> dict[str, dict[str, str]]:
    """pyradiomics' baseline values: feature name -> case -> value (text), all classes."""
    out: dict[str, dict[str, str]] = {}
    for f in sorted((SAMPLES / "baseline").glob("baseline_*.csv")):
        if f.stem.endswith("shape2D"):
            continue
        with open(f, newline="") as fh:
            rows = list(csv.reader(fh))
        for row in rows[1:]:
            out[row[0]] = dict(zip(rows[0][1:], row[1:], strict=True))
    return out


def baseline_settings(case: str) -> dict:
    """The settings pyradiomics used for a case's baseline (no filters, no resampling)."""
    return ast.literal_eval(baseline()["diagnostics_Configuration_Settings"][case])


def copy_samples(root: Path, cases: tuple[str, ...] = CASES) -> pd.DataFrame:
    """pyradiomics' sample images under ``root/<case>/``, and a table pointing at them."""
    rows = []
    for case in cases:
        (root / case).mkdir(parents=True, exist_ok=True)
        for part in ("image", "label"):
            shutil.copy(SAMPLES / f"{case}_{part}.nrrd", root / case / f"{part}.nrrd")
        rows.append(
            {
                "patient_id": case,
                "age": 50.0,
                "image": f"{case}/image.nrrd",
                "mask": f"{case}/label.nrrd",
            }
        )
    return pd.DataFrame(rows)


def write_phantoms(root: Path, n: int, seed: int = 0, prefix: str = "P") -> pd.DataFrame:
    """``n`` small synthetic volumes with one blob each (NRRD), and a clinical table for them."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    shape = (16, 24, 24)  # z, y, x
    zz, yy, xx = np.indices(shape)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        radius = rng.uniform(3.0, 6.0)
        inside = ((zz - 8) / 1.2) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= radius**2
        image = rng.normal(100.0, 10.0, shape) + inside * rng.uniform(50.0, 150.0)
        image += inside * rng.normal(0.0, rng.uniform(5.0, 40.0), shape)
        for array, name in ((image.astype(np.float32), "image"), (inside.astype(np.uint8), "mask")):
            img = sitk.GetImageFromArray(array)
            img.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(img, str(root / f"{prefix}{i:03d}_{name}.nrrd"))
        rows.append(
            {
                "patient_id": f"{prefix}{i:03d}",
                "age": float(rng.integers(30, 80)),
                "pfs_months": float(rng.exponential(30.0)),
                "pfs_status": float(rng.random() < 0.7),
                "image": f"{prefix}{i:03d}_image.nrrd",
                "mask": f"{prefix}{i:03d}_mask.nrrd",
            }
        )
    return pd.DataFrame(rows)


IMAGING_COLUMNS = {
    "patient_id": {"type": "category", "key": True},
    "image": "image",
    "mask": "mask",
}

# firstorder + shape: quick, and enough to exercise every path
QUICK_PARAMS = {
    "setting": {"binWidth": 25},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": [], "shape": []},
}
