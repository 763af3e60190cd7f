"""Seeded synthetic imaging for the demo federation: myeloma bone-marrow lesions on MRI.

The story: in multiple myeloma, focal lesions in the bone marrow on whole-body MRI carry
prognostic information beyond the clinical stage (Hillengass et al., J Clin Oncol
2010;28:1606-1610: more than one focal lesion predicts progression of smouldering myeloma;
IMWG imaging recommendations, Hillengass et al., Lancet Oncol 2019;20:e302-e312; both cited
from memory), and radiomic features of those lesions (size, shape, texture) have been proposed
as predictors of progression-free survival. Each demo site holds a small imaging sub-study,
``mm_imaging``: 40-60 patients (60 / 52 / 46 / 40, 198 in all, so that k-means with k = 3 is
allowed at every site under ``min_cell_count = 5``), one MRI volume and one lesion mask per
patient, next to clinical columns. The patients are invented and are not the rows of the ``mm``
table (their ids, e.g. ``KAR-MRI-001``, say so); the values are plausible, not calibrated.

What is simulated, per patient
------------------------------
* A small 3-D volume, 48 x 48 x 24 voxels of 1 x 1 x 2 mm (int16, NRRD), so that pyradiomics
  extracts first-order, shape and GLCM features in a few hundredths of a second.
* Background marrow: a smooth intensity around 380 with spatially correlated ("smoothed noise")
  texture and a gentle gradient (coil shading).
* ONE focal lesion, hyperintense (true mean about 700): an ellipsoid of random orientation whose
  surface is lobulated by low-order harmonics. Its true properties vary between patients:
  volume (log-normal, median 1400 mm^3, about 250-4000 mm^3, a little larger at higher R-ISS),
  elongation (long / short axis 1-1.8), lobulation (0-0.3), internal heterogeneity (standard
  deviation of the lesion's own correlated texture, log-normal, median 55, about 20-150) and
  texture grain. Its edge is blurred by partial volume (so the mean inside the mask is about
  665, not 700); the mask is the lesion itself (label 1, one connected component, at least
  3 mm from the border), with exactly the geometry (origin, spacing, direction) of the image.
* Scanner: each site has one scanner with its own intensity scale (x0.82 to x1.22), offset
  (-40 to +20) and white-noise level (SD 10 to 22). First-order and texture features therefore
  differ by site for the same tissue, which is what ComBat harmonisation removes; shape features
  do not depend on the scanner.
* Outcome: progression-free survival from a Weibull proportional-hazards model with the medians
  of the ``mm`` cohort by R-ISS stage (68 / 46 / 31 months at age 65, shape 1.1), an age effect
  (HR 1.025 per year), the site's small hazard ratio and the TRUE lesion properties: HR 1.8 per
  standard deviation of log volume and 1.65 per standard deviation of log heterogeneity
  (bigger, more heterogeneous lesions progress sooner). Deaths before progression compete;
  censoring (staggered entry, site follow-up, loss to follow-up) is the ``mm`` cohort's, which
  leaves about 85 events among the 198 patients.

Why: the association is strong enough to be found from the images alone, and the scanners
give harmonisation something to do. With the default seed, a pooled lifelines Cox model on
pyradiomics features (default settings) of all sites, log ``original_shape_MeshVolume`` plus
``original_firstorder_Entropy``, gives coefficients 0.62 (p = 0.0008) and 0.86 (p = 0.0007);
the mean lesion intensity (``original_firstorder_Mean``) is about 515 / 665 / 715 / 845 at
Saint-Louis / Karolinska / Bari / Charité, for the same tissue, while the volumes do not differ
by site.

Reproducibility: the table is drawn from ``_rng(site, seed, "mm_imaging")`` and each patient's
voxels from ``_rng(site, seed, "mm_imaging|<patient id>")`` (SHA-256 seeding, as in
``cohorts.py``), so the table and the file bytes are identical for the same site and seed.
The files are written once per site into a cache folder, atomically (a temporary folder renamed
into place, with a marker holding the seed and format version written last).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from fedhem_kernel.demo.cohorts import (
    DEMO_SITES,
    _censoring,
    _choice,
    _observe,
    _profile,
    _rng,
    _sex,
    _truncated_normal,
    _weibull_ph,
)

__all__ = [
    "IMAGING_COLUMN_TYPES",
    "IMAGING_DATASET",
    "IMAGING_KEY",
    "IMAGING_SITES",
    "demo_imaging_root",
    "imaging_column_types",
    "imaging_table",
    "write_demo_imaging",
    "write_site_imaging",
]

IMAGING_DATASET = "mm_imaging"
IMAGING_KEY = "patient_id"
IMAGING_COLUMN_TYPES: dict[str, dict[str, str]] = {
    "patient_id": {"type": "category"},
    "age": {"type": "float"},
    "sex": {"type": "category"},
    "r_iss": {"type": "category"},
    "pfs_months": {"type": "float", "unit": "months"},
    "pfs_status": {"type": "int"},
    "scanner": {"type": "category"},
    "image": {"type": "image"},
    "mask": {"type": "mask"},
}


def imaging_column_types() -> dict[str, dict[str, object]]:
    """``IMAGING_COLUMN_TYPES`` as a site declares them, with ``patient_id`` as the row key."""
    out: dict[str, dict[str, object]] = {c: dict(spec) for c, spec in IMAGING_COLUMN_TYPES.items()}
    out[IMAGING_KEY]["key"] = True
    return out


# Version of the phantom generator and file layout: bump it whenever the voxels change, so that
# cached folders of an older version are not reused (it is part of the cache path and marker).
_FORMAT_VERSION = 1
_MARKER = "fedhem-demo-imaging.json"

# Image geometry: numpy array order (z, y, x); SimpleITK size (x, y, z) = (48, 48, 24).
_SHAPE = (24, 48, 48)
_SPACING = (1.0, 1.0, 2.0)  # mm, (x, y, z)
_MARGIN_MM = 3.0  # the lesion keeps at least this distance from the image border

_STAGES = ("I", "II", "III")
_R_ISS_PROBS = (0.28, 0.62, 0.10)  # Palumbo et al. 2015, as in cohorts.py
_PFS_MEDIAN = (68.0, 46.0, 31.0)  # months at age 65, by R-ISS (the mm cohort's)
_PFS_SHAPE = 1.1

# True lesion properties (before the scanner): log-normal volume and heterogeneity.
_LOG_VOLUME = (float(np.log(1400.0)), 0.6)  # mm^3: median, SD of the log
_VOLUME_RANGE = (250.0, 4000.0)
_LOG_HETEROGENEITY = (float(np.log(55.0)), 0.45)  # SD of the lesion texture (intensity units)
_HETEROGENEITY_RANGE = (18.0, 160.0)
_BETA_VOLUME = 0.6  # log hazard ratio per SD of log volume
_BETA_HETEROGENEITY = 0.5  # log hazard ratio per SD of log heterogeneity
_LESION_MEAN = (700.0, 35.0)
_MARROW_MEAN, _MARROW_TEXTURE = 380.0, 28.0


@dataclass(frozen=True)
class _Scanner:
    """How one site's MRI scanner maps tissue to stored intensities."""

    name: str
    scale: float
    offset: float
    noise_sd: float
    n_patients: int


_SCANNERS: dict[str, _Scanner] = {
    "karolinska": _Scanner("MR-A 1.5T", 1.00, 0.0, 12.0, 60),
    "charite": _Scanner("MR-B 3T", 1.22, 20.0, 18.0, 52),
    "hopital_st_louis": _Scanner("MR-C 1.5T", 0.82, -30.0, 10.0, 46),
    "policlinico_bari": _Scanner("MR-D 3T", 1.12, -40.0, 22.0, 40),
}
IMAGING_SITES: tuple[str, ...] = tuple(_SCANNERS)
_SCANNER_LEVELS = tuple(s.name for s in _SCANNERS.values())


def _scanner(site: str) -> _Scanner:
    _profile(site)  # the error message for an unknown site
    return _SCANNERS[site]


# --------------------------------------------------------------------------------------------
# the table (clinical columns and true lesion properties)
# --------------------------------------------------------------------------------------------


def _patients(site: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(public table, true lesion parameters) of one site; the parameters never leave this module."""
    p = _profile(site)
    sc = _scanner(site)
    n = sc.n_patients
    rng = _rng(site, seed, IMAGING_DATASET)

    age = np.round(_truncated_normal(rng, 66.0 + p.age_shift, 10.0, 30.0, 90.0, n), 1)
    sex = _sex(rng, n, 0.56)
    tilt = p.adverse_tilt * np.arange(3)
    r_iss = _choice(rng, np.exp(np.tile(np.log(_R_ISS_PROBS) + tilt, (n, 1))), _STAGES)
    ri = np.array([_STAGES.index(s) for s in r_iss])

    # True lesion properties.
    z_vol = rng.standard_normal(n)
    log_volume = _LOG_VOLUME[0] + 0.15 * (ri - 1) + _LOG_VOLUME[1] * z_vol
    log_volume = np.clip(log_volume, *np.log(_VOLUME_RANGE))
    z_het = rng.standard_normal(n)
    log_het = np.clip(
        _LOG_HETEROGENEITY[0] + _LOG_HETEROGENEITY[1] * z_het, *np.log(_HETEROGENEITY_RANGE)
    )
    truth = pd.DataFrame(
        {
            "volume_mm3": np.exp(log_volume),
            "elongation": rng.uniform(1.0, 1.8, n),
            "triaxial": rng.uniform(0.85, 1.15, n),
            "lobulation": rng.uniform(0.0, 0.3, n),
            "lobes": rng.integers(2, 5, n),
            "phase_1": rng.uniform(0.0, 2 * np.pi, n),
            "phase_2": rng.uniform(0.0, 2 * np.pi, n),
            "yaw": rng.uniform(0.0, 2 * np.pi, n),
            "pitch": rng.uniform(0.0, np.pi, n),
            "roll": rng.uniform(0.0, 2 * np.pi, n),
            "heterogeneity": np.exp(log_het),
            "grain_vox": rng.uniform(0.7, 1.5, n),
            "lesion_mean": rng.normal(*_LESION_MEAN, n),
        }
    )
    # Lesion centre as a fraction (-1..1) of the room left in x, y, z once the lesion fits.
    truth[["centre_x", "centre_y", "centre_z"]] = rng.uniform(-1.0, 1.0, (n, 3))

    # Outcome: Weibull PH on the TRUE (standardised) lesion properties, age, R-ISS and site.
    lp = (
        0.025 * (age - 65.0)
        + _BETA_VOLUME * (log_volume - _LOG_VOLUME[0]) / _LOG_VOLUME[1]
        + _BETA_HETEROGENEITY * (log_het - _LOG_HETEROGENEITY[0]) / _LOG_HETEROGENEITY[1]
        + np.log(p.hazard_ratio)
    )
    t_prog = _weibull_ph(rng, np.take(_PFS_MEDIAN, ri), _PFS_SHAPE, lp)
    death_rate = 0.004 * np.exp(0.08 * (age - 65.0)) / 12.0  # deaths before progression
    t_other = rng.exponential(1.0 / death_rate)
    pfs_months, pfs_status = _observe(np.minimum(t_prog, t_other), _censoring(rng, p, n))

    ids = [f"{p.prefix}-MRI-{i:03d}" for i in range(1, n + 1)]
    table = pd.DataFrame(
        {
            "patient_id": ids,
            "age": age.astype(np.float64),
            "sex": pd.Categorical(sex, categories=["F", "M"]),
            "r_iss": pd.Categorical(r_iss, categories=list(_STAGES)),
            "pfs_months": pfs_months.astype(np.float64),
            "pfs_status": pfs_status.astype(np.int64),
            "scanner": pd.Categorical([sc.name] * n, categories=list(_SCANNER_LEVELS)),
            "image": [f"{IMAGING_DATASET}/images/{i}_image.nrrd" for i in ids],
            "mask": [f"{IMAGING_DATASET}/masks/{i}_mask.nrrd" for i in ids],
        }
    )
    truth.index = pd.Index(ids, name=IMAGING_KEY)
    return table, truth


def imaging_table(site: str, seed: int = 2026) -> pd.DataFrame:
    """The ``mm_imaging`` table of one demo site, without writing any file.

    Columns as in ``IMAGING_COLUMN_TYPES``: ``patient_id`` (the row key), ``age``, ``sex``,
    ``r_iss``, ``pfs_months``, ``pfs_status`` (1 = progression or death), ``scanner`` and the
    ``image`` / ``mask`` paths relative to the site's data root (``mm_imaging/images/<id>_image.nrrd``,
    ``mm_imaging/masks/<id>_mask.nrrd``), as written by ``write_site_imaging``. Deterministic in
    ``(site, seed)``; raises ``ValueError`` for a site not in ``DEMO_SITES``.
    """
    return _patients(site, seed)[0]


# --------------------------------------------------------------------------------------------
# the voxels
# --------------------------------------------------------------------------------------------


# Voxel-centre coordinates (mm) relative to the image centre, per array axis (z, y, x).
_AXES_MM = tuple(
    (np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(_SHAPE, _SPACING[::-1], strict=True)
)
_HALF_FOV = np.array([_AXES_MM[2][-1], _AXES_MM[1][-1], _AXES_MM[0][-1]])  # x, y, z (mm)
# Coil shading: a gentle intensity gradient (units per mm) across the field of view.
_SHADING = (0.6 * _AXES_MM[2][None, None, :] + 0.4 * _AXES_MM[1][None, :, None]).astype(np.float32)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix from z-x-z Euler angles (columns: the lesion's axes in world space)."""
    cy, cp, cr = np.cos(yaw), np.cos(pitch), np.cos(roll)
    sy, sp, sr = np.sin(yaw), np.sin(pitch), np.sin(roll)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    rz2 = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return rz @ rx @ rz2


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, float, float]
) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation (float32, (z, y, x))."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox)
    return field / np.float32(field.std())


def _lesion_geometry(truth: pd.Series) -> tuple[np.ndarray, float, np.ndarray]:
    """Semi-axes (mm), maximal radius (mm) and centre (x, y, z, mm from the image centre)."""
    r = (3.0 * truth["volume_mm3"] / (4.0 * np.pi)) ** (1.0 / 3.0)
    e, t = truth["elongation"], truth["triaxial"]
    axes = np.array([r * e ** (2.0 / 3.0), r * e ** (-1.0 / 3.0) * t, r * e ** (-1.0 / 3.0) / t])
    extent = float(axes.max() * (1.0 + truth["lobulation"]))
    room = np.maximum(_HALF_FOV - extent - _MARGIN_MM, 0.0)
    return axes, extent, truth[["centre_x", "centre_y", "centre_z"]].to_numpy(float) * room


def _phantom(
    truth: pd.Series, sc: _Scanner, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(image int16, mask uint8) arrays in (z, y, x) order for one patient."""
    axes, extent, centre = _lesion_geometry(truth)

    # The lesion is computed in its bounding box (plus 3 voxels for the partial-volume blur).
    box = []
    for coords, c in zip(_AXES_MM, centre[::-1], strict=True):
        lo = int(np.searchsorted(coords, c - extent)) - 3
        hi = int(np.searchsorted(coords, c + extent, side="right")) + 3
        box.append(slice(max(lo, 0), min(hi, coords.shape[0])))
    gz, gy, gx = np.meshgrid(*(a[b] for a, b in zip(_AXES_MM, box, strict=True)), indexing="ij")
    offsets = np.stack([gx - centre[0], gy - centre[1], gz - centre[2]], axis=-1)
    scaled = offsets @ _rotation(truth["yaw"], truth["pitch"], truth["roll"]) / axes
    rho = np.sqrt((scaled**2).sum(axis=-1))
    cos_theta = np.clip(scaled[..., 2] / np.maximum(rho, 1e-9), -1.0, 1.0)
    theta = np.arccos(cos_theta)
    phi = np.arctan2(scaled[..., 1], scaled[..., 0])
    # Lobulated surface: radius 1 + lobulation * g(direction), |g| <= 1 (star-shaped, connected).
    g = 0.55 * np.sin(theta) * np.cos(truth["lobes"] * phi + truth["phase_1"]) + 0.45 * np.cos(
        2.0 * theta + truth["phase_2"]
    )
    inside = rho <= 1.0 + truth["lobulation"] * g

    # Tissue: marrow background, lesion with its own correlated texture, partial-volume edge.
    tissue = _MARROW_MEAN + _MARROW_TEXTURE * _smooth_noise(rng, _SHAPE, (1.2, 2.5, 2.5))
    tissue += _SHADING
    grain = truth["grain_vox"]
    lesion = truth["lesion_mean"] + truth["heterogeneity"] * _smooth_noise(
        rng, inside.shape, (grain / 2.0, grain, grain)
    )
    weight = ndimage.gaussian_filter(inside.astype(np.float32), (0.35, 0.7, 0.7))
    region = tuple(box)
    tissue[region] += weight * (lesion - tissue[region])

    # Scanner: scale, offset and white noise.
    noise = rng.standard_normal(_SHAPE, dtype=np.float32)
    stored = sc.scale * tissue + sc.offset + sc.noise_sd * noise
    image = np.clip(np.rint(stored), -32768, 32767).astype(np.int16)
    mask = np.zeros(_SHAPE, dtype=np.uint8)
    mask[region] = inside
    return image, mask


def _to_sitk(array: np.ndarray):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(_SPACING)
    img.SetOrigin((0.0, 0.0, 0.0))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _is_complete(folder: Path, site: str, seed: int) -> bool:
    """True when ``folder`` holds a finished write of this site, seed and format version."""
    try:
        marker = json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if (
        not isinstance(marker, dict)
        or marker.get("version") != _FORMAT_VERSION
        or marker.get("site") != site
        or marker.get("seed") != int(seed)
        or not isinstance(marker.get("files"), dict)
    ):
        return False
    for rel, size in marker["files"].items():
        try:
            if (folder / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _write_folder(folder: Path, site: str, seed: int) -> None:
    """Write images/, masks/ and (last) the marker of one site into ``folder``."""
    import SimpleITK as sitk

    table, truth = _patients(site, seed)
    sc = _scanner(site)
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    sizes: dict[str, int] = {}
    for pid, image_rel, mask_rel in zip(
        table["patient_id"], table["image"], table["mask"], strict=True
    ):
        rng = _rng(site, seed, f"{IMAGING_DATASET}|{pid}")
        image, mask = _phantom(truth.loc[pid], sc, rng)
        for rel, array in ((image_rel, image), (mask_rel, mask)):
            inside = rel.split("/", 1)[1]  # the path below mm_imaging/
            path = folder / inside
            sitk.WriteImage(_to_sitk(array), str(path), useCompression=True)
            sizes[inside] = path.stat().st_size
    marker = {"version": _FORMAT_VERSION, "site": site, "seed": int(seed), "files": sizes}
    (folder / _MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True), encoding="utf-8")


def write_site_imaging(site: str, root: str | Path, seed: int = 2026) -> pd.DataFrame:
    """Write the NRRD images and masks of one demo site under ``root``; return its table.

    ``root`` is the site's data root: the files go to ``root/mm_imaging/images/<id>_image.nrrd``
    and ``root/mm_imaging/masks/<id>_mask.nrrd``, and the returned table (see ``imaging_table``)
    names them by paths relative to ``root``. Nothing else under ``root`` is touched.

    The folder is written under a temporary name and renamed into place, with a marker (site,
    seed, format version, file sizes) written last, so a crash never leaves a half-written
    folder under the final name. A complete folder for the same site, seed and version is
    reused without writing; an incomplete or different one is replaced.
    """
    root = Path(root).expanduser()
    table = imaging_table(site, seed)
    target = root / IMAGING_DATASET
    if _is_complete(target, site, seed):
        return table
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{IMAGING_DATASET}-", dir=root))
    try:
        _write_folder(staging, site, seed)
        _install(staging, target, site, seed)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return table


def _install(staging: Path, target: Path, site: str, seed: int) -> None:
    """Rename the finished ``staging`` folder to ``target``, replacing an incomplete one."""
    for _ in range(5):
        try:
            os.rename(staging, target)  # atomic; fails while a non-empty target exists
            return
        except OSError:
            if _is_complete(target, site, seed):  # written meanwhile by another process
                shutil.rmtree(staging, ignore_errors=True)
                return
        aside = target.with_name(f".{target.name}-old-{uuid.uuid4().hex}")
        try:
            os.rename(target, aside)
        except FileNotFoundError:  # another process moved it first: try again
            continue
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not replace the demo imaging folder {target}")


def demo_imaging_root(seed: int = 2026) -> Path:
    """The cache folder where the demo imaging files of ``seed`` live (not created here).

    ``$FEDHEM_CACHE/demo-imaging-v1-<seed>`` if ``FEDHEM_CACHE`` is set, otherwise
    ``$XDG_CACHE_HOME/fedhem/...`` or ``~/.cache/fedhem/demo-imaging-v1-<seed>``. Each site's
    files go to a sub-folder named after the site (see ``write_demo_imaging``).
    """
    name = f"demo-imaging-v{_FORMAT_VERSION}-{int(seed)}"
    env = os.environ.get("FEDHEM_CACHE", "").strip()
    if env:
        return Path(env).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedhem" / name


def write_demo_imaging(
    seed: int = 2026, root: str | Path | None = None
) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Write (or reuse) every demo site's imaging files: ``site -> (site data root, table)``.

    Site ``s`` gets ``root/s`` (default root: ``demo_imaging_root(seed)``) as its data root.
    """
    base = Path(root).expanduser() if root is not None else demo_imaging_root(seed)
    out = {}
    for site in DEMO_SITES:
        site_root = base / site
        out[site] = (site_root, write_site_imaging(site, site_root, seed))
    return out
