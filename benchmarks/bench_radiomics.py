"""Radiomics extraction time per image: fed.radiomics vs pyradiomics called directly on the same files.

Run: ``.venv/bin/python benchmarks/bench_radiomics.py [--images 20] [--sites 4] [--params all|quick]``.
The images are pyradiomics' MRI samples (brain1, brain2, from ``tests/data/pyradiomics``) made
distinct by a little noise (so no two share a cache entry), spread over embedded sites. Direct:
one ``RadiomicsFeatureExtractor.execute`` per image, one after another. Federated: the real path
(Flower messages to each site's ClientApp, load checks, hashing, the site's feature cache, derived
columns, the checked summary) on a fresh cache; then again with the cache warm. Prints seconds per
image and the ratio federated / direct (the issue asks for <= 1.2).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

import fedhem_kernel as fh

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "pyradiomics"
PARAMS = {
    "all": {"setting": {"binWidth": 25}, "imageType": {"Original": {}}},  # every feature class
    "quick": {
        "setting": {"binWidth": 25},
        "imageType": {"Original": {}},
        "featureClass": {"firstorder": [], "shape": [], "glcm": []},
    },
}


def make_images(root: Path, n: int, n_sites: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows: dict[str, list[dict]] = {f"site_{s + 1}": [] for s in range(n_sites)}
    for i in range(n):
        case = ("brain1", "brain2")[i % 2]
        site = f"site_{i % n_sites + 1}"
        image = sitk.ReadImage(str(SAMPLES / f"{case}_image.nrrd"))
        noisy = sitk.GetArrayFromImage(image).astype(np.float32)
        noisy += rng.normal(0.0, 2.0, noisy.shape).astype(np.float32)
        out = sitk.GetImageFromArray(noisy)
        out.CopyInformation(image)
        (root / site).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(out, str(root / site / f"img{i:03d}.nrrd"))
        shutil.copy(SAMPLES / f"{case}_label.nrrd", root / site / f"mask{i:03d}.nrrd")
        rows[site].append(
            {"patient_id": f"P{i:03d}", "image": f"img{i:03d}.nrrd", "mask": f"mask{i:03d}.nrrd"}
        )
    return {site: pd.DataFrame(r) for site, r in rows.items()}


def direct(root: Path, tables: dict[str, pd.DataFrame], params: dict) -> float:
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(params)
    start = time.perf_counter()
    for site, table in tables.items():
        for img, msk in zip(table["image"], table["mask"], strict=True):
            extractor.execute(str(root / site / img), str(root / site / msk))
    return time.perf_counter() - start


def federated(root: Path, tables: dict[str, pd.DataFrame], params: dict) -> tuple[float, float]:
    fed = fh.Federation.local(
        {site: {"mri": t} for site, t in tables.items()},
        columns={
            "mri": {
                "patient_id": {"type": "category", "key": True},
                "image": "image",
                "mask": "mask",
            }
        },
        data_root={site: root / site for site in tables},
        policy=fh.Policy(),
    )
    start = time.perf_counter()
    fed.radiomics("mri", params=params)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    fed.radiomics("mri", params=params)  # the same query again: features from the site's cache
    warm = time.perf_counter() - start
    fed.close()
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)  # >= 5 per site (default policy)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--params", choices=sorted(PARAMS), default="all")
    args = parser.parse_args()
    params = PARAMS[args.params]
    with tempfile.TemporaryDirectory(prefix="fedhem-bench-radiomics-") as tmp:
        root = Path(tmp)
        tables = make_images(root, args.images, args.sites)
        t_direct = direct(root, tables, params)
        t_cold, t_warm = federated(root, tables, params)
    n = args.images
    print(f"{n} MRI images (brain1/brain2 + noise), {args.sites} sites, params={args.params}")
    print(f"pyradiomics direct     {t_direct:7.2f} s  {t_direct / n:6.3f} s/image")
    print(
        f"fed.radiomics (cold)   {t_cold:7.2f} s  {t_cold / n:6.3f} s/image  "
        f"ratio {t_cold / t_direct:5.2f}x"
    )
    print(
        f"fed.radiomics (cached) {t_warm:7.2f} s  {t_warm / n:6.3f} s/image  "
        f"ratio {t_warm / t_direct:5.2f}x"
    )


if __name__ == "__main__":
    main()
