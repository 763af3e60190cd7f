"""The one Newton–Raphson loop (Cox uses it; a GLM objective works the same way)."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import StepSizer as LifelinesStepSizer
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from fedhem_kernel.analyses.common.combine_newton import newton_raphson
from fedhem_kernel.analyses.common.newton import StepSizer
from fedhem_kernel.errors import FedHemError


def test_step_sizes_are_lifelines():
    rng = np.random.default_rng(0)
    norms = np.concatenate([[20.0, 8.0], rng.exponential(2.0, 40)])
    ours, theirs = StepSizer(0.95), LifelinesStepSizer(0.95)
    for norm in norms:
        assert ours.update(norm) == pytest.approx(theirs.update(norm).next(), rel=0, abs=0)


def logistic(x: np.ndarray, y: np.ndarray):
    """Log-likelihood, gradient and Hessian of a logistic regression (a GLM objective)."""

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        eta = x @ beta
        mu = 1.0 / (1.0 + np.exp(-eta))
        ll = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
        grad = x.T @ (y - mu)
        hess = -(x.T * (mu * (1.0 - mu))) @ x
        return ll, grad, hess

    return objective


def test_a_logistic_regression_equals_scikit_learn():
    data = load_breast_cancer()
    x = data.data[:, [1, 4, 9]]  # texture, smoothness, fractal dimension: well conditioned
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    x1 = np.column_stack([np.ones(len(x)), x])
    y = data.target.astype(float)
    res = newton_raphson(logistic(x1, y), x1.shape[1], precision=1e-12, r_precision=0.0)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x, y)
    assert res.converged and not res.diverged
    np.testing.assert_allclose(res.beta[0], ref.intercept_[0], atol=1e-6)
    np.testing.assert_allclose(res.beta[1:], ref.coef_[0], atol=1e-6)
    assert res.log_likelihood_null == pytest.approx(len(y) * np.log(0.5))
    assert np.abs(res.gradient).max() < 1e-6


def test_separation_stops_at_the_coefficient_bound():
    x = np.column_stack([np.ones(20), np.r_[np.zeros(10), np.ones(10)]])
    y = np.r_[np.zeros(10), np.ones(10)]  # x separates y completely
    res = newton_raphson(logistic(x, y), 2, max_coefficient=20.0)
    assert res.diverged and not res.converged
    assert np.abs(res.beta).max() <= 20.0


def test_a_singular_hessian_is_a_clear_error():
    x = np.ones((10, 2))  # two identical columns
    y = np.r_[np.zeros(5), np.ones(5)]
    with pytest.raises(FedHemError, match="singular"):
        newton_raphson(logistic(x, y), 2)
