"""Numba pair-sum kernels: O(n·m) time, O(n + m) memory (no n×m×d temporaries).

Kept apart from the estimator classes so that each kernel can be benchmarked, replaced or
moved to another backend on its own. All kernels take float64 C-contiguous arrays.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["mollified_sums", "blob_score_sums"]


@numba.njit(parallel=True, cache=True)
def mollified_sums(points: np.ndarray, centers: np.ndarray, eps: float) -> np.ndarray:
    """``out[p] = Σ_q φ_ε(points[p] − centers[q])`` with ``φ_ε(z) = exp(−|z|²/ε)/(πε)^{d/2}``."""
    m, d = points.shape
    n = centers.shape[0]
    norm = (math.pi * eps) ** (-0.5 * d)
    out = np.empty(m)
    for p in numba.prange(m):
        acc = 0.0
        for q in range(n):
            r2 = 0.0
            for k in range(d):
                diff = points[p, k] - centers[q, k]
                r2 += diff * diff
            acc += math.exp(-r2 / eps)
        out[p] = acc * norm
    return out


@numba.njit(parallel=True, cache=True)
def blob_score_sums(points: np.ndarray, inv_sum_points: np.ndarray, centers: np.ndarray,
                    inv_sum_centers: np.ndarray, eps: float) -> np.ndarray:
    """Blob score (Carrillo, Hu, Wang & Wu 2020, eq. for ∇ log(f * φ_ε) made symmetric):

    ``s_p = Σ_q (−2/ε) φ_ε(v_p − v_q)(v_p − v_q)(1/D_p + 1/D_q)``, ``D_p = Σ_r φ_ε(v_p − v_r)``.
    ``inv_sum_points[p] = 1/D_p`` and ``inv_sum_centers[q] = 1/D_q`` are precomputed.
    """
    m, d = points.shape
    n = centers.shape[0]
    norm = (math.pi * eps) ** (-0.5 * d)
    out = np.zeros((m, d))
    diff = np.empty(d)
    for p in numba.prange(m):
        diff = np.empty(d)
        acc = np.zeros(d)
        for q in range(n):
            r2 = 0.0
            for k in range(d):
                diff[k] = points[p, k] - centers[q, k]
                r2 += diff[k] * diff[k]
            w = math.exp(-r2 / eps) * norm * (inv_sum_points[p] + inv_sum_centers[q])
            for k in range(d):
                acc[k] += w * diff[k]
        for k in range(d):
            out[p, k] = (-2.0 / eps) * acc[k]
    return out
