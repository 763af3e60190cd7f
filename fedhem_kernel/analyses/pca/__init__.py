"""PCA from the federated covariance matrix.

Site step (``pca_stats``): for the patients with every feature, their number ``n``, the feature means
and the centred cross-product matrix ``(X - mean)ᵀ(X - mean)`` (p x p). Combine: the exact pooled mean
and covariance (Chan's formula for matrices), then the eigendecomposition of the covariance, as
scikit-learn's ``PCA`` does with its ``covariance_eigh`` solver (chosen by ``svd_solver="auto"`` when
there are at least 10 rows per feature): eigenvalues in decreasing order, clipped at 0, and each
component's sign fixed so that its largest-magnitude loading is positive (``svd_flip`` with
``u_based_decision=False``). ``standardize=True`` divides by the pooled population SD first
(``StandardScaler``), i.e. PCA of the correlation structure. Under ``Policy.unrestricted()`` the
components, explained variance (ratio) and mean equal scikit-learn's on the pooled rows.

Release rules (at the site, unless the policy is unrestricted): the rules of
:mod:`fedhem_kernel.analyses.common.site_features` (numeric features, 0 or >= k rows left out for missing
values, no feature singling out 1..k-1 patients, n >= k), and ``max_parameters``: at least 10 patients
per feature at the site (the same 1-in-10 rule as Cox). ``XᵀX`` and the sums of few rows determine much
of those rows; with 10 rows per feature they do not.

:meth:`PCAResult.transform` maps points given in the original units (e.g. k-means cluster centres) to
component scores; :meth:`PCAResult.plot_centers` draws the centres of a k-means result on two
components (no patient is plotted: only centres, sized by their cluster's released size).
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import BOOL, COLUMNS, NONE, Params, integer

ROWS_PER_FEATURE = 10


def dp_fields(p: int) -> int:
    """Fields per patient of a DP PCA release of ``p`` features: the count, Σt and the upper
    triangle of Σ4(t-½)(t-½)ᵀ, each of weight 1 (privacy/dp_values.py)."""
    return 1 + p + p * (p + 1) // 2


#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "features": (COLUMNS,),
    "n_components": (integer(1), NONE),
    "standardize": (BOOL,),
}
