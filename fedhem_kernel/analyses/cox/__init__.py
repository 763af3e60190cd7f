"""Cox proportional hazards, fitted by Newton–Raphson on the pooled partial likelihood.

Rounds: ``levels`` for each categorical covariate (every site codes the same dummies; the first level
in sorted order is the reference, as ``pd.get_dummies(..., drop_first=True)`` does), ``cox_setup``
(each site checks its rules and releases its merged time steps, see
:mod:`~fedhem_kernel.analyses.cox.site`), then per Newton iteration one ``cox_sums`` round (the
sites' per-step sums, from which the coordinator builds the risk-set sums S0, S1, S2 at every pooled
event time of each stratum: additive across sites) and, when per-step S2 would make replies large,
a second ``cox_hessian`` round (see :func:`fit_cox`); a ``cox_release`` round at the end.

The coordinator evaluates the log partial likelihood, gradient and Hessian with Efron's or Breslow's
handling of ties and steps exactly as lifelines' ``CoxPHFitter`` does: covariates standardised with
the pooled mean and standard deviation, β = 0 to start, lifelines' step-size schedule and its three
stopping rules (step norm 1e-7, relative change of the log-likelihood 1e-9, Newton decrement 1e-7).
Efron fits therefore stop where lifelines stops (which is not always the optimum to 1e-6: on lung,
lifelines is 2e-5 short of it); Breslow fits, compared with scikit-survival, run the same steps to a
tolerance of 1e-12. Standard errors come from the inverse Hessian.

Under ``Policy.unrestricted()`` the sites' steps are their exact distinct times and the fit equals
lifelines on the pooled rows; under a coarser policy it is a Cox fit on the sites' released time
steps (grouped times) and the result says so.

Extension points: :func:`fit_cox` returns a :class:`CoxFit` with the pooled per-stratum sums at the
final coefficients (``CoxFit.strata``: S0, S1 and, for Efron, D0, D1 at tied times; S2/D2 too when
one round per iteration was used) and :func:`evaluate` computes log-likelihood, gradient and
Hessian from such sums; ``CoxResult.fit`` keeps the :class:`CoxFit`.

Model checks (two rounds after the fit): see :mod:`~fedhem_kernel.analyses.cox.site_checks`.
"""

from __future__ import annotations

from fedhem_kernel.protocol.params import BOOL, COLUMN, COLUMNS, NONE, Params, integer, options

TIES = ("efron", "breslow")
#: ``strata="site"``: a separate baseline hazard per site.
SITE_STRATUM = "site"
#: Largest coefficient (standardised units) a site computes sums for.
MAX_COEFFICIENT = 20.0
#: Score bins for pairs across sites (more bins: fewer unresolved pairs).
CONCORDANCE_BINS = 64
#: Most bins a site accepts.
MAX_BINS = 256
#: Time transforms of the proportional-hazards test (lifelines' names).
TRANSFORMS = ("rank", "km", "identity", "log")
#: Most covariates a request may name, and most design columns (dummies included) a fit may have.
MAX_COVARIATES = 200
MAX_COVARIATES_TOTAL = 2000
#: Most stratum columns.
MAX_STRATA_COLUMNS = 10

#: The arguments of this analysis (``Federation.run`` checks them before anything is sent).
PARAMS: Params = {
    "duration": (COLUMN,),
    "event": (COLUMN,),
    "covariates": (COLUMNS,),
    "strata": (COLUMNS, NONE),
    "ties": (options(*TIES),),
    "diagnostics": (BOOL,),
    "concordance_bins": (integer(1, MAX_BINS),),
}
