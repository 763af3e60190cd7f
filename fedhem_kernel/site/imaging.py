"""Imaging datasets: a table whose ``image`` and ``mask`` columns hold file paths under the site's data root.

A data steward declares the two path columns by type (``image = "image"``, ``mask = "mask"`` in the
dataset's ``columns``), optionally a row key (``patient_id = { type = "category", key = true }``), and
the site's data root (``[site] data_root``, by default the folder of ``site.toml``). Paths are relative
to the root (absolute paths must lie inside it). An image is a file SimpleITK reads (NRRD, NIfTI, MHA,
...) or a folder holding one DICOM series; its mask is a label image of the same geometry.

On load every row is checked: both files exist inside the root and read as images, and the mask's size,
spacing, origin and direction agree with the image's. A failure is a :class:`SchemaError` naming the
site, dataset, column and row (``patient_id=SCD-017``, or ``row 17`` without a key). A message never
holds a path, so nothing outside the data root is named in a message that leaves the site. A row
whose image and mask are both missing is a patient without imaging: allowed, left out of radiomics.

Only ``fed.radiomics`` reads these columns; other analyses refuse them, and ``where=`` may only ask
``image is not null``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedhem_kernel.errors import SchemaError
from fedhem_kernel.site.schema import DatasetSchema

RULE = "imaging"
#: Relative tolerance on spacing, origin and direction when comparing an image and its mask.
GEOMETRY_TOLERANCE = 1e-5


class ImageReadError(Exception):
    """An image file or DICOM folder SimpleITK cannot read (the message stays at the site)."""


@dataclass(frozen=True)
class Geometry:
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def mismatch(self, other: Geometry) -> str | None:
        """The first property that differs from ``other`` (name only), or None."""
        if self.size != other.size:
            return "size"
        for name in ("spacing", "origin", "direction"):
            a = np.asarray(getattr(self, name), dtype=float)
            b = np.asarray(getattr(other, name), dtype=float)
            scale = max(1.0, float(np.max(np.abs(a), initial=0.0)))
            if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=GEOMETRY_TOLERANCE * scale):
                return name
        return None


def _sitk() -> Any:
    import SimpleITK as sitk

    return sitk


def dicom_series(folder: Path) -> list[str]:
    """The files of the (first) DICOM series in ``folder``, in slice order."""
    sitk = _sitk()
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise ImageReadError("no DICOM series in the folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def read_image(path: Path) -> Any:
    """The image at ``path`` (a file, or a DICOM series folder) as a SimpleITK image."""
    sitk = _sitk()
    try:
        if path.is_dir():
            return sitk.ReadImage(dicom_series(path))
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK's message quotes the path: keep it at the site
        raise ImageReadError(str(exc)) from None


def read_geometry(path: Path) -> Geometry:
    """Size, spacing, origin and direction, from the header only where the format allows."""
    sitk = _sitk()
    if path.is_dir():
        image = read_image(path)
        return Geometry(
            tuple(image.GetSize()),
            tuple(image.GetSpacing()),
            tuple(image.GetOrigin()),
            tuple(image.GetDirection()),
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(str(exc)) from None
    return Geometry(
        tuple(reader.GetSize()),
        tuple(reader.GetSpacing()),
        tuple(reader.GetOrigin()),
        tuple(reader.GetDirection()),
    )


def resolve(root: Path, value: str) -> Path | None:
    """``value`` (relative to ``root``, or absolute) as a path inside ``root``; None if outside."""
    p = Path(value)
    full = (p if p.is_absolute() else root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        return None
    return full


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a DICOM folder: of its files' names and bytes), memoised by mtime."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [f.stat() for f in files]
    memo = (
        str(path),
        sum(s.st_size for s in stats),
        max((s.st_mtime_ns for s in stats), default=0),
    )
    if memo in _DIGESTS:
        return _DIGESTS[memo]
    h = hashlib.sha256()
    for f in files:
        if path.is_dir():
            h.update(os.fsencode(f.relative_to(path).as_posix()) + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


@dataclass(frozen=True)
class ImageColumns:
    """The image and mask columns of an imaging dataset."""

    image: str
    mask: str


def image_columns(schema: DatasetSchema) -> ImageColumns | None:
    """The dataset's image and mask columns; None for a dataset without imaging.

    Exactly one of each is supported; anything else is a SchemaError.
    """
    images = [c.name for c in schema.columns.values() if c.dtype == "image"]
    masks = [c.name for c in schema.columns.values() if c.dtype == "mask"]
    if not images and not masks:
        return None
    if len(images) != 1 or len(masks) != 1:
        raise SchemaError(
            "an imaging dataset declares exactly one 'image' column and one 'mask' column",
            site=schema.site,
            dataset=schema.dataset,
            column=(images + masks)[0],
            rule=RULE,
        )
    return ImageColumns(images[0], masks[0])


def row_labels(frame: pd.DataFrame, key: str | None, rows: Sequence[int]) -> list[str]:
    """How a message names rows: ``patient_id=SCD-017`` with a key column, else ``row 17`` (1-based)."""
    if key is None:
        return [f"row {int(i) + 1}" for i in rows]
    return [f"{key}={frame[key].iloc[int(i)]}" for i in rows]


def check_imaging(
    schema: DatasetSchema, frame: pd.DataFrame, key: str | None, root: Path | None
) -> ImageColumns | None:
    """Check every row's image and mask (see the module docstring); returns the columns."""
    cols = image_columns(schema)
    if cols is None:
        return None
    err = {"site": schema.site, "dataset": schema.dataset, "rule": RULE}
    if root is None:
        raise SchemaError(
            "a dataset with image columns needs a data root (data_root=...)",
            column=cols.image,
            **err,
        )
    if not root.is_dir():
        raise SchemaError("the site's data root is not a folder", column=cols.image, **err)

    def fail(i: int, column: str, reason: str) -> SchemaError:
        return SchemaError(f"{row_labels(frame, key, [i])[0]}: {reason}", column=column, **err)

    images = frame[cols.image].to_numpy(dtype=object)
    masks = frame[cols.mask].to_numpy(dtype=object)
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        has_img, has_msk = not pd.isna(img), not pd.isna(msk)
        if not has_img and not has_msk:
            continue
        if has_img != has_msk:
            missing = cols.mask if has_img else cols.image
            raise fail(i, missing, "an image needs its mask and a mask its image")
        geometry = {}
        for column, value in ((cols.image, img), (cols.mask, msk)):
            path = resolve(root, str(value))
            if path is None:
                raise fail(i, column, "the path points outside the site's data root")
            if not path.exists():
                raise fail(i, column, "file not found under the site's data root")
            try:
                geometry[column] = read_geometry(path)
            except ImageReadError:
                raise fail(i, column, "the file could not be read as an image") from None
        differs = geometry[cols.mask].mismatch(geometry[cols.image])
        if differs is not None:
            raise fail(i, cols.mask, f"the mask's {differs} does not match the image's")
    return cols
