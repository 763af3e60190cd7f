"""Newton–Raphson on the researcher's side, with lifelines' step schedule and stopping rules.

One loop for every model fitted by Newton's method on pooled sums (Cox now; GLMs next): the
objective is a function of the coefficients returning the log-likelihood, its gradient and its
Hessian, however it gets them from the sites (one or more rounds). The steps are lifelines'
(``CoxPHFitter._newton_raphson_for_efron_model`` with ``utils.StepSizer``), so the iterates, the
iteration count and where the fit stops match lifelines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedhem_kernel.analyses.common.newton import NewtonPath, SingularHessian
from fedhem_kernel.errors import FedHemError

#: ``objective(beta) -> (log-likelihood, gradient, Hessian)``
Objective = Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class NewtonResult:
    """Where Newton–Raphson stopped: the last evaluated coefficients and what they gave.

    ``log_likelihood_null`` is the log-likelihood at the start (the coefficients the loop began
    with, zero by default); ``norm_delta`` the length of the last Newton step.
    """

    beta: np.ndarray
    log_likelihood: float
    gradient: np.ndarray
    hessian: np.ndarray
    log_likelihood_null: float
    iterations: int
    converged: bool
    norm_delta: float
    diverged: bool = False


def newton_raphson(
    objective: Objective,
    p: int,
    *,
    precision: float = 1e-7,
    r_precision: float = 1e-9,
    max_steps: int = 500,
    max_coefficient: float = np.inf,
    initial_step: float = 0.95,
    what: str = "likelihood",
) -> NewtonResult:
    """Maximise the log-likelihood from ``beta = 0`` (``p`` coefficients).

    Each iteration steps ``step_size × delta`` with ``delta = -H⁻¹ g`` and lifelines' step
    schedule; it stops, converged, when the step norm or the Newton decrement ``g·delta / 2`` is
    below ``precision`` or the log-likelihood changed by less than ``r_precision`` relative to its
    last value; unconverged after ``max_steps``, when the step size falls below 1e-5, or when a
    coefficient would exceed ``max_coefficient`` (``diverged``: the objective is not evaluated
    there). Raises :class:`~fedhem_kernel.errors.FedHemError` when the log-likelihood, gradient or
    Hessian is not finite or the Hessian is not negative definite (``what`` names the likelihood
    in the message, e.g. "partial likelihood").
    """
    path = NewtonPath(p, initial_step)
    previous_ll = 0.0
    ll_null = 0.0
    converged = diverged = False
    i = 0
    evaluated = path.beta
    hessian = gradient = np.zeros(0)
    log_lik = norm_delta = 0.0
    while True:
        if np.abs(path.next()).max(initial=0.0) > max_coefficient:
            diverged = True
            break
        beta = path.take()
        i += 1
        ll, grad, hess = objective(beta)
        if i == 1:
            ll_null = ll
        if not (np.isfinite(ll) and np.isfinite(grad).all() and np.isfinite(hess).all()):
            raise FedHemError(f"the {what} is not finite at this step: the model does not converge")
        try:
            norm_delta = path.direction(grad, hess)
        except SingularHessian:
            raise FedHemError(
                "the Hessian is singular: covariates are collinear (or a covariate separates "
                "events completely)"
            ) from None
        evaluated, hessian, gradient, log_lik = beta, hess, grad, ll
        decrement = float(grad @ path.delta) / 2
        if (
            norm_delta < precision
            or (previous_ll != 0 and abs(ll - previous_ll) / (-previous_ll) < r_precision)
            or decrement < precision
        ):
            converged = True
            break
        if i >= max_steps or path.step_size <= 1e-5 or (abs(ll) < 1e-4 and norm_delta > 1.0):
            break
        previous_ll = ll
        path.resize(norm_delta)
    return NewtonResult(
        evaluated, log_lik, gradient, hessian, ll_null, i, converged, norm_delta, diverged
    )
