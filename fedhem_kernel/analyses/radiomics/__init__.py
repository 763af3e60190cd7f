"""radiomics: pyradiomics features extracted at each site; only a privacy-checked summary leaves it.

``fed.radiomics(dataset, params=None, where=None)`` runs on an imaging dataset (a table with one
``image`` and one ``mask`` path column, see :mod:`fedhem_kernel.site.imaging`). We use the
``pyradiomics-bhklab`` fork (import name ``radiomics``): PyPI's ``pyradiomics`` does not build on
Python >= 3.11, the fork installs as a wheel and computes the same features (it reproduces
pyradiomics' own baseline values, see ``tests/test_radiomics.py``).

Protocol:

1. ``radiomics_extract`` (repeated): each site extracts features for the cohort's rows that have an
   image, for about ``BUDGET_SECONDS`` per round, and replies with how many images it has done out
   of how many (shown per site in the notebook's progress widget). Sites work in parallel (the
   engine runs them on a thread pool); a round ends when every site has answered. Features are
   cached at the site under ``<data root>/.fedhem-cache/radiomics`` (in memory if the root is
   read-only), keyed by the SHA-256 of the image, of the mask and of the parameters (with the
   pyradiomics version): a repeated query reads them back instead of extracting again.
2. ``radiomics_keep``: each site keeps the features as derived columns of the dataset (float,
   marked ``radiomics`` in the catalog; missing outside the cohort and for rows without an image
   or whose extraction failed), so that ``fed.describe``, ``fed.cox``, ``fed.kmeans`` and
   ``fed.combat`` use them like any other column, and releases a describe summary of them: per
   feature the count, mean, SD and the histogram of bins of >= k patients from which the
   coordinator computes quantiles (no patient's own value, see :mod:`.describe`).

Column names: pyradiomics' feature names (``original_firstorder_Mean``), with every character that
cannot appear in a ``where=`` identifier replaced by ``_`` (``wavelet-LLH_glcm_Idm`` becomes
``wavelet_LLH_glcm_Idm``); ``RadiomicsResult.columns`` maps one to the other.

Release rules (at the site; k = ``min_cell_count``):

- the cohort's images number 0 or >= k, and the images successfully processed >= k (else
  ``min_cell_count``), so no summary describes fewer than k patients;
- the patients with an image must not differ from an earlier released row set by 1..k-1 patients
  (``differencing``; e.g. a cohort described before in which 1..k-1 patients have no image);
- a feature's cell is suppressed when 1..k-1 of the patients lack it (failed extractions), as in
  describe; the number of failed images is reported only when it is >= k;
- per-patient features are never released: a request for them (``release="features"``) is refused
  (``row_level``); ``RadiomicsResult.features`` explains where they are instead.

Extraction errors name no path: the site's own log keeps the row key; the reply says how many
images failed (when >= k).
"""

from __future__ import annotations

from pathlib import PurePath

from fedhem_kernel.protocol.params import NONE, Params, instance, number

#: Seconds a site works per extraction round before it reports its progress.
BUDGET_SECONDS = 2.0

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "params": (instance((dict, str, PurePath), "a pyradiomics settings dict or a YAML file"), NONE),
    "budget": (number(0), NONE),
}
