"""Derived columns: values an analysis step leaves at the site for later queries.

A site step calls ``data.derive(column, values, dtype, source)`` (one value per cohort row, e.g.
k-means' cluster labels); once the step has succeeded the executor calls :func:`add_derived`, which
returns the dataset with the column added (missing outside the step's cohort) or replaced, and its
schema entry marked ``derived=source`` so the catalog lists it. The values never leave the site: later
queries use the column like any other (``by=``, ``group=``, ``where=``), under the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd

from fedhem_kernel.site.datasets import Dataset
from fedhem_kernel.site.schema import ColumnSpec, DatasetSchema
from fedhem_kernel.site.steps import DerivedColumn


def _full_column(ds: Dataset, col: DerivedColumn) -> np.ndarray:
    values = col.values
    assert values is not None
    rows = values.index.to_numpy()
    if col.dtype == "category":  # strings, None where missing (as loaded category columns)
        full = np.full(ds.n_rows, None, dtype=object)
        full[rows] = values.to_numpy(dtype=object)
        return full
    full = np.full(ds.n_rows, np.nan)
    full[rows] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return full


def add_derived(ds: Dataset, columns: Mapping[str, DerivedColumn]) -> Dataset:
    """The dataset with each derived column added, replaced or (``values=None``) dropped."""
    specs = dict(ds.schema.columns)
    drop: list[str] = []
    new: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        old = specs.get(name)
        if old is not None and old.derived is None:
            continue  # a loaded column is never replaced (SiteData.derive refuses it already)
        drop.append(name)
        new.pop(name, None)
        specs.pop(name, None)
        if col.values is not None:
            new[name] = _full_column(ds, col)
            specs[name] = ColumnSpec(
                name,
                col.dtype,  # type: ignore[arg-type]
                None,
                col.source or "derived",
                levels=col.levels,
            )
    frame = ds.frame.copy(deep=False)  # shares the other columns' arrays: ds.frame stays as it was
    many = len(new) > 10  # all at once: a radiomics run adds a hundred columns
    for name in drop:
        # one being replaced is set below in place, unless it is concatenated (then it must go:
        # a frame with two columns of one name reads as a table under that name)
        if name in frame.columns and (many or name not in new):
            del frame[name]
    if many:
        frame = pd.concat([frame, pd.DataFrame(new, index=frame.index)], axis=1)
    else:
        for name, values in new.items():
            frame[name] = values
    return replace(ds, frame=frame, schema=DatasetSchema(ds.schema.site, ds.name, specs))
