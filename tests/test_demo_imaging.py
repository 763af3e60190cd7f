"""Synthetic MRI phantoms of the demo federation (fedhem_kernel.demo.imaging)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from fedhem_kernel.demo import imaging
from fedhem_kernel.demo.cohorts import DEMO_SITES
from fedhem_kernel.demo.imaging import (
    IMAGING_COLUMN_TYPES,
    IMAGING_DATASET,
    IMAGING_KEY,
    demo_imaging_root,
    imaging_table,
    write_demo_imaging,
    write_site_imaging,
)

# The scanner design, written out from the specification (not imported from the module):
# stored intensity = scale * tissue + offset (+ white noise).
SCANNER_DESIGN = {
    "karolinska": (1.00, 0.0),
    "charite": (1.22, 20.0),
    "hopital_st_louis": (0.82, -30.0),
    "policlinico_bari": (1.12, -40.0),
}
SMALL_SITE = "policlinico_bari"


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, pd.DataFrame]]:
    return write_demo_imaging(root=tmp_path_factory.mktemp("demo-imaging"))


@pytest.fixture(scope="module")
def pooled(written: dict[str, tuple[Path, pd.DataFrame]]) -> pd.DataFrame:
    """All sites' tables with absolute image / mask paths."""
    frames = []
    for site, (root, table) in written.items():
        df = table.copy()
        df["site"] = site
        df["image_path"] = [str(root / p) for p in df["image"]]
        df["mask_path"] = [str(root / p) for p in df["mask"]]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# -- the table ---------------------------------------------------------------------------------


def test_table_columns_sizes_and_ids() -> None:
    assert IMAGING_DATASET == "mm_imaging" and IMAGING_KEY == "patient_id"
    assert IMAGING_COLUMN_TYPES["image"] == {"type": "image"}
    assert IMAGING_COLUMN_TYPES["mask"] == {"type": "mask"}
    assert IMAGING_COLUMN_TYPES["pfs_months"] == {"type": "float", "unit": "months"}
    all_ids: list[str] = []
    for site in DEMO_SITES:
        df = imaging_table(site)
        assert list(df.columns) == list(IMAGING_COLUMN_TYPES)
        n = len(df)
        assert 40 <= n <= 60
        assert 3 <= n / (2 * 5)  # k-means with k = 3 is allowed under min_cell_count 5
        assert df[IMAGING_KEY].is_unique
        assert all(re.fullmatch(r"[A-Z]{3}-MRI-\d{3}", pid) for pid in df[IMAGING_KEY])
        assert df["scanner"].nunique() == 1
        for col in ("image", "mask"):
            for rel in df[col]:
                assert not Path(rel).is_absolute() and ".." not in Path(rel).parts
        assert (df["image"] != df["mask"]).all()
        assert df["pfs_status"].isin([0, 1]).all() and 0.2 < df["pfs_status"].mean() < 0.8
        assert (df["pfs_months"] > 0).all() and df.notna().all().all()
        assert set(df["r_iss"].astype(str)) <= {"I", "II", "III"}
        all_ids += list(df[IMAGING_KEY])
    assert len(set(all_ids)) == len(all_ids)  # unique across sites
    assert len({pid[:3] for pid in all_ids}) == len(DEMO_SITES)  # one prefix per site


def test_table_is_reproducible_and_seed_dependent() -> None:
    a, b = imaging_table("charite", seed=7), imaging_table("charite", seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = imaging_table("charite", seed=8)
    assert not np.array_equal(a["pfs_months"].to_numpy(), c["pfs_months"].to_numpy())
    with pytest.raises(ValueError, match="unknown demo site"):
        imaging_table("nowhere")


def test_written_table_equals_table(written: dict[str, tuple[Path, pd.DataFrame]]) -> None:
    for site, (root, table) in written.items():
        pd.testing.assert_frame_equal(table, imaging_table(site))
        assert root.name == site
        for rel in [*table["image"], *table["mask"]]:
            assert (root / rel).is_file()


def test_file_bytes_are_reproducible(tmp_path: Path, reference: Path) -> None:
    table = write_site_imaging(SMALL_SITE, tmp_path / "again")
    pd.testing.assert_frame_equal(table, imaging_table(SMALL_SITE))
    expected, again = file_hashes(reference), file_hashes(tmp_path / "again" / IMAGING_DATASET)
    assert len(again) == 2 * len(table) + 1 and again == expected
    write_site_imaging(SMALL_SITE, tmp_path / "other", seed=12)
    other = file_hashes(tmp_path / "other" / IMAGING_DATASET)
    assert other.keys() == expected.keys()
    assert all(expected[k] != other[k] for k in expected if k.endswith("_image.nrrd"))


# -- the images --------------------------------------------------------------------------------


def test_geometry_masks_and_lesions(pooled: pd.DataFrame) -> None:
    sizes = []
    for image_path, mask_path in zip(pooled["image_path"], pooled["mask_path"], strict=True):
        image, mask = sitk.ReadImage(image_path), sitk.ReadImage(mask_path)
        assert image.GetSize() == mask.GetSize() == (48, 48, 24)
        assert image.GetSpacing() == mask.GetSpacing() == (1.0, 1.0, 2.0)
        assert image.GetOrigin() == mask.GetOrigin()
        assert image.GetDirection() == mask.GetDirection()
        assert image.GetPixelID() == sitk.sitkInt16
        m = sitk.GetArrayViewFromImage(mask)
        assert set(np.unique(m)) == {0, 1}
        assert ndimage.label(m)[1] == 1  # one lesion
        idx = np.argwhere(m)
        assert idx.min() >= 1 and (np.array(m.shape) - 1 - idx.max(axis=0)).min() >= 1
        sizes.append(int(m.sum()))
    # lesions of varying size: from about 100 voxels (200 mm^3) to a few thousand
    assert min(sizes) >= 50 and max(sizes) > 5 * min(sizes)


def test_site_scanner_effect(pooled: pd.DataFrame) -> None:
    """Lesion intensities follow each site's scale and offset; undone, they agree."""
    means = {}
    for site, df in pooled.groupby("site"):
        values = []
        for image_path, mask_path in zip(df["image_path"], df["mask_path"], strict=True):
            img = sitk.GetArrayFromImage(sitk.ReadImage(image_path)).astype(float)
            m = sitk.GetArrayFromImage(sitk.ReadImage(mask_path)).astype(bool)
            values.append(img[m].mean())
        means[site] = float(np.mean(values))
    order = sorted(means, key=means.get)
    assert order == ["hopital_st_louis", "karolinska", "policlinico_bari", "charite"]
    assert means["charite"] - means["hopital_st_louis"] > 250
    tissue = {s: (means[s] - SCANNER_DESIGN[s][1]) / SCANNER_DESIGN[s][0] for s in means}
    ref = tissue["karolinska"]
    for site, value in tissue.items():
        assert abs(value - ref) < 0.04 * ref, (site, value, ref)


# -- the outcome -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features(pooled: pd.DataFrame) -> pd.DataFrame:
    from radiomics import featureextractor, setVerbosity

    setVerbosity(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor()  # default settings
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(shape=["MeshVolume"], firstorder=["Entropy", "Mean"])
    rows = []
    for image_path, mask_path in zip(pooled["image_path"], pooled["mask_path"], strict=True):
        out = extractor.execute(image_path, mask_path)
        rows.append({k: float(v) for k, v in out.items() if k.startswith("original_")})
    return pd.concat([pooled.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def test_radiomic_features_predict_pfs_pooled(features: pd.DataFrame) -> None:
    from lifelines import CoxPHFitter

    df = pd.DataFrame(
        {
            "log_volume": np.log(features["original_shape_MeshVolume"]),
            "entropy": features["original_firstorder_Entropy"],
            "T": features["pfs_months"],
            "E": features["pfs_status"],
        }
    )
    fit = CoxPHFitter().fit(df, "T", "E")
    summary = fit.summary
    for name in ("log_volume", "entropy"):
        assert summary.loc[name, "coef"] > 0, summary
        assert summary.loc[name, "p"] < 0.01, summary


def test_intensity_features_differ_by_site_shape_does_not(features: pd.DataFrame) -> None:
    """What ComBat is for: first-order Mean is dominated by the site, volume is not."""
    from scipy import stats

    groups = [g for _, g in features.groupby("site")]
    p_mean = stats.f_oneway(*(g["original_firstorder_Mean"] for g in groups)).pvalue
    p_vol = stats.f_oneway(*(np.log(g["original_shape_MeshVolume"]) for g in groups)).pvalue
    assert p_mean < 1e-20 and p_vol > 0.01


# -- atomic writing and the cache --------------------------------------------------------------


def test_complete_folder_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / SMALL_SITE
    root.mkdir()
    (root / "site.toml").write_text("keep me", encoding="utf-8")
    write_site_imaging(SMALL_SITE, root, seed=5)
    folder = root / IMAGING_DATASET
    marker = json.loads((folder / "fedhem-demo-imaging.json").read_text(encoding="utf-8"))
    assert marker["seed"] == 5 and marker["site"] == SMALL_SITE and marker["version"] >= 1
    probe = next((folder / "images").iterdir())
    stat = probe.stat()

    def no_phantoms(*args, **kwargs):
        raise AssertionError("a complete folder was generated again")

    monkeypatch.setattr(imaging, "_phantom", no_phantoms)
    table = write_site_imaging(SMALL_SITE, root, seed=5)
    again = probe.stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # not rewritten
    pd.testing.assert_frame_equal(table, imaging_table(SMALL_SITE, seed=5))
    assert sorted(p.name for p in root.iterdir()) == [IMAGING_DATASET, "site.toml"]
    assert (root / "site.toml").read_text(encoding="utf-8") == "keep me"


@pytest.fixture(scope="module")
def reference(written: dict[str, tuple[Path, pd.DataFrame]]) -> Path:
    """A complete folder of the small site (seed 2026), written once for the module."""
    return written[SMALL_SITE][0] / IMAGING_DATASET


@pytest.mark.parametrize("damage", ["missing_file", "truncated_file", "no_marker", "other_seed"])
def test_incomplete_folder_is_replaced(tmp_path: Path, reference: Path, damage: str) -> None:
    expected = file_hashes(reference)
    root = tmp_path / "site"
    folder = root / IMAGING_DATASET
    if damage == "other_seed":
        write_site_imaging(SMALL_SITE, root, seed=6)
    else:
        shutil.copytree(reference, folder)
    victim = sorted((folder / "masks").iterdir())[3]
    if damage == "missing_file":
        victim.unlink()
    elif damage == "truncated_file":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "no_marker":
        (folder / "fedhem-demo-imaging.json").unlink()
        (folder / "images" / "stray.tmp").write_bytes(b"half written")
    write_site_imaging(SMALL_SITE, root)
    assert file_hashes(folder) == expected
    assert [p.name for p in root.iterdir()] == [IMAGING_DATASET]  # no staging folder left


def test_crash_while_writing_leaves_no_half_written_folder(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site"
    shutil.copytree(reference, root / IMAGING_DATASET)
    before = file_hashes(root / IMAGING_DATASET)
    real = imaging._phantom
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(imaging, "_phantom", failing)
    with pytest.raises(OSError, match="disk full"):
        write_site_imaging(SMALL_SITE, root, seed=6)
    assert file_hashes(root / IMAGING_DATASET) == before  # the old complete folder is kept
    assert [p.name for p in root.iterdir()] == [IMAGING_DATASET]
    with pytest.raises(OSError, match="disk full"):
        write_site_imaging(SMALL_SITE, tmp_path / "fresh", seed=6)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_demo_imaging_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDHEM_CACHE", str(tmp_path / "cache"))
    assert demo_imaging_root(42) == tmp_path / "cache" / "demo-imaging-v1-42"
    monkeypatch.delenv("FEDHEM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_imaging_root() == tmp_path / "xdg" / "fedhem" / "demo-imaging-v1-2026"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo_imaging_root() == tmp_path / "home" / ".cache" / "fedhem" / "demo-imaging-v1-2026"
    assert not (tmp_path / "home").exists()  # only a path, nothing created
