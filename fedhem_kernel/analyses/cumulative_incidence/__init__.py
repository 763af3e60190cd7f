"""Competing risks: Aalen–Johansen cumulative incidence per cause and Gray's test, pooled exactly.

Event coding: ``event`` is a numeric column, 0 = censored and 1, 2, ... = the cause of the event (the
convention of scikit-survival and R's cmprsk). Text labels are not accepted: recode them at the site
(a ``category`` column gives an error naming the column).

Rounds:

1. ``cif_causes``: each site checks the coding (whole numbers >= 0, no missing values) and names the
   causes it holds with at least ``min_cell_count`` events. The causes used everywhere are the union;
   codes named by no site are pooled as the cause ``(other)`` at every site.
2. ``cif_tables``: per group (levels agreed with :mod:`fedhem_kernel.analyses.levels`), durations
   coarsened up to the policy's grid and an event table with the number at risk, the events of each
   cause and the censored count; small steps are merged at the site until every released count is 0
   or at least ``min_cell_count`` (:func:`fedhem_kernel.privacy.survival.merge_small_cause_steps`).

Combine: each site's table is a step function of the number at risk; summing them at the union of the
released times gives pooled counts, from which the Aalen–Johansen estimate follows exactly as in
scikit-survival's ``cumulative_incidence_competing_risks`` (ties as recorded, no jitter): the all-cause
Kaplan–Meier ``S(t)``, ``CIF_k(t) = Σ S(t_j-) d_kj / n_j``, Aalen's variance and the log-log
interval (the all-cause survival with the exponential Greenwood interval). Gray's K-sample test of the
subdistribution of a cause across groups (Gray 1988, as in R cmprsk's ``cuminc``) needs only the same
per-group counts. Under ``Policy.unrestricted()`` every number equals the pooled-row reference.
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import BOOL, COLUMN, NONE, TEXT, Params, integer, mapping

OTHER_CAUSE = "(other)"


COMPETING = "competing causes"


CONF_LEVEL = 0.95


_LOWER, _UPPER = f"lower_{CONF_LEVEL}", f"upper_{CONF_LEVEL}"

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "duration": (COLUMN,),
    "event": (COLUMN,),
    "event_of_interest": (integer(), TEXT, NONE),  # 0 and unknown codes: the combine step says why
    "group": (COLUMN, NONE),
    "cause_names": (mapping(integer(1), TEXT), NONE),
    "combine_competing": (BOOL,),
}

#: Most cause codes a site accepts in one request.
MAX_CAUSES = 100
