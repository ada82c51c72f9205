"""Score estimators: ``est(context, queries=None) -> (log_density, score)``.

Every estimator maps a particle ensemble ``context`` (n, d) to the log-density and the score
``∇ log f`` of the distribution behind it, evaluated at ``queries`` (m, d) (the context itself
when ``queries`` is None). numpy in -> numpy out, torch in -> torch out, dtype kept.
Subclasses implement ``_evaluate(x, y)`` on validated tensors; pair sums are chunked over the
queries (torch) or run in numba kernels (``particlescore.kernels``), so memory is O(n + m).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from . import kernels, registry
from ._validation import as_particles, as_queries, check_min_particles
from .metrics import relative_score_mse

__all__ = [
    "ScoreEstimator", "KDE", "Blob", "Exact", "oracle_bandwidth",
    "scott_factor", "silverman_factor", "gaussian_kernel_sums",
]

#: Elements of one (queries-chunk × context) block of pair terms; bounds temporary memory.
PAIR_BLOCK_ELEMENTS = 2 ** 23


class ScoreEstimator:
    """Base class: validation and array conversion around ``_evaluate``."""

    #: smallest context this estimator accepts
    min_particles: int = 1
    #: why ``min_particles`` is needed (for the error message)
    min_particles_reason: str = ""

    def __call__(self, context, queries=None):
        x, to_user = as_particles(context, "context")
        check_min_particles(x, self.min_particles, self.min_particles_reason)
        y = x if queries is None else as_queries(queries, x)
        log_density, score = self._evaluate(x, y)
        return to_user(log_density), to_user(score)

    def _evaluate(self, context: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state carried between calls (stateless estimators: nothing to do)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything carried between calls, as named tensors (stateless estimators: empty).

        The solver saves it with each record and restores it with :meth:`load_state_dict` on
        resume, so a resumed run is bitwise identical; a stateful estimator must override both.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (ValueError for state this estimator cannot hold)."""
        if state:
            raise ValueError(f"{type(self).__name__} carries no state, got {sorted(state)}")

    def diagnostics(self) -> dict[str, float]:
        """Scalars about the last call worth recording per time step (e.g. a consistency loss)."""
        return {}

    def describe(self) -> dict:
        """Plain-data description recorded in trajectory files."""
        return {"estimator": type(self).__name__}


# --------------------------------------------------------------------------- bandwidths
def scott_factor(n: int, d: int) -> float:
    """Scott's rule ``n^{-1/(d+4)}`` (scipy.stats.gaussian_kde convention)."""
    return n ** (-1.0 / (d + 4))


def silverman_factor(n: int, d: int) -> float:
    """Silverman's rule ``(n (d+2) / 4)^{-1/(d+4)}`` (scipy.stats.gaussian_kde convention)."""
    return (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))


def gaussian_kernel_sums(u_queries: torch.Tensor, u_context: torch.Tensor, *,
                         need_score: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit-covariance Gaussian kernel sums in whitened coordinates ``u``.

    Returns ``lse[i] = logsumexp_j(−½|u_i − u_j|²)`` (m,) and the kernel-weighted mean
    ``Σ_j w_ij u_j`` (m, d) with ``w_ij = softmax_j(−½|u_i − u_j|²)``; chunked over queries.
    """
    m, n = u_queries.shape[0], u_context.shape[0]
    sq_context = 0.5 * (u_context * u_context).sum(1)                       # (n,)
    chunk = max(1, PAIR_BLOCK_ELEMENTS // max(n, 1))
    lse_parts, mean_parts = [], []
    for start in range(0, m, chunk):
        uq = u_queries[start:start + chunk]                                  # (c, d)
        logits = uq @ u_context.T - sq_context - 0.5 * (uq * uq).sum(1, keepdim=True)  # (c, n)
        lse = torch.logsumexp(logits, dim=1)                                 # (c,)
        lse_parts.append(lse)
        if need_score:
            weights = torch.exp(logits - lse[:, None])                       # (c, n)
            mean_parts.append(weights @ u_context)                           # (c, d)
    lse = torch.cat(lse_parts)
    return lse, (torch.cat(mean_parts) if need_score else None)


def _sample_covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)                                                  # (n, d)
    return centred.T @ centred / (x.shape[0] - 1)                            # (d, d)


# --------------------------------------------------------------------------- KDE
class KDE(ScoreEstimator):
    """Gaussian kernel density estimate with its closed-form score.

    Kernel covariance ``H``: for a rule (``"scott"``, ``"silverman"``) ``H = factor²·Σ̂`` with the
    unbiased sample covariance ``Σ̂`` (scipy.stats.gaussian_kde's convention), or
    ``factor²·(tr Σ̂ / d)·I`` with ``isotropic=True``; for a float ``h``, ``H = h²·I``.

    ``log f̂(y) = logsumexp_j(−½(y−x_j)ᵀH⁻¹(y−x_j)) − log n − ½ log det(2πH)``,
    ``∇ log f̂(y) = H⁻¹(Σ_j w_j(y) x_j − y)``, ``w_j = softmax_j(−½(y−x_j)ᵀH⁻¹(y−x_j))``.

    The pair sums run in :func:`particlescore.kernels.gaussian_sums` (numba, fused, in the
    input's dtype: float32 in, float32 arithmetic) on CPU outside autograd, else in
    :func:`gaussian_kernel_sums` (torch).
    """

    min_particles_reason = "to estimate the covariance for a bandwidth rule"

    def __init__(self, bandwidth: str | float = "scott", *, isotropic: bool = False):
        if isinstance(bandwidth, str):
            if bandwidth not in ("scott", "silverman"):
                raise ValueError(f"bandwidth must be 'scott', 'silverman' or a positive float, got {bandwidth!r}")
        elif isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
            if not (math.isfinite(bandwidth) and bandwidth > 0):
                raise ValueError(f"bandwidth must be a positive finite float, got {bandwidth!r}")
            bandwidth = float(bandwidth)
        else:
            raise ValueError(f"bandwidth must be 'scott', 'silverman' or a positive float, got {bandwidth!r}")
        self.bandwidth = bandwidth
        self.isotropic = isotropic

    @property
    def min_particles(self) -> int:  # a rule needs a covariance: at least d+1 points (checked in kernel_covariance)
        return 2 if isinstance(self.bandwidth, str) else 1

    def kernel_covariance(self, context: torch.Tensor) -> torch.Tensor:
        """The kernel covariance ``H`` (d, d) this estimator uses for ``context``."""
        n, d = context.shape
        eye = torch.eye(d, dtype=context.dtype, device=context.device)
        if isinstance(self.bandwidth, float):
            return self.bandwidth ** 2 * eye
        if not self.isotropic:
            check_min_particles(context, d + 1, f"to estimate a full {d}x{d} covariance for the {self.bandwidth} rule")
        factor = scott_factor(n, d) if self.bandwidth == "scott" else silverman_factor(n, d)
        cov = _sample_covariance(context)
        if self.isotropic:
            return factor ** 2 * cov.diagonal().mean() * eye
        return factor ** 2 * cov

    def _evaluate(self, context, queries):
        n, d = context.shape
        H = self.kernel_covariance(context)
        try:
            L = torch.linalg.cholesky(H)                                     # (d, d)
        except RuntimeError as err:  # singular sample covariance: particles on a subspace
            raise ValueError(f"the context's sample covariance is singular (particles lie on a subspace); "
                             f"use a float bandwidth or isotropic=True (context shape {tuple(context.shape)})") from err
        u_context = torch.linalg.solve_triangular(L, context.T, upper=False).T   # (n, d)
        u_queries = torch.linalg.solve_triangular(L, queries.T, upper=False).T   # (m, d)
        if kernels.fused_available(u_queries, u_context):  # fused numba kernel, O(n) memory per query
            lse, mean_u = kernels.gaussian_sums_tensor(u_queries, u_context)
        else:  # autograd or another device: torch, chunked over queries
            lse, mean_u = gaussian_kernel_sums(u_queries, u_context)
        log_det_2pi_h = d * math.log(2 * math.pi) + 2 * torch.log(L.diagonal()).sum()
        log_density = lse - math.log(n) - 0.5 * log_det_2pi_h                # (m,)
        score_u = mean_u - u_queries                                         # (m, d) score in u = L⁻¹y
        score = torch.linalg.solve_triangular(L.T, score_u.T, upper=True).T  # (m, d) = L⁻ᵀ score_u
        return log_density, score

    def describe(self):
        return {"estimator": "KDE", "bandwidth": self.bandwidth, "isotropic": self.isotropic}


# --------------------------------------------------------------------------- blob
class Blob(ScoreEstimator):
    """Blob method score (Carrillo, Hu, Wang & Wu, J. Comput. Phys. X 2020).

    Mollifier ``φ_ε(z) = exp(−|z|²/ε)/(πε)^{d/2}``;
    ``s_p = Σ_q (−2/ε) φ_ε(v_p−v_q)(v_p−v_q)(1/Σ_r φ_ε(v_p−v_r) + 1/Σ_r φ_ε(v_q−v_r))``;
    default ``ε = 4·det(Σ̂)^{1/d}·n^{−2/(d+4)}``. The log-density is that of the mollified
    empirical measure, ``log((1/n) Σ_q φ_ε(y − v_q))``. At query points off the particles the
    same formula is used with ``D(y) = Σ_r φ_ε(y − v_r)``. Runs in numba (float64).
    """

    min_particles_reason = "to estimate the covariance for the default blob width"

    def __init__(self, eps: float | None = None):
        if eps is not None and not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite float or None, got {eps!r}")
        self.eps = None if eps is None else float(eps)

    @property
    def min_particles(self) -> int:
        return 1 if self.eps is not None else 2

    def default_eps(self, context: torch.Tensor) -> float:
        n, d = context.shape
        check_min_particles(context, d + 1, f"to estimate det of a {d}x{d} covariance for the default blob width")
        det = torch.linalg.det(_sample_covariance(context.to(torch.float64))).item()
        if not det > 0:
            raise ValueError(f"the context's sample covariance is singular; pass eps explicitly (context shape {tuple(context.shape)})")
        return 4.0 * det ** (1.0 / d) * n ** (-2.0 / (d + 4))

    def _evaluate(self, context, queries):
        eps = self.eps if self.eps is not None else self.default_eps(context)
        x = np.ascontiguousarray(context.detach().cpu().numpy(), dtype=np.float64)
        same = queries is context
        y = x if same else np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float64)
        n = x.shape[0]
        sums_context = kernels.mollified_sums(x, x, eps)
        sums_queries = sums_context if same else kernels.mollified_sums(y, x, eps)
        score = kernels.blob_score_sums(y, 1.0 / sums_queries, x, 1.0 / sums_context, eps)
        log_density = np.log(sums_queries) - math.log(n)
        to = dict(dtype=context.dtype, device=context.device)
        return torch.from_numpy(log_density).to(**to), torch.from_numpy(score).to(**to)

    def describe(self):
        return {"estimator": "Blob", "eps": "default" if self.eps is None else self.eps}


# --------------------------------------------------------------------------- exact
class Exact(ScoreEstimator):
    """The exact log-density and score of a known distribution (ignores the context's values).

    ``distribution`` has ``log_prob(x)`` and ``score(x)``; or pass a callable ``t -> distribution``
    for a time-dependent exact solution and bind a time with :meth:`at_time`.
    """

    def __init__(self, distribution):
        if callable(distribution) and not hasattr(distribution, "score"):
            self._family, self.distribution = distribution, None
        else:
            self._family, self.distribution = None, distribution

    @property
    def time_dependent(self) -> bool:
        return self._family is not None

    def at_time(self, t: float) -> "Exact":
        """The exact estimator at time ``t`` (itself when not time-dependent)."""
        return Exact(self._family(t)) if self._family is not None else self

    def _evaluate(self, context, queries):
        if self.distribution is None:
            raise ValueError("this Exact estimator wraps a time-dependent solution: call .at_time(t) first")
        dist_dtype = getattr(self.distribution, "dtype", None)
        y = queries if dist_dtype is None else queries.to(dist_dtype)
        return (self.distribution.log_prob(y).to(queries.dtype),
                self.distribution.score(y).to(queries.dtype))

    def describe(self):
        return {"estimator": "Exact", "distribution": type(self.distribution or self._family).__name__}


# --------------------------------------------------------------------------- oracle bandwidth
def oracle_bandwidth(context, queries, true_score, *, grid: Sequence[float] | None = None,
                     isotropic: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Best fixed KDE bandwidth against a known score (a benchmark baseline, not an estimator).

    Searches ``grid`` (default: 25 log-spaced multiples 0.05…3 of the Scott scale) for the KDE
    with the lowest relative score MSE ``Σ‖ŝ−s‖²/Σ‖s‖²`` at ``queries``. With
    ``isotropic=True`` the grid values are absolute bandwidths ``h`` (``H = h²I``); otherwise
    they are factors multiplying the sample covariance (``H = h²Σ̂``).
    Returns ``(best_h, grid, errors)``.
    """
    x, _ = as_particles(context, "context")
    y = as_queries(queries, x)
    s_true = as_queries(true_score, x)
    if s_true.shape[0] != y.shape[0]:
        raise ValueError(f"true_score has {s_true.shape[0]} rows but queries have {y.shape[0]}")
    n, d = x.shape
    if grid is None:
        scale = scott_factor(n, d) * (math.sqrt(_sample_covariance(x).diagonal().mean().item()) if isotropic else 1.0)
        grid = scale * np.geomspace(0.05, 3.0, 25)
    grid = np.asarray(grid, dtype=float)
    errors = np.empty(len(grid))
    for i, h in enumerate(grid):
        est = KDE(float(h)) if isotropic else _FactorKDE(float(h))
        _, s = est._evaluate(x, y)
        errors[i] = float(relative_score_mse(s, s_true))
    return float(grid[int(np.argmin(errors))]), grid, errors


class _FactorKDE(KDE):
    """KDE with ``H = factor²·Σ̂`` for a fixed factor (used by the oracle search)."""

    def __init__(self, factor: float):
        super().__init__("scott")
        self.factor = factor

    def kernel_covariance(self, context):
        return self.factor ** 2 * _sample_covariance(context)


def _exact_for(factory, options: dict, *, problem, seed: int) -> Exact:
    """The problem's exact solution ``t -> f(t)`` (ValueError when the problem has none)."""
    if problem.exact_distribution(float(problem.t0)) is None:
        raise ValueError(f"problem {problem.name!r} has no exact solution, so the 'exact' estimator "
                         f"cannot be used; choose one of: {', '.join(n for n in registry.names('estimator') if n != 'exact')}")
    return factory(problem.exact_distribution, **options)


registry.register("estimator", "kde", KDE)
registry.register("estimator", "blob", Blob)
registry.register("estimator", "exact", Exact, exclude=("distribution",), build=_exact_for)
