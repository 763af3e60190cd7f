"""The result of ``radiomics``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedhem_kernel.analyses.common.result_base import Result
from fedhem_kernel.errors import DisclosureError
from fedhem_kernel.protocol.report import PrivacyReport


# -- coordinator ------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class RadiomicsResult(Result):
    """Summary of radiomic features over the federation; the per-patient values stay at the sites.

    ``summary``: DataFrame indexed by pyradiomics feature name, columns ``count``, ``mean``, ``sd``,
    quantiles ``25%``/``50%``/``75%`` from pooled k-patient bins (``min``/``max`` only where every
    site allows them) and ``n_sites``. ``by_site``: count, mean and SD per site and feature.
    ``columns``: feature name -> the column each site now holds (for ``fed.cox``, ``fed.kmeans``,
    ``fed.describe``). ``n_images``: images in the cohort per site (failed extractions included:
    the notes say how many failed, when that number is 0 or >= k).
    """

    summary: pd.DataFrame
    by_site: pd.DataFrame
    columns: dict[str, str]
    n_images: dict[str, int]
    params: dict[str, Any]
    privacy: PrivacyReport

    @property
    def feature_names(self) -> list[str]:
        return list(self.summary.index)

    @property
    def features(self) -> pd.DataFrame:
        """Per-patient features are not released: this explains where they are instead."""
        raise DisclosureError(
            "per-patient radiomic features never leave the sites; they are kept there as columns "
            f"of dataset '{self.privacy.dataset}' (see .columns): use them in fed.describe, "
            "fed.cox, fed.kmeans or fed.combat",
            dataset=self.privacy.dataset,
            rule="row_level",
        )

    @property
    def title(self) -> str:
        n = sum(self.n_images.values())
        return f"radiomics on '{self.privacy.dataset}': {len(self.summary)} features, {n} images"

    @property
    def footnote(self) -> str:
        return (
            "Per-patient features stay at the sites as columns; quantiles from pooled "
            "site histograms (no patient's own value is released)."
        )
