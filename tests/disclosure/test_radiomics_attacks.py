"""Adversarial checks of fed.radiomics under the default policy (k = 5).

A spy records every reply that crosses from a site. A filter down to one image, a cohort with fewer
than k images, a request for per-patient features, a group of images that differences an earlier
release and a few failed extractions are refused or suppressed with a reason and no value; every
released count is >= k and no message carries one patient's feature value.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import without_secure_sums  # noqa: E402
from imaging_helpers import IMAGING_COLUMNS, QUICK_PARAMS, write_phantoms  # noqa: E402
from sites import sites_of

import fedhem_kernel as fh  # noqa: E402
from fedhem_kernel.errors import DisclosureError  # noqa: E402
from fedhem_kernel.protocol.messages import SiteRequest  # noqa: E402

K = 5


def federation(root: Path, tables: dict[str, pd.DataFrame], secure: bool = True) -> fh.Federation:
    """The sites (``secure=False``: outside secure sums, each releasing its own summary)."""
    datasets = {site: {"mri": t} for site, t in tables.items()}
    data_root = {site: root / site for site in tables}
    if not secure:
        return without_secure_sums(
            datasets, fh.Policy(), columns={"mri": IMAGING_COLUMNS}, data_root=data_root
        )
    return fh.Federation.local(
        datasets, policy=fh.Policy(), columns={"mri": IMAGING_COLUMNS}, data_root=data_root
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attacks")


@pytest.fixture(scope="module")
def tables(root: Path) -> dict[str, pd.DataFrame]:
    return {
        "site_a": write_phantoms(root / "site_a", 12, seed=1, prefix="A"),
        "site_b": write_phantoms(root / "site_b", 10, seed=2, prefix="B"),
    }


def _without_images(table: pd.DataFrame, n: int) -> pd.DataFrame:
    extra = pd.DataFrame(
        {
            "patient_id": [f"N{i}" for i in range(n)],
            "age": 50.0 + np.arange(n),
            "image": None,
            "mask": None,
        }
    )
    return pd.concat([table, extra], ignore_index=True)


@pytest.mark.parametrize("secure", [True, False], ids=["pooled", "per-site"])
def test_released_messages_hold_counts_of_k_or_more_and_no_patient_value(
    root: Path, tables, releases, secure
) -> None:
    """Pooled, the summary is describe's secure sums (masked replies only); per site, each
    site's summary holds counts of k or more and no patient's value."""
    fed = federation(root, tables, secure)
    result = fed.radiomics("mri", params=QUICK_PARAMS)
    # the per-patient values kept at site_a: none of them may appear in any message
    kept = sites_of(fed)["site_a"].datasets["mri"].frame[list(result.columns.values())]
    values = set(np.round(kept.to_numpy().ravel(), 9))
    for reply in releases:
        payload = reply.payload or {}
        if "datasets" in payload or "bundle" in payload:  # the catalog; secure sums' key bundles
            continue
        assert set(payload) <= {"done", "total", "cells", "features", "n_images", "secure"}
        assert not (secure and "cells" in payload)  # pooled: no site's own summary
        if "total" in payload:
            assert payload["total"] >= K
        if "cells" in payload:
            assert payload["n_images"] >= K
            for cell in payload["cells"]:
                if "counts" in cell:
                    assert (np.asarray(cell["counts"]) >= K).all()
                    assert len(cell["counts"]) <= payload["n_images"] // K
                # min/max are off by default: the histogram edges are midpoints, means over >= k
                assert np.isnan(cell["edges"][0]) and np.isnan(cell["edges"][-1])
                if reply.site == "site_a":
                    released = {round(float(cell["mean"]), 9), *np.round(cell["means"], 9)}
                    assert not (released & values), cell["column"]
    fed.close()


def test_where_down_to_one_image_is_refused(root: Path, tables) -> None:
    fed = federation(root, tables)
    with pytest.raises(DisclosureError) as info:
        fed.radiomics("mri", params=QUICK_PARAMS, where="patient_id == 'A003'")
    assert "ledger" in str(info.value)
    # a cohort of enough patients, but only one of them with an image
    t = {"site_a": _without_images(tables["site_a"].iloc[:1], 8)}
    fed = federation(root, t)
    with pytest.raises(DisclosureError, match=f"no group of {K} or more images") as info:
        fed.radiomics("mri", params=QUICK_PARAMS)
    assert info.value.rule == "min_cell_count"
    assert "A000" not in str(info.value) and ".nrrd" not in str(info.value)
    fed.close()


def test_a_request_for_per_patient_features_is_refused(root: Path, tables) -> None:
    fed = federation(root, tables)
    result = fed.radiomics("mri", params=QUICK_PARAMS)
    with pytest.raises(DisclosureError, match="never leave the sites") as info:
        result.features  # noqa: B018 - the attribute a user would try
    assert info.value.rule == "row_level"
    # the same, sent to a site by hand as the engine would
    site = sites_of(fed)["site_a"]
    for step in ("radiomics_extract", "radiomics_keep"):
        reply = site.handle(
            SiteRequest(step, "mri", {"params": QUICK_PARAMS, "run": "x", "release": "features"})
        )
        assert reply.status == "refused" and reply.payload is None
        assert reply.error["rule"] == "row_level"
    fed.close()


def test_images_a_few_patients_away_from_an_earlier_release_leave_out_k(
    root: Path, tables, releases
) -> None:
    """All 15 patients were described; 12 have images: summarising those 12 would tell the other
    three apart (a difference of 3 < k). The site leaves out k (the three and two more, in its
    secret order) before any reply counts the images; with 5 without images, those 5."""
    for without, summarised in ((3, 12 - 2), (K, 12)):
        fed = federation(root, {"site_a": _without_images(tables["site_a"], without)})
        fed.describe("mri", columns=["age"])
        assert fed.radiomics("mri", params=QUICK_PARAMS).n_images == {"site_a": summarised}
        fed.close()


def test_a_few_failed_images_leave_out_k_from_the_summary(
    tmp_path: Path,
) -> None:
    import SimpleITK as sitk

    table = write_phantoms(tmp_path / "site_a", 12, seed=3, prefix="F")
    for i in (0, 1):  # two masks without the label: extraction fails for those patients
        path = tmp_path / "site_a" / table["mask"][i]
        sitk.WriteImage(sitk.ReadImage(str(path)) * 0, str(path))
    fed = federation(tmp_path, {"site_a": table}, secure=False)
    result = fed.radiomics("mri", params=QUICK_PARAMS)
    note = [n for n in result.privacy.notes if "could not be processed" in n]
    assert note and f"fewer than {K} images" in note[0] and "2" not in note[0]
    # per site: the summary leaves out k, the two that failed and three more (the secret order)
    assert (result.summary["count"] == 12 - K).all()
    fed.close()
    # pooled: the count is of the images with features, perturbed (within 2 of 10), as a
    # table would count them; the means are over the rows the ledger keeps
    fed = federation(tmp_path, {"site_a": table})
    result = fed.radiomics("mri", params=QUICK_PARAMS)
    assert ((result.summary["count"] - 10).abs() <= 2).all()
    assert result.by_site.empty
    fed.close()


@pytest.mark.parametrize(
    "setting",
    [
        {"minimumROISize": 400},
        {"minimumROIDimensions": 3},
        {"label": 2},
        {"resegmentRange": [-50, 50]},
    ],
)
def test_settings_that_decide_which_images_fail_are_the_sites(root: Path, tables, setting) -> None:
    """The smallest ROI, the mask's label or a re-segmentation range, varied by a researcher,
    would bisect lesion sizes and intensities through which extractions fail (a failure shows in
    the counts); they are refused in the researcher's process, and again at the site."""
    fed = federation(root, tables)
    params = {**QUICK_PARAMS, "setting": {**QUICK_PARAMS.get("setting", {}), **setting}}
    with pytest.raises(fh.ParameterError, match="the site's, not the request's"):
        fed.radiomics("mri", params=params)
    reply = sites_of(fed)["site_a"].handle(
        SiteRequest("radiomics_extract", "mri", {"params": params, "run": "x"})
    )
    assert reply.status == "error" and reply.payload is None
    assert "not the request's" in reply.error["reason"] and reply.error["site"] == "site_a"
    fed.close()


def test_those_settings_at_pyradiomics_defaults_are_answered(root: Path, tables) -> None:
    fed = federation(root, tables)
    setting = {**QUICK_PARAMS.get("setting", {}), "label": 1, "minimumROISize": None}
    result = fed.radiomics("mri", params={**QUICK_PARAMS, "setting": setting})
    assert result.privacy.released_sites == ["site_a", "site_b"]
    fed.close()
