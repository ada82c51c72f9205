"""Elliptical kernel density estimate: a one-dimensional smoothing problem for elliptical laws.

An elliptical law has ``f(x) = |Σ|^{-1/2} h(|L⁻¹(x − μ)|)`` with ``Σ = LLᵀ``: after whitening,
only the radial profile ``h`` is unknown (Gaussians, Student-t, the BKW solution and every
isotropic velocity distribution are of this kind). Liebscher (J. Multivariate Anal. 92 (2005)
205) estimates ``h`` by a kernel estimate in the radius; here each whitened sample's Gaussian
kernel is averaged over all rotations about the centre, which keeps the estimate a proper,
smooth density in ``w`` (no singularity at the origin):

    f̂(w) = (1/n) Σ_i (2πb²)^{-d/2} exp(−(r² + r_i²)/2b²) A_ν(r r_i/b²),   r = |w|, r_i = |w_i|,

with ``A_ν(x) = Γ(ν+1)(2/x)^ν I_ν(x)``, ``ν = d/2 − 1``, the average of ``exp(x cos θ)`` over the
sphere (``cosh x`` in d = 1, ``I_0(x)`` in d = 2, ``sinh(x)/x`` in d = 3). Its score is radial,

    ∇_w log f̂ = w·[−1/b² + Σ_i ω_i (r_i²/b⁴) R_ν(x_i)/x_i],   R_ν = I_{ν+1}/I_ν = (log A_ν)′,

``ω_i`` the normalised terms of the sum, and ``∇_x log f = L⁻ᵀ∇_w log f̂``. Because only radii
enter, the bandwidth follows one-dimensional rates, ``b = c·sd(r_i)·n^{-1/5}``, whatever d (a
robust spread, min(sd, IQR/1.349), was worse on Student-t ν = 3 draws: 22 → 69 % in d = 3, 2 draws
of the ablation's cell). Queries far outside the particles extrapolate as a kernel estimate does
(badly: benchmarks/results/elliptical_kde.md); in the solver the queries are the particles.
Everything depends on the data through ``μ``, ``Σ`` and the Mahalanobis radii, so the estimate is
exactly affine equivariant. For a non-elliptical law it estimates the elliptical law with the same
radial distribution (Laplace products, Gaussian mixtures: biased; DiScoFormer's candidates cover
those).

Cost: the pair sum runs over radii only; above ``grid`` context points they are linearly binned
on a grid of ``grid`` radii (Wand 1994) and, for queries sorted by radius, only the bins within
``8b`` of a query chunk are summed (terms beyond are below e^{-32} of the largest). From
``TABLE_MIN_POINTS`` points on, the radial profile is also tabulated once and interpolated
(:class:`RadialFit`), so a step of the solver (queries = the n particles) costs O(n·T) for T
table nodes rather than O(n²) or O(n·grid).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import registry
from ._validation import check_min_particles
from .estimators import ScoreEstimator, _sample_covariance

__all__ = ["EllipticalKDE", "RadialFit", "log_sphere_average", "sphericity_statistics", "N_SPHERICITY"]

#: queries per chunk of the radial pair sum
QUERY_CHUNK = 1024
#: contexts from this size on get a tabulated radial profile (RadialFit); below, the exact sum
#: over m·n pairs is cheaper than the table's T·n
TABLE_MIN_POINTS = 256
#: table nodes per bandwidth: at spacing b/4 cubic interpolation errs by ≤ 3.4e-3 relative at the
#: particles and ~1e-9 in relative score MSE (the estimate's own error is ~1e-2); DiScoFormer's
#: d = 3 call at n = 500 took 22 ms with it against 44 ms with exact sums
NODES_PER_BANDWIDTH = 4
#: floor of the radii's spread for a context whitened by the caller (whitened units; typical
#: spreads are 0.4–0.7), so that tiny cells still get a bandwidth
MIN_SPREAD = 0.05
#: half-width of the summed radius window, in bandwidths (terms beyond: below e^{-32} of the largest)
WINDOW = 8.0


#: how many numbers :func:`sphericity_statistics` returns
N_SPHERICITY = 4


def sphericity_statistics(w: torch.Tensor) -> torch.Tensor:
    """How far whitened points ``w`` (n,d) (mean 0, covariance I) are from a spherically
    symmetric law, whose directions ``u = w/|w|`` are uniform and independent of the radius:
    ``log(1 + T)/5`` (4,) for four statistics T normalised to be about 1 under symmetry,

        T₁ = n|ū|²,  T₂ = n‖⟨uuᵀ⟩ − I/d‖²_F/(1 − 1/d),
        T₃ = n‖⟨ℓ̃·(uuᵀ − I/d)⟩‖²_F/((1 − 1/d)·var ℓ),  T₄ = n|⟨ℓ̃·u⟩|²/var ℓ,

    ``⟨·⟩`` the mean over the points, ``ℓ = log|w|``, ``ℓ̃ = ℓ − ⟨ℓ⟩`` (E u = 0, Cov u = I/d and
    E‖uuᵀ − I/d‖²_F = 1 − 1/d for uniform u). For a mixture or a skewed law they grow like n;
    for an elliptical law (Gaussian, Student-t, BKW) they stay O(1) at every n, so a network can
    read from them whether the elliptical candidate is the right model. With tails so heavy that
    the sample covariance converges slowly (Student-t, ν ≤ 4) the whitened cloud is not yet
    spherical and T₂ grows too (d = 2, ν = 3: about 40 at n = 20000); so does the misfit of the
    elliptical candidate, which uses the same whitening. O(n·d²)."""
    n, d = w.shape
    r = w.norm(dim=1).clamp_min(1e-12)                                      # (n,)
    u = w / r[:, None]                                                       # (n, d) directions
    ell = torch.log(r)                                                       # (n,)
    ell = ell - ell.mean()                                                   # (n,) ℓ̃
    var_ell = float((ell * ell).mean()) + 1e-12
    off = max(1.0 - 1.0 / d, 1e-12)
    eye = torch.eye(d, dtype=w.dtype, device=w.device) / d                   # (d, d)
    ell_u = ell[:, None] * u                                                 # (n, d) ℓ̃·u
    t1 = n * (u.mean(0) ** 2).sum()
    t2 = n * ((u.T @ u / n - eye) ** 2).sum() / off
    t3 = n * ((ell_u.T @ u / n) ** 2).sum() / (off * var_ell)               # ⟨ℓ̃⟩ = 0: the I/d term drops
    t4 = n * (ell_u.mean(0) ** 2).sum() / var_ell
    return torch.log1p(torch.stack([t1, t2, t3, t4])) / 5                   # (4,)


def log_sphere_average(x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``log A_ν(x) − x`` and ``R_ν(x)/x`` for ``x ≥ 0`` (``ν = d/2 − 1``; module docstring).

    Closed forms in torch for d = 1, 2, 3; scipy's exponentially scaled Bessel functions for
    larger d (CPU, float64), with their derivatives for autograd (:class:`_BesselSphereAverage`).
    Both are smooth at 0, where ``R_ν(x)/x → 1/d``."""
    small = x < 1e-4
    xs = torch.where(small, torch.ones_like(x), x)                          # avoids 0/0 off the used branch
    if d == 1:                                                               # A = cosh x, R = tanh x
        log_a = torch.log1p(torch.exp(-2 * x)) - math.log(2.0)
        ratio = torch.tanh(xs) / xs
    elif d == 2:                                                             # A = I0, R = I1/I0
        i0 = torch.special.i0e(xs)
        log_a = torch.log(i0)
        ratio = torch.special.i1e(xs) / (i0 * xs)
    elif d == 3:                                                             # A = sinh x / x, R = coth x − 1/x
        log_a = torch.log(-torch.expm1(-2 * xs) / (2 * xs))
        x2 = x * x                                                           # series below 0.05: no cancellation
        ratio = torch.where(x < 0.05, 1 / 3 - x2 / 45 + 2 * x2 * x2 / 945, (1 / torch.tanh(xs) - 1 / xs) / xs)
    else:
        log_a, ratio = _BesselSphereAverage.apply(x, d)
    if d <= 3:
        log_a = torch.where(small, x * x / (2 * d) - x, log_a)
    ratio = torch.where(small, 1.0 / d - x * x / (d * d * (d + 2)), ratio)  # series of R_ν(x)/x
    return log_a, ratio


class _BesselSphereAverage(torch.autograd.Function):
    """``(log A_ν(x) − x, R_ν(x)/x)`` by scipy for d > 3, differentiable: ``(log A_ν)′ = R_ν`` and
    the Bessel-ratio equation ``R′ = 1 − (2ν+1)R/x − R²`` (Amos 1974) give
    ``d/dx (R/x) = (1 − d·(R/x) − x²(R/x)²)/x`` (series ``−2x/(d²(d+2))`` near 0)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, d: int):
        from scipy.special import gammaln, ive
        nu = d / 2 - 1
        xn = x.detach().cpu().double().numpy()
        xn_s = np.where(xn < 1e-4, 1.0, xn)
        with np.errstate(divide="ignore"):
            log_a_n = gammaln(nu + 1) + nu * np.log(2 / xn_s) + np.log(ive(nu, xn_s))
        log_a_n = np.where(xn < 1e-4, xn * xn / (4 * (nu + 1)) - xn, log_a_n)
        ratio_n = ive(nu + 1, xn_s) / (ive(nu, xn_s) * xn_s)
        log_a = torch.as_tensor(log_a_n, dtype=x.dtype, device=x.device)
        ratio = torch.as_tensor(ratio_n, dtype=x.dtype, device=x.device)
        ctx.save_for_backward(x, ratio)
        ctx.dim = d
        return log_a, ratio

    @staticmethod
    def backward(ctx, grad_log_a, grad_ratio):
        x, ratio = ctx.saved_tensors
        d = ctx.dim
        small = x < 1e-4
        xs = torch.where(small, torch.ones_like(x), x)
        d_ratio = torch.where(small, -2 * x / (d * d * (d + 2)), (1 - d * ratio - (xs * ratio) ** 2) / xs)
        return grad_log_a * (x * ratio - 1) + grad_ratio * d_ratio, None


def _lagrange4(table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Cubic (4-point Lagrange) interpolation of ``table`` (G,), given at nodes 0 … G−1, at
    fractional node positions ``pos`` (m,) in [0, G−1]: error O(h⁴) in the node spacing h."""
    i = pos.floor().long().clamp(1, len(table) - 3)                          # (m,) nodes i−1 … i+2
    u = pos - i                                                              # (m,) in [−1, 2]
    f0, f1, f2, f3 = (table[i + k] for k in (-1, 0, 1, 2))                    # (m,) each
    return (-u * (u - 1) * (u - 2) / 6 * f0 + (u + 1) * (u - 1) * (u - 2) / 2 * f1
            - (u + 1) * u * (u - 2) / 2 * f2 + (u + 1) * u * (u - 1) / 6 * f3)


class RadialFit:
    """The elliptical KDE of one context (n,d), fitted once (module docstring): the sample mean
    and covariance's Cholesky factor L, the bandwidth ``b``, and the (binned above ``grid``
    points) whitened radii. From ``TABLE_MIN_POINTS`` points on, the radial profile is also
    tabulated on equally spaced radii up to the largest radius (spacing ``b/4``, or coarser where
    that needs more than ``table`` nodes) and interpolated there (:func:`_lagrange4`; queries
    beyond are summed exactly), so that m queries cost O(m) after an O(n·T) fit. Interpolation
    errs by O((h/b)⁴): at most 3.4e-3 relative at the particles and about 1e-9 in relative score
    MSE, far below the estimate's own error (tests/test_elliptical.py). ``whiten=False``: the
    context is already whitened (μ = 0, L = I), as DiScoFormer's frame leaves it; two points
    suffice then, and no triangular solves are done."""

    def __init__(self, context: torch.Tensor, bandwidth_factor: float = 1.4, *, grid: int = 1024,
                 table: int = 4096, whiten: bool = True):
        n, d = context.shape
        self.dim, self.n = d, n
        if whiten:
            check_min_particles(context, d + 2, f"to whiten by a full {d}x{d} sample covariance")
            self.mean = context.mean(0)                                      # (d,)
            chol, info = torch.linalg.cholesky_ex(_sample_covariance(context))   # (d, d)
            if int(info) != 0:
                raise ValueError(f"the context's sample covariance is singular (particles lie on a subspace); "
                                 f"an elliptical estimate needs full-rank data (context shape {tuple(context.shape)})")
            self.chol = chol
        else:   # the caller whitened it (DiScoFormer's candidate): μ = 0, L = I
            check_min_particles(context, 2, "for a radial bandwidth")
            self.mean = self.chol = None
        white = self.whiten(context)                                         # (n, d)
        self.radius = white.norm(dim=1)                                      # (n,) whitened radii
        self.sphericity = sphericity_statistics(white)                       # (4,) DiScoFormer's shape features
        spread = float(self.radius.std())
        if not whiten:   # d + 1 whitened points form a regular simplex: equal radii, spread 0
            spread = max(spread, MIN_SPREAD)
        self.bandwidth = bandwidth_factor * spread * n ** (-0.2)
        if self.bandwidth <= 0:
            raise ValueError("all context points have the same Mahalanobis radius; no bandwidth can be set")
        self.nodes, self.log_weight = _binned_radii(self.radius, grid)      # (G,), (G,)
        self.table_step = None
        if table and n >= TABLE_MIN_POINTS:
            span = float(self.radius.max())        # beyond the last particle the profile bends within b: exact sums
            self.table_step = max(self.bandwidth / NODES_PER_BANDWIDTH, span / (table - 1))
            size = int(math.ceil(span / self.table_step)) + 1
            nodes = torch.arange(size, dtype=context.dtype, device=context.device) * self.table_step  # (T,)
            self.table_log_f, self.table_factor = self._exact(nodes)        # (T,), (T,)

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """``L⁻¹(x − μ)`` of points (m,d) (x itself for a context whitened by the caller)."""
        if self.chol is None:
            return x
        return torch.linalg.solve_triangular(self.chol, (x - self.mean).T, upper=False).T

    def _exact(self, rq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened ``log f̂`` and ``∂_r log f̂ / r`` at radii (m,) by the windowed radial pair sum."""
        b, d = self.bandwidth, self.dim
        order = torch.argsort(rq)
        log_f = torch.empty_like(rq)                                         # (m,)
        factor = torch.empty_like(rq)                                        # (m,) ∂_r log f̂ / r
        for start in range(0, len(rq), QUERY_CHUNK):
            idx = order[start:start + QUERY_CHUNK]                           # (c,) sorted by radius
            r = rq[idx]                                                      # (c,)
            lo = int(torch.searchsorted(self.nodes, r[0] - WINDOW * b))
            hi = int(torch.searchsorted(self.nodes, r[-1] + WINDOW * b, right=True))
            lo, hi = min(lo, len(self.nodes) - 1), max(hi, lo + 1)
            ri, lw = self.nodes[lo:hi], self.log_weight[lo:hi]               # (k,)
            x = r[:, None] * ri[None] / b ** 2                               # (c, k)
            log_a, ratio = log_sphere_average(x, d)                          # (c, k) each
            terms = -(r[:, None] - ri[None]) ** 2 / (2 * b * b) + log_a + lw[None]  # (c, k)
            log_f[idx] = torch.logsumexp(terms, 1)                          # (c,)
            omega = torch.softmax(terms, 1)                                  # (c, k)
            factor[idx] = -1 / b ** 2 + (omega * ri[None] ** 2 * ratio).sum(1) / b ** 4
        return log_f - math.log(self.n) - 0.5 * d * math.log(2 * math.pi * b * b), factor

    def radial(self, rq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened ``log f̂`` and ``∂_r log f̂ / r`` at radii (m,): from the table where there is
        one and the radius lies within it, else exact."""
        if self.table_step is None:
            return self._exact(rq)
        last = len(self.table_log_f) - 1
        pos = rq / self.table_step                                           # (m,)
        inside = pos <= last
        log_f = _lagrange4(self.table_log_f, pos.clamp(max=last))            # (m,)
        factor = _lagrange4(self.table_factor, pos.clamp(max=last))          # (m,)
        if not bool(inside.all()):
            log_f[~inside], factor[~inside] = self._exact(rq[~inside])
        return log_f, factor

    def evaluate_whitened(self, wq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened log-density (m,) and score (m,d) at whitened queries (m,d)."""
        log_f, factor = self.radial(wq.norm(dim=1))                          # (m,), (m,)
        return log_f, wq * factor[:, None]

    def evaluate(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log f`` (m,) and ``∇ log f = L⁻ᵀ ∇_w log f̂`` (m,d) at queries (m,d)."""
        log_f, score_w = self.evaluate_whitened(self.whiten(queries))        # (m,), (m, d)
        if self.chol is None:
            return log_f, score_w
        score = torch.linalg.solve_triangular(self.chol.T, score_w.T, upper=True).T  # (m, d)
        return log_f - torch.log(self.chol.diagonal()).sum(), score


def _binned_radii(radius: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted radii and their log weights: the radii themselves (weight 1), or above ``grid``
    points their linear binning on ``grid`` equally spaced nodes over [0, max r]."""
    if not grid or len(radius) <= grid:
        return torch.sort(radius).values, torch.zeros_like(radius)
    nodes = torch.linspace(0.0, float(radius.max()), grid, dtype=radius.dtype, device=radius.device)
    spacing = nodes[1] - nodes[0]
    pos = radius / spacing
    left = pos.floor().long().clamp(max=grid - 2)                            # (n,)
    frac = pos - left                                                        # (n,)
    counts = torch.zeros(grid, dtype=radius.dtype, device=radius.device)
    counts.index_add_(0, left, 1 - frac)
    counts.index_add_(0, left + 1, frac)
    keep = counts > 0
    return nodes[keep], torch.log(counts[keep])


class EllipticalKDE(ScoreEstimator):
    """Kernel estimate for elliptical laws (module docstring): whiten by the sample mean and
    covariance, average each sample's Gaussian kernel over rotations, smooth in the radius only.

    ``bandwidth_factor`` c: ``b = c·sd(r_i)·n^{-1/5}`` in whitened units (default 1.4, chosen on
    isotropic Gaussian and Student-t samples, `benchmarks/elliptical_kde.py`); ``grid``: context
    points above which the radii are binned on that many grid points (0: never bin); ``table``:
    the most nodes of the tabulated radial profile (:class:`RadialFit`; 0: always sum exactly).
    """

    def __init__(self, bandwidth_factor: float = 1.4, *, grid: int = 1024, table: int = 4096):
        if isinstance(bandwidth_factor, bool) or not isinstance(bandwidth_factor, (int, float)) \
                or not (math.isfinite(bandwidth_factor) and bandwidth_factor > 0):
            raise ValueError(f"bandwidth_factor must be a positive finite float, got {bandwidth_factor!r}")
        if isinstance(grid, bool) or not isinstance(grid, int) or (grid != 0 and grid < 64):
            raise ValueError(f"grid must be 0 (no binning) or an int >= 64, got {grid!r}")
        if isinstance(table, bool) or not isinstance(table, int) or (table != 0 and table < 64):
            raise ValueError(f"table must be 0 (no table) or an int >= 64, got {table!r}")
        self.bandwidth_factor = float(bandwidth_factor)
        self.grid, self.table = grid, table

    min_particles_reason = "to whiten by the sample covariance"

    @property
    def min_particles(self) -> int:
        return 3

    def describe(self) -> dict:
        return {"estimator": "EllipticalKDE", "bandwidth_factor": self.bandwidth_factor, "grid": self.grid,
                "table": self.table}

    def _evaluate(self, context, queries):
        return RadialFit(context, self.bandwidth_factor, grid=self.grid, table=self.table).evaluate(queries)


registry.register("estimator", "elliptical_kde", EllipticalKDE)
