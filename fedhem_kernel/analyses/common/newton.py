"""The Newton–Raphson path: lifelines' step schedule, shared by the coordinator and the sites.

Side: shared (no rows). The coordinator walks the path to fit a model on pooled sums
(:mod:`~fedhem_kernel.analyses.common.combine_newton`); in a pooled fit each site walks the same
path on the signed totals it is shown, and answers only the coefficients the path reaches next
(:mod:`~fedhem_kernel.analyses.cox.site_pooled`): a coordinator free to choose the coefficients
could read the covariates of the few patients leaving a block from the sums at many of them.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


class StepSizer:
    """lifelines' step-size schedule (``lifelines.utils.StepSizer``), so the iterates match."""

    def __init__(self, initial: float = 0.95) -> None:
        self.initial = initial
        self.step_size = initial
        self.temper_back_up = False
        self.norms: list[float] = []

    def update(self, norm_of_delta: float) -> float:
        self.norms.append(norm_of_delta)
        if self.temper_back_up:
            self.step_size = min(self.step_size * 1.3, self.initial)
        if norm_of_delta >= 15.0:
            self.step_size *= 0.1
            self.temper_back_up = True
        elif 15.0 > norm_of_delta > 5.0:
            self.step_size *= 0.25
            self.temper_back_up = True
        recent = self.norms[-3:]
        if len(self.norms) >= 3:
            if np.all(np.diff(recent) < 0):
                self.step_size = min(self.step_size * 1.3, 1.0)
            else:
                self.step_size *= 0.98
        return self.step_size


class SingularHessian(ValueError):
    """The Hessian cannot be inverted (collinear covariates, or complete separation)."""


def newton_direction(gradient: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``delta = -H⁻¹ g`` (Cholesky: the Hessian of a concave log-likelihood)."""
    try:
        return linalg.solve(-hessian, gradient, assume_a="pos", check_finite=False)
    except (ValueError, linalg.LinAlgError):
        raise SingularHessian from None


class NewtonPath:
    """The coefficients Newton–Raphson evaluates, one after the other, from ``beta = 0``.

    :meth:`next` gives the coefficients to evaluate next; :meth:`advance` takes what the
    objective gave there (log-likelihood, gradient, Hessian) and moves on: ``delta = -H⁻¹ g``,
    then lifelines' step size. Stopping rules are the caller's (they do not change the path).
    """

    def __init__(self, p: int, initial_step: float = 0.95) -> None:
        self.beta = np.zeros(p)
        self.delta = np.zeros(p)
        self.sizer = StepSizer(initial_step)
        self.step_size = self.sizer.step_size
        self.evaluated = 0

    def next(self) -> np.ndarray:
        """The coefficients the path evaluates next."""
        return self.beta + self.step_size * self.delta

    def take(self) -> np.ndarray:
        """Move to :meth:`next` (it is being evaluated) and return it."""
        self.beta = self.next()
        self.evaluated += 1
        return self.beta

    def direction(self, gradient: np.ndarray, hessian: np.ndarray) -> float:
        """The Newton direction at the current coefficients; returns its norm."""
        self.delta = newton_direction(gradient, hessian)
        return float(np.linalg.norm(self.delta))

    def resize(self, norm_delta: float) -> None:
        """The step schedule after a step of length ``norm_delta`` (when the fit goes on)."""
        self.step_size = self.sizer.update(norm_delta)
