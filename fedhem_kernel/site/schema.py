"""Column types of a site's dataset (declared in the site TOML or inferred from the table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedhem_kernel.errors import SchemaError

DType = Literal["float", "int", "bool", "category", "image", "mask"]
DTYPES: tuple[str, ...] = ("float", "int", "bool", "category", "image", "mask")
#: Columns holding file paths (an image, or its segmentation mask) relative to the site's data root:
#: only ``fed.radiomics`` reads them; no other analysis, filter or grouping may use them.
IMAGE_DTYPES: tuple[str, ...] = ("image", "mask")


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its name, its type, (for times) its unit and (numbers) its public bounds."""

    name: str
    dtype: DType
    unit: str | None = None
    derived: str | None = None  # made at the site by an analysis (e.g. "kmeans"), not loaded
    #: The range the data steward declares for a numeric column (public, never read from the
    #: data): DP mode clips values to it (privacy/dp_values.py).
    bounds: tuple[float, float] | None = None
    #: The levels the data steward declares for a grouping column (public, never read from the
    #: data): DP mode names only these (analyses/levels/site.py).
    levels: tuple[str, ...] | None = None

    @property
    def is_numeric(self) -> bool:
        return self.dtype in ("float", "int", "bool")

    @property
    def is_path(self) -> bool:
        """An image or mask column: file paths, never released or used outside radiomics."""
        return self.dtype in IMAGE_DTYPES


@dataclass(frozen=True)
class DatasetSchema:
    """The columns of one dataset at one site (names and types only, never values)."""

    site: str
    dataset: str
    columns: dict[str, ColumnSpec] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def column(self, name: str) -> ColumnSpec:
        try:
            return self.columns[name]
        except KeyError:
            raise SchemaError(
                "no such column", site=self.site, dataset=self.dataset, column=name
            ) from None
