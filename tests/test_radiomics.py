"""fed.radiomics: pyradiomics at each site, equal to pyradiomics' own values; imaging datasets on load."""

from __future__ import annotations

import json
import locale
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imaging_helpers import (
    CASES,
    IMAGING_COLUMNS,
    QUICK_PARAMS,
    baseline,
    baseline_settings,
    copy_samples,
    write_phantoms,
)
from sites import sites_of

import fedhem_kernel as fh
from fedhem_kernel.analyses.radiomics import combine as rad_combine
from fedhem_kernel.analyses.radiomics import params as rad_params
from fedhem_kernel.analyses.radiomics import site as rad_site
from fedhem_kernel.errors import FedHemError, ParameterError, SchemaError


def sample_federation(root: Path) -> fh.Federation:
    """pyradiomics' three sample cases at two sites (unrestricted: validation on public data)."""
    table = copy_samples(root)
    return fh.Federation.local(
        {"site_a": {"mri": table.iloc[:2]}, "site_b": {"mri": table.iloc[2:]}},
        policy=fh.Policy.unrestricted(),
        columns={"mri": IMAGING_COLUMNS},
        data_root=root,
    )


def site_values(fed: fh.Federation, dataset: str, columns: list[str]) -> pd.DataFrame:
    """The per-patient values kept at the sites (test-only access to the embedded sites)."""
    frames = []
    for ex in sites_of(fed).values():
        ds = ex.datasets[dataset]
        frames.append(ds.frame.set_index("patient_id")[columns])
    return pd.concat(frames)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("samples")
    fed = sample_federation(root)
    settings = baseline_settings("brain1")
    params = {"setting": settings, "imageType": {"Original": {}}}
    result = fed.radiomics("mri", params=params)
    yield fed, result, params, root
    fed.close()


def test_features_at_the_sites_reproduce_pyradiomics_baseline(samples) -> None:
    """Every baseline feature of brain1, brain2 and breast1, kept at the sites, equals pyradiomics'
    own reference values: shape (mesh) features within 1e-3 relative (measured 9.1e-4, brain1
    SurfaceVolumeRatio: the baseline was made in pure-Python mode), all others within 1e-9."""
    fed, result, _, _ = samples
    ref = baseline()
    names = [n for n in ref if not n.startswith("diagnostics_")]
    assert len(names) == 107
    assert set(names) <= set(result.summary.index)
    kept = site_values(fed, "mri", [result.columns[n] for n in names])
    for case in CASES:
        assert baseline_settings(case) == baseline_settings("brain1")
        for name in names:
            want, got = float(ref[name][case]), float(kept.loc[case, result.columns[name]])
            tol = 1e-3 if "_shape_" in name else 1e-9
            assert got == pytest.approx(want, rel=tol, abs=1e-12), (case, name)


def test_summary_is_pooled_statistics_of_direct_pyradiomics(samples) -> None:
    """count/mean/sd of the released summary equal those of pyradiomics called directly (1e-12)."""
    _, result, params, root = samples
    from radiomics import featureextractor

    ext = featureextractor.RadiomicsFeatureExtractor(params)
    direct = pd.DataFrame(
        [
            {
                k: float(v)
                for k, v in ext.execute(
                    str(root / case / "image.nrrd"), str(root / case / "label.nrrd")
                ).items()
                if not k.startswith("diagnostics_")
            }
            for case in CASES
        ]
    )
    assert list(result.summary.columns[:3]) == ["count", "mean", "sd"]
    assert set(direct.columns) == set(result.summary.index)
    for name in direct.columns:
        row = result.summary.loc[name]
        assert row["count"] == 3
        assert row["mean"] == pytest.approx(direct[name].mean(), rel=1e-12, abs=1e-12)
        assert row["sd"] == pytest.approx(direct[name].std(ddof=1), rel=1e-10, abs=1e-12)
    assert result.n_images == {"site_a": 2, "site_b": 1}
    assert result.summary.index.name == "feature"
    assert "radiomics" in result._repr_html_() and "site_a" in result._repr_html_()
    state = result.widget().get_state()
    assert state["_kind"] == "table" and len(state["tables"]) == 2
    assert json.loads(json.dumps(state["tables"], allow_nan=False))  # strict JSON for the browser


def test_features_are_columns_for_later_queries(samples) -> None:
    fed, result, _, _ = samples
    cat = fed.catalog("mri")
    col = result.columns["original_firstorder_Mean"]
    assert col == "original_firstorder_Mean"
    derived = cat.loc[cat["column"] == col, "derived"].unique().tolist()
    assert derived == ["radiomics"]
    d = fed.describe("mri", columns=[col])
    assert d.table.loc[col, "mean"] == pytest.approx(result.summary.loc[col, "mean"], rel=1e-12)
    later = fed.describe("mri", columns=[col], where=f"{col} > 0")
    assert later.table.loc[col, "count"] == 3


def test_feature_names_become_identifiers() -> None:
    assert rad_params.column_name("original_glcm_Idm") == "original_glcm_Idm"
    assert rad_params.column_name("wavelet-LLH_glcm_Idm") == "wavelet_LLH_glcm_Idm"
    assert rad_params.column_name("log-sigma-1-0-mm-3D_firstorder_Mean").isidentifier()


def _imaging_fed(root: Path, sizes: dict[str, int], policy: fh.Policy | None = None, **kw):
    sites = {}
    for i, (site, n) in enumerate(sizes.items()):
        table = write_phantoms(root / site, n, seed=i, prefix=f"{site[-1].upper()}")
        sites[site] = {"mri": table}
    return fh.Federation.local(
        sites,
        policy=policy,
        columns={
            "mri": {
                **IMAGING_COLUMNS,
                "pfs_months": {"type": "float", "unit": "months"},
                "pfs_status": "bool",
            }
        },
        data_root={site: root / site for site in sizes},
        **kw,
    )


def test_cache_and_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated query reads the site's cache; progress is reported per site between rounds."""
    fed = _imaging_fed(tmp_path, {"site_a": 12, "site_b": 10})
    calls = []
    real = rad_site.extract_one
    monkeypatch.setattr(rad_site, "extract_one", lambda *a: calls.append(a[1].name) or real(*a))
    monkeypatch.setattr(rad_combine, "BUDGET_SECONDS", 0.0)  # one image per site per round
    events = []
    fed.coordinator.observers.append(events.append)
    first = fed.radiomics("mri", params=QUICK_PARAMS)
    assert len(calls) == 22
    details = [(e.site, e.detail) for e in events if e.kind == "detail"]
    assert ("site_a", "1/12 images") in details and ("site_a", "12/12 images") in details
    assert ("site_b", "10/10 images") in details
    assert len(list((tmp_path / "site_a" / ".fedhem-cache" / "radiomics").glob("*.json"))) == 12
    # a new federation on the same files (a restarted site) reads the features back
    fed2 = _imaging_fed(tmp_path, {"site_a": 12, "site_b": 10})
    again = fed2.radiomics("mri", params=QUICK_PARAMS)
    assert len(calls) == 22
    pd.testing.assert_frame_equal(first.summary, again.summary)
    # other parameters: other cache entries
    fed2.radiomics("mri", params={**QUICK_PARAMS, "setting": {"binWidth": 10}})
    assert len(calls) == 44
    # the second run replaced the first's columns (more than 10 at once): one column per name
    assert sites_of(fed2)["site_a"].datasets["mri"].frame.columns.is_unique
    fed.close()
    fed2.close()


def test_parameters_from_yaml_and_bad_parameters(tmp_path: Path) -> None:
    fed = _imaging_fed(tmp_path, {"site_a": 10})
    params = tmp_path / "params.yaml"
    params.write_text(
        "setting:\n  binWidth: 25\nimageType:\n  Original: {}\nfeatureClass:\n  firstorder: []\n"
    )
    result = fed.radiomics("mri", params=params)
    assert all(n.startswith("original_firstorder_") for n in result.summary.index)
    assert result.params["setting"] == {"binWidth": 25}
    with pytest.raises(ParameterError, match="pyradiomics rejected"):
        fed.radiomics("mri", params={"setting": {"binWidth": "wide"}})
    with pytest.raises(ParameterError, match="unknown radiomics parameter sections"):
        fed.radiomics("mri", params={"settings": {}})
    with pytest.raises(ParameterError, match="not found"):
        fed.radiomics("mri", params=tmp_path / "missing.yaml")
    fed.close()


def test_radiomic_columns_in_cox_and_kmeans(tmp_path: Path) -> None:
    fed = _imaging_fed(tmp_path, {"site_a": 30, "site_b": 30, "site_c": 30})
    result = fed.radiomics("mri", params=QUICK_PARAMS)
    assert result.privacy.released_sites == ["site_a", "site_b", "site_c"]
    assert (result.summary["count"] == 90).all()
    volume = result.columns["original_shape_MeshVolume"]
    cox = fed.cox("mri", "pfs_months", "pfs_status", [volume], diagnostics=False)
    assert math.isfinite(cox.params_[volume])
    km = fed.kmeans("mri", [volume, result.columns["original_firstorder_Mean"]], k=2)
    assert km.cluster_sizes.sum() == 90
    fed.close()


def test_extraction_failure_leaves_features_missing(tmp_path: Path) -> None:
    """A mask without the label: that image fails at the site; the others are summarised."""
    import SimpleITK as sitk

    fed_root = tmp_path
    table = write_phantoms(fed_root / "site_a", 12)
    empty = sitk.ReadImage(str(fed_root / "site_a" / table["mask"][0])) * 0
    sitk.WriteImage(empty, str(fed_root / "site_a" / table["mask"][0]))
    fed = fh.Federation.local(
        {"site_a": {"mri": table}},
        policy=fh.Policy.unrestricted(),
        columns={"mri": IMAGING_COLUMNS},
        data_root=fed_root / "site_a",
    )
    result = fed.radiomics("mri", params=QUICK_PARAMS)
    assert result.n_images == {"site_a": 12}
    assert any("1 image could not be processed" in n for n in result.privacy.notes)
    kept = site_values(fed, "mri", [result.columns["original_firstorder_Mean"]])
    assert kept.iloc[:, 0].isna().sum() == 1
    fed.close()


# -- imaging datasets: checks on load ----------------------------------------------------------------
def _load(root: Path, table: pd.DataFrame, columns=IMAGING_COLUMNS, data_root=True):
    return fh.Federation.local(
        {"site_a": {"mri": table}},
        columns={"mri": columns},
        data_root=root if data_root else None,
    )


@pytest.fixture
def phantom_table(tmp_path: Path) -> pd.DataFrame:
    return write_phantoms(tmp_path, 6)


def _load_error(root: Path, table: pd.DataFrame, **kw) -> FedHemError:
    with pytest.raises(SchemaError) as info:
        _load(root, table, **kw)
    err = info.value
    assert err.site == "site_a" and err.dataset == "mri"
    assert str(root) not in str(err) and ".nrrd" not in str(err)  # never a path
    return err


def test_load_names_site_dataset_row_and_column(tmp_path: Path, phantom_table) -> None:
    t = phantom_table.copy()
    t.loc[2, "image"] = "nowhere.nrrd"
    err = _load_error(tmp_path, t)
    assert err.column == "image" and "patient_id=P002" in err.reason and "not found" in err.reason

    t = phantom_table.copy()
    t.loc[1, "mask"] = "../../etc/passwd"
    err = _load_error(tmp_path, t)
    assert err.column == "mask" and "outside the site's data root" in err.reason

    t = phantom_table.copy()
    t.loc[3, "mask"] = str(Path("/etc/hostname"))
    err = _load_error(tmp_path, t)
    assert "outside the site's data root" in err.reason and "hostname" not in str(err)

    t = phantom_table.copy()
    t.loc[0, "mask"] = None
    err = _load_error(tmp_path, t)
    assert err.column == "mask" and "needs its mask" in err.reason

    (tmp_path / "junk.nrrd").write_text("not an image")
    t = phantom_table.copy()
    t.loc[4, "image"] = "junk.nrrd"
    err = _load_error(tmp_path, t)
    assert "could not be read as an image" in err.reason and "patient_id=P004" in err.reason

    err = _load_error(tmp_path, phantom_table, data_root=False)
    assert "needs a data root" in err.reason

    t = phantom_table.copy()
    t.loc[5, "patient_id"] = "P000"
    err = _load_error(tmp_path, t)
    assert err.column == "patient_id" and "repeated" in err.reason

    # without a row key, rows are named by number
    err = _load_error(
        tmp_path,
        phantom_table.assign(image=["x.nrrd"] * 6),
        columns={"image": "image", "mask": "mask"},
    )
    assert err.reason.startswith("row 1:")


def test_mask_geometry_must_match(tmp_path: Path, phantom_table) -> None:
    import SimpleITK as sitk

    for change, what in (
        (lambda m: m.SetSpacing((1.0, 1.0, 2.5)), "spacing"),
        (lambda m: m.SetOrigin((0.0, 3.0, 0.0)), "origin"),
    ):
        mask = sitk.ReadImage(str(tmp_path / phantom_table["mask"][1]))
        change(mask)
        sitk.WriteImage(mask, str(tmp_path / "moved_mask.nrrd"))
        t = phantom_table.copy()
        t.loc[1, "mask"] = "moved_mask.nrrd"
        err = _load_error(tmp_path, t)
        assert err.column == "mask" and f"mask's {what} does not match" in err.reason
    cropped = sitk.ReadImage(str(tmp_path / phantom_table["mask"][1]))[:, :, :8]
    sitk.WriteImage(cropped, str(tmp_path / "cropped_mask.nrrd"))
    t = phantom_table.copy()
    t.loc[1, "mask"] = "cropped_mask.nrrd"
    assert "mask's size" in _load_error(tmp_path, t).reason


def test_patients_without_imaging_are_allowed(tmp_path: Path, phantom_table) -> None:
    t = pd.concat(
        [
            phantom_table,
            pd.DataFrame({"patient_id": ["N1"], "age": [40.0], "image": [None], "mask": [None]}),
        ],
        ignore_index=True,
    )
    fed = fh.Federation.local(
        {"site_a": {"mri": t}},
        policy=fh.Policy.unrestricted(),
        columns={"mri": IMAGING_COLUMNS},
        data_root=tmp_path,
    )
    result = fed.radiomics("mri", params=QUICK_PARAMS, where="image is not null")
    assert result.n_images == {"site_a": 6}
    fed.close()


def test_dicom_series_folder_equals_the_same_volume_as_nrrd(tmp_path: Path, phantom_table) -> None:
    """A DICOM series folder is read as one volume; its features equal the NRRD file's."""
    import SimpleITK as sitk

    saved = locale.setlocale(locale.LC_ALL)
    image = sitk.Cast(sitk.ReadImage(str(tmp_path / phantom_table["image"][0])), sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "int16.nrrd"))
    folder = tmp_path / "dicom"
    folder.mkdir()
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        for tag, value in (
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1"),  # series instance UID
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.2"),
            ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z))))),
            ("0020|0013", str(z + 1)),
            ("0018|0050", str(image.GetSpacing()[2])),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0008|0060", "MR"),
        ):
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(sl)
    # GDCM's DICOM writer leaves the process in the "C" locale (Python's default text encoding
    # becomes ASCII for later tests): restore it. Reading DICOM does not change it.
    locale.setlocale(locale.LC_ALL, saved)
    table = pd.DataFrame(
        {
            "patient_id": ["D1", "D2"],
            "image": ["dicom", "int16.nrrd"],
            "mask": [phantom_table["mask"][0]] * 2,
        }
    )
    fed = fh.Federation.local(
        {"site_a": {"mri": table}},
        policy=fh.Policy.unrestricted(),
        columns={"mri": IMAGING_COLUMNS},
        data_root=tmp_path,
    )
    result = fed.radiomics("mri", params=QUICK_PARAMS)
    kept = site_values(fed, "mri", list(result.columns.values()))
    np.testing.assert_allclose(kept.loc["D1"], kept.loc["D2"], rtol=1e-6)
    assert result.summary["count"].eq(2).all()
    fed.close()


def test_image_columns_are_only_for_radiomics(tmp_path: Path, phantom_table) -> None:
    fed = fh.Federation.local(
        {"site_a": {"mri": phantom_table}},
        policy=fh.Policy.unrestricted(),
        columns={"mri": IMAGING_COLUMNS},
        data_root=tmp_path,
    )
    with pytest.raises(SchemaError, match="image file paths") as info:
        fed.describe("mri", by="image")
    assert info.value.column == "image"
    with pytest.raises(SchemaError, match="image file paths"):
        fed.crosstab("mri", "mask", "patient_id")
    with pytest.raises(FedHemError, match="filter it only with 'is null'"):
        fed.describe("mri", columns=["age"], where="image == 'P001_image.nrrd'")
    assert (
        fed.describe("mri", columns=["age"], where="image is not null").table.loc["age", "count"]
        == 6
    )
    fed.close()


def test_radiomics_needs_an_imaging_dataset(demo) -> None:
    with pytest.raises(SchemaError, match="no image and mask columns"):
        demo.radiomics("aml")


def test_cache_keys_change_with_content(tmp_path: Path) -> None:
    from fedhem_kernel.site.imaging import file_digest

    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    first = file_digest(f)
    f.write_bytes(b"two!")
    assert file_digest(f) != first
    assert json.dumps(rad_params.canonical_params(None)) == "{}"
