"""Accuracy metrics against exact answers (docs/equations.md, "Metrics")."""
from __future__ import annotations

import torch


__all__ = ["relative_score_mse", "log_density_mse"]


def _tensor(values, name):
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64)
    return torch.as_tensor(values, dtype=torch.float64)


def relative_score_mse(score, true_score) -> float:
    """Relative score error ``Σ_i‖ŝ_i − s_i‖² / Σ_i‖s_i‖²`` (a fraction; ×100 for percent).

    Accepts (m, d) arrays, or batched (B, m, d) arrays (the ratio of totals over everything).
    """
    est, ref = _tensor(score, "score"), _tensor(true_score, "true_score")
    if est.shape != ref.shape:
        raise ValueError(f"score shape {tuple(est.shape)} != true_score shape {tuple(ref.shape)}")
    return float(((est - ref) ** 2).sum() / (ref ** 2).sum())


def log_density_mse(log_density, true_log_density) -> float:
    """Mean squared error of the log-density, ``mean_i (log f̂_i − log f_i)²``."""
    est, ref = _tensor(log_density, "log_density"), _tensor(true_log_density, "true_log_density")
    if est.shape != ref.shape:
        raise ValueError(f"log_density shape {tuple(est.shape)} != true_log_density shape {tuple(ref.shape)}")
    return float(((est - ref) ** 2).mean())
