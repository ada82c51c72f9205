"""Per-record diagnostics for :func:`particlescore.simulate`: a list of callables.

Each diagnostic is ``diag(snapshot) -> dict[name, value]`` (scalar, (d,) or (d, d)) evaluated
at every saved step; :data:`DEFAULT_DIAGNOSTICS` is what ``simulate`` records unless told
otherwise. Pass your own list (``simulate(..., diagnostics=[*DEFAULT_DIAGNOSTICS, mine])``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .metrics import relative_score_mse

__all__ = ["Snapshot", "moments", "entropy_and_fisher", "estimator_diagnostics", "exact_errors",
           "DEFAULT_DIAGNOSTICS"]


@dataclass(frozen=True)
class Snapshot:
    """A saved step as the diagnostics see it: CPU tensors ``state`` (n, d), ``score`` (n, d),
    ``log_density`` (n,), the ``problem`` and the estimator bound to this time."""

    step: int
    time: float
    state: torch.Tensor
    score: torch.Tensor
    log_density: torch.Tensor
    problem: object
    estimator: object


def moments(s: Snapshot) -> dict:
    """``mean`` (d,), population ``covariance`` (1/n) (d, d), ``energy = ½·mean|x|²``."""
    x = s.state.to(torch.float64).numpy()
    mean = x.mean(0)
    centred = x - mean
    return {"mean": mean, "covariance": centred.T @ centred / x.shape[0],
            "energy": np.float64(0.5 * np.mean(np.sum(x * x, axis=1)))}


def entropy_and_fisher(s: Snapshot) -> dict:
    """``entropy = −mean log f̂`` at the particles (NaN when not finite, e.g. SBTM) and
    ``fisher_information = mean|s|²``."""
    log_f = s.log_density.to(torch.float64).numpy()
    score = s.score.to(torch.float64).numpy()
    return {"entropy": np.float64(-np.mean(log_f)) if np.all(np.isfinite(log_f)) else np.float64(np.nan),
            "fisher_information": np.float64(np.mean(np.sum(score * score, axis=1)))}


def estimator_diagnostics(s: Snapshot) -> dict:
    """Every key of ``estimator.diagnostics()`` (e.g. DiScoFormer's ``consistency_loss``)."""
    report = getattr(s.estimator, "diagnostics", None)
    return {} if report is None else {k: np.asarray(v, dtype=np.float64) for k, v in report().items()}


def exact_errors(s: Snapshot) -> dict:
    """Where the problem knows them: ``covariance_error``, ``mean_error`` (max abs deviation)
    and ``score_error`` (relative score MSE against the exact score)."""
    out = {}
    x = s.state.to(torch.float64)
    stats = moments(s)
    exact_cov = s.problem.exact_covariance(s.time)
    if exact_cov is not None:
        out["covariance_error"] = np.float64(np.max(np.abs(stats["covariance"] - exact_cov.numpy())))
    exact_mean = s.problem.exact_mean(s.time)
    if exact_mean is not None:
        out["mean_error"] = np.float64(np.max(np.abs(stats["mean"] - exact_mean.numpy())))
    exact = s.problem.exact_distribution(s.time)
    if exact is not None:
        out["score_error"] = np.float64(relative_score_mse(s.score, exact.score(x).to(torch.float64)))
    return out


DEFAULT_DIAGNOSTICS = (moments, entropy_and_fisher, estimator_diagnostics, exact_errors)
