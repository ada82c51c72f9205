"""DiScoFormer's candidate estimates: parameter-free classical estimators the network gates over.

Everything here works in whitened coordinates (``particlescore.affine``) and has no learned
parameters. For every query the network receives K candidate scores and log-densities plus
``N_DESCRIPTORS`` descriptors per candidate that tell it how far to trust each one.

1. Kernel bank. For bandwidths ``h_b = c_b·n^{-1/(d+4)}`` the Gaussian-kernel weights are
   ``w_j(y) = softmax_j(−‖y − x_j‖²/2h²) = softmax_j((y·x_j − ½‖x_j‖²)/h²)``: one (m, n) matrix
   of ``y·x_j − ½‖x_j‖²`` serves every bandwidth. From it, per bandwidth: the KDE log-density
   and score (Parzen 1962), and the *local Gaussian* (local likelihood, Hjort & Jones 1996): with
   the kernel-weighted mean ``m`` and covariance ``C``, ``s_L = C⁻¹(m − y)`` and
   ``log f_L = log f_KDE + ½(d log h² − log det C) − ½ (m−y)ᵀC⁻¹(m−y)``, exact for any Gaussian
   population at any ``h`` (the kernel's bias cancels).
2. In-context Gaussian mixture (``mixture_components > 0``; all shipped weights use it): a
   mixture fitted to the whitened context by EM, grown by splitting components along their
   principal axis, covariances shrunk towards a multiple of I, the number of components chosen
   by BIC. Kernel estimates converge like n^{-4/(d+4)}, slower as d grows; a parametric fit
   converges like 1/n in any d, which is what d = 10 needed (model card). The mixture sums are
   ``distributions._mixture_terms``, shared with :class:`~particlescore.GaussianMixture`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .distributions import _mixture_terms
from .elliptical import N_SPHERICITY, RadialFit

__all__ = ["Candidates", "Mixture", "N_DESCRIPTORS", "N_SPHERICITY", "kernel_bank", "kernel_bank_torch", "fit_mixture", "merge_components", "refit_mixture", "reframe_mixture",
           "mixture_candidate", "evaluate_candidates", "elliptical_fits", "elliptical_candidate"]

#: Descriptors per candidate, in the order they are appended.
#: KDE: (log N_eff, ‖m − y‖/h, 0); local Gaussian: (log N_eff, ‖m − y‖/h, log det C / d − log h²);
#: mixture: (responsibility entropy, √(Mahalanobis²/d) to the likeliest component, its log w_k / 10).
N_DESCRIPTORS = 3


class Candidates(NamedTuple):
    """Candidate estimates at m queries (whitened units)."""
    score: torch.Tensor        # (B, m, K, d)
    log_density: torch.Tensor  # (B, m, K)
    descriptors: torch.Tensor  # (B, m, K·N_DESCRIPTORS), then N_SPHERICITY context features if configured


# --------------------------------------------------------------------------- kernel bank
def _per_element(values: list[float], like: torch.Tensor, dims: int) -> torch.Tensor:
    """Per-batch-element constants (B,) -> (B, 1, …) with ``dims`` trailing singleton axes."""
    return torch.tensor(values, dtype=torch.float64, device=like.device).to(like.dtype).view(-1, *([1] * dims))


def kernel_bank(ctx: torch.Tensor, qry: torch.Tensor, kde_c: list[float], local_c: list[float],
                local_ridge: float, counts: list[int] | None = None, mask: torch.Tensor | None = None):
    """KDE and local-Gaussian estimates at several bandwidths, in whitened coordinates.

    ctx (B,n,d), qry (B,m,d); bandwidths ``h = c·n_b^{-1/(d+4)}`` for ``c`` in ``kde_c`` then
    ``local_c`` (K = their total), with ``n_b`` the context size of batch element b (``counts``;
    default n). ``mask`` (B,n) marks the valid context points of a padded batch.
    Returns candidate scores (B,m,K,d), candidate log-densities (B,m,K) and descriptors
    (B,m,K·N_DESCRIPTORS). The local fit's covariance is shrunk towards ``h²I`` (the flat-density
    limit, where it equals KDE) with weight ``d/(N_eff + d)``.

    CPU float32/float64 tensors outside autograd run the pair sums in the fused numba kernel
    :func:`particlescore.kernels.bank_moments` (O(n) memory per query, one pass per distinct
    bandwidth); anything that needs gradients (test-time adaptation differentiates w.r.t. the
    queries, twice) or lives on another device runs :func:`kernel_bank_torch`. Both compute the
    same quantities; they agree to the rounding of the dtype (tests/test_kernels.py).
    """
    if not uses_fused_bank(ctx, qry):
        return kernel_bank_torch(ctx, qry, kde_c, local_c, local_ridge, counts, mask)
    return _kernel_bank_fused(ctx, qry, kde_c, local_c, local_ridge, counts, mask)


def uses_fused_bank(ctx: torch.Tensor, qry: torch.Tensor) -> bool:
    """Whether :func:`kernel_bank` runs the fused numba kernel (O(d·n) memory per query) on
    these tensors rather than :func:`kernel_bank_torch` ((B, m, n) blocks)."""
    needs_grad = torch.is_grad_enabled() and (ctx.requires_grad or qry.requires_grad)
    return not needs_grad and ctx.device.type == "cpu" and ctx.dtype in (torch.float32, torch.float64)


def _kernel_bank_fused(ctx, qry, kde_c, local_c, local_ridge, counts, mask):
    """:func:`kernel_bank` with the pair sums in :func:`particlescore.kernels.bank_moments`."""
    from . import kernels

    B, n, d = ctx.shape
    m = qry.shape[1]
    counts = [n] * B if counts is None else counts
    eye = torch.eye(d, dtype=ctx.dtype, device=ctx.device)
    np_dtype = np.float32 if ctx.dtype == torch.float32 else np.float64
    if mask is None:
        flat = ctx.reshape(B * n, d)
        offsets = np.arange(B + 1, dtype=np.int64) * n
    else:
        flat = ctx[mask]                                                     # (Σ n_b, d) valid points, by element
        offsets = np.zeros(B + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(mask.sum(1).cpu().numpy())
    context_t = np.ascontiguousarray(flat.detach().numpy().T, dtype=np_dtype)  # (d, Σ n_b)
    queries = np.ascontiguousarray(qry.detach().reshape(B * m, d).numpy(), dtype=np_dtype)
    query_batch = np.repeat(np.arange(B, dtype=np.int64), m)
    # distinct bandwidths, widest first; a slot whose c is exactly half the previous slot's is
    # derived by squaring (kernels.bank_moments); the local fits need second moments
    distinct = sorted(set(kde_c) | set(local_c), reverse=True)
    order = []
    for c in distinct:
        if c in order:
            continue
        chain = [c]
        while chain[-1] / 2 in distinct and chain[-1] / 2 not in order:
            chain.append(chain[-1] / 2)
        order += chain
    slot = {c: i for i, c in enumerate(order)}
    derived = np.array([i > 0 and order[i] * 2 == order[i - 1] for i in range(len(order))])
    second = np.array([c in local_c for c in order])
    inv_h2 = np.array([[1.0 / (c * k ** (-1.0 / (d + 4))) ** 2 for c in order] for k in counts], dtype=np_dtype)
    tmax, s0, s2, s1, m2 = kernels.bank_moments(queries, query_batch, context_t, offsets, inv_h2, derived,
                                                second, kernels.kernel_constants(np_dtype))
    tmax = torch.from_numpy(tmax).view(B, m)                                 # max_j −½|x_j − y|²
    s0 = torch.from_numpy(s0).view(B, m, -1)                                 # Σ k_j
    s2 = torch.from_numpy(s2).view(B, m, -1)                                 # Σ k_j²
    s1 = torch.from_numpy(s1).view(B, m, -1, d)                              # Σ k_j (x_j − y)
    m2 = torch.from_numpy(m2).view(B, m, -1, d, d)                           # Σ k_j (x_j − y)(x_j − y)ᵀ
    # all K candidates at once: per-(element, candidate) constants as (B, 1, K) tensors
    cs = list(kde_c) + list(local_c)
    K, Kk = len(cs), len(kde_c)
    idx = torch.tensor([slot[c] for c in cs])
    hs = np.array([[c * k ** (-1.0 / (d + 4)) for c in cs] for k in counts])   # (B, K) float64

    def per_bk(values):
        return torch.from_numpy(np.asarray(values, dtype=np.float64)).to(ctx.dtype).view(B, 1, K)

    h, h2, inv_h2_k = per_bk(hs), per_bk(hs * hs), per_bk(1.0 / (hs * hs))
    log_h2, log_norm = per_bk(np.log(hs * hs)), per_bk(0.5 * d * np.log(2 * math.pi * hs * hs))
    log_n = _per_element([math.log(k) for k in counts], ctx, 2)              # (B, 1, 1)
    total = s0[..., idx]                                                     # (B, m, K) ≥ 1
    n_eff = total * total / s2[..., idx]                                     # (B, m, K) Kish's effective size
    kde_log = tmax[..., None] * inv_h2_k + torch.log(total) - log_n - log_norm  # (B, m, K)
    shift = s1[:, :, idx, :] / total[..., None]                              # (B, m, K, d) = m − y
    # KDE candidates
    scores = [shift[:, :, :Kk] * inv_h2_k[..., :Kk, None]]                   # (B, m, Kk, d)
    logdens = [kde_log[..., :Kk]]
    third = [torch.zeros_like(n_eff[..., :Kk])]
    # local Gaussians: C = Σk z zᵀ/Σk − (m − y)(m − y)ᵀ, shrunk towards h²I
    sh_l, tot_l, ne_l = shift[:, :, Kk:], total[..., Kk:], n_eff[..., Kk:]
    cov = m2[:, :, idx[Kk:]] / tot_l[..., None, None] - sh_l[..., :, None] * sh_l[..., None, :]  # (B, m, Kl, d, d)
    shrink = (d / (ne_l + d))[..., None, None]
    cov = (1 - shrink) * cov + (shrink + local_ridge) * h2[..., Kk:, None, None] * eye
    chol, _ = torch.linalg.cholesky_ex(cov)
    local_score = torch.cholesky_solve(sh_l[..., None], chol)[..., 0]        # (B, m, Kl, d) = C⁻¹(m − y)
    log_det_cov = 2 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)     # (B, m, Kl)
    local_log = kde_log[..., Kk:] + 0.5 * (d * log_h2[..., Kk:] - log_det_cov) - 0.5 * (sh_l * local_score).sum(-1)
    scores.append(local_score)
    logdens.append(local_log)
    third.append(log_det_cov / d - log_h2[..., Kk:])
    desc = torch.stack([torch.log(n_eff), shift.norm(dim=-1) / h, torch.cat(third, -1)], -1)  # (B, m, K, 3)
    return torch.cat(scores, -2), torch.cat(logdens, -1), desc.reshape(B, m, K * N_DESCRIPTORS)


def kernel_bank_torch(ctx: torch.Tensor, qry: torch.Tensor, kde_c: list[float], local_c: list[float],
                local_ridge: float, counts: list[int] | None = None, mask: torch.Tensor | None = None):
    """:func:`kernel_bank` (same arguments and outputs) in plain torch: differentiable (also
    twice), any device; (B, m, n) temporaries."""
    B, n, d = ctx.shape
    m = qry.shape[1]
    counts = [n] * B if counts is None else counts
    eye = torch.eye(d, dtype=ctx.dtype, device=ctx.device)
    keys = torch.cat([ctx, -0.5 * (ctx * ctx).sum(-1, keepdim=True)], -1)    # (B, n, d+1) [x, −½‖x‖²]
    queries = torch.cat([qry, torch.ones_like(qry[..., :1])], -1)           # (B, m, d+1) [y, 1]
    ctx_outer = (ctx[..., :, None] * ctx[..., None, :]).reshape(B, n, d * d)  # (B, n, d²)
    values = torch.cat([ctx, ctx_outer], -1)                                 # (B, n, d + d²)
    dot = queries @ keys.transpose(-1, -2)                                   # (B, m, n) = y·x − ½‖x‖²
    if mask is not None:
        dot = dot.masked_fill(~mask[:, None, :], -math.inf)                  # (B, m, n) padding: weight 0
    # max_j(dot/h²) = max_j(dot)/h² for every h: shift once, then one exp per bandwidth
    dot_max = dot.amax(-1, keepdim=True)                                     # (B, m, 1)
    shifted = dot - dot_max                                                  # (B, m, n) ≤ 0
    half_sq_q = 0.5 * (qry * qry).sum(-1)                                    # (B, m)
    log_n = _per_element([math.log(k) for k in counts], ctx, 1)              # (B, 1)
    scores, logdens, descs = [], [], []
    shared = {}                                                              # c -> weights, n_eff, lse
    for c, local in [(c, False) for c in kde_c] + [(c, True) for c in local_c]:
        hs = [c * k ** (-1.0 / (d + 4)) for k in counts]                     # B bandwidths
        h = _per_element(hs, ctx, 1)                                         # (B, 1)
        h2 = _per_element([x * x for x in hs], ctx, 2)                       # (B, 1, 1)
        inv_h2 = _per_element([1.0 / (x * x) for x in hs], ctx, 2)           # (B, 1, 1)
        log_h2 = _per_element([math.log(x * x) for x in hs], ctx, 1)         # (B, 1)
        d_log_h2 = _per_element([d * math.log(x * x) for x in hs], ctx, 1)   # (B, 1)
        log_norm = _per_element([0.5 * d * math.log(2 * math.pi * x * x) for x in hs], ctx, 1)  # (B, 1)
        if c not in shared:  # a bandwidth in both lists (KDE and local fit) shares its weights
            # clamp at −80: e⁻⁸⁰ ≈ 2e-35 is still a normal float32 (subnormal exp results run ~5×
            # slower on x86) and negligible against the row maximum 1
            kernel = torch.exp((shifted * inv_h2).clamp_(min=-80.0))         # (B, m, n) max 1 per row
            if mask is not None:
                kernel = kernel * mask[:, None, :]                           # (B, m, n) padding exactly 0
            total = kernel.sum(-1, keepdim=True)                             # (B, m, 1) ≥ 1
            weights = kernel / total                                         # (B, m, n) softmax_j
            shared[c] = (weights, 1.0 / (weights * weights).sum(-1),         # (B, m) Kish's effective size
                         (dot_max * inv_h2 + torch.log(total))[..., 0])      # (B, m) logsumexp_j dot/h²
        weights, n_eff, lse = shared[c]
        kde_log = lse - inv_h2[..., 0] * half_sq_q - log_n - log_norm        # (B, m)
        if not local:
            local_mean = weights @ ctx                                       # (B, m, d)
            shift = local_mean - qry                                         # (B, m, d)
            scores.append(shift * inv_h2)                                    # (B, m, d) KDE score
            logdens.append(kde_log)
            descs += [torch.log(n_eff), shift.norm(dim=-1) / h, torch.zeros_like(n_eff)]
            continue
        moments = weights @ values                                           # (B, m, d + d²)
        local_mean = moments[..., :d]                                        # (B, m, d)
        second = moments[..., d:].reshape(B, m, d, d)                        # (B, m, d, d)
        cov = second - local_mean[..., :, None] * local_mean[..., None, :]   # (B, m, d, d)
        shrink = (d / (n_eff + d))[..., None, None]                          # (B, m, 1, 1)
        cov = (1 - shrink) * cov + (shrink + local_ridge) * h2[..., None] * eye  # (B, m, d, d)
        chol, _ = torch.linalg.cholesky_ex(cov)                              # (B, m, d, d)
        shift = local_mean - qry                                             # (B, m, d)
        local_score = torch.cholesky_solve(shift[..., None], chol)[..., 0]   # (B, m, d) = C⁻¹(m − y)
        log_det_cov = 2 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)  # (B, m)
        local_log = kde_log + 0.5 * (d_log_h2 - log_det_cov) - 0.5 * (shift * local_score).sum(-1)
        scores.append(local_score)
        logdens.append(local_log)
        descs += [torch.log(n_eff), shift.norm(dim=-1) / h, log_det_cov / d - log_h2]
    return torch.stack(scores, -2), torch.stack(logdens, -1), torch.stack(descs, -1)


# --------------------------------------------------------------------------- in-context mixture
class Mixture(NamedTuple):
    """Gaussian mixture, padded to a fixed number of components (padding has weight 0)."""
    log_weight: torch.Tensor   # (B, K), −inf for padding
    mean: torch.Tensor         # (B, K, d)
    chol: torch.Tensor         # (B, K, d, d) Cholesky factors of the covariances

    @property
    def n_components(self) -> torch.Tensor:
        """Components in use per batch element (B,)."""
        return torch.isfinite(self.log_weight).sum(-1)


def _component_log_prob(x: torch.Tensor, mix: Mixture, want_score: bool = False):
    """``log w_k + log N(x | μ_k, Σ_k)`` (B,K,m), the component scores (B,K,m,d) or None, and the
    whitened offsets ``z = L_k⁻¹(x − μ_k)`` (B,K,d,m)."""
    half_log_det = torch.log(mix.chol.diagonal(dim1=-2, dim2=-1)).sum(-1)   # (B, K)
    return _mixture_terms(x, mix.mean, mix.chol, half_log_det, want_score, log_weight=mix.log_weight, return_z=True)


def _log_likelihood(x: torch.Tensor, mix: Mixture, omega: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_i ω_i log Σ_k w_k N(x_i | μ_k, Σ_k)`` (B,); ``omega`` (B,n) masks padding (default 1)."""
    log_p, _, _ = _component_log_prob(x, mix)                                # (B, K, n)
    log_f = torch.logsumexp(log_p, 1)                                        # (B, n)
    return (log_f if omega is None else log_f * omega).sum(-1)


def _em(x: torch.Tensor, mix: Mixture, iters: int, shrink: float, ridge: float,
        omega: torch.Tensor | None = None, tied=False) -> tuple[Mixture, torch.Tensor]:
    """``iters`` EM steps (Dempster, Laird & Rubin 1977) with shrunk covariances; returns the
    mixture and its log-likelihood (B,). ``omega`` (B,n): 1 for points, 0 for padding. ``tied``
    (bool, or (B,) bools per element): one covariance shared by all components, the pooled
    within-component scatter ``Σ_k n_k C_k / n`` (shrunk with n in place of n_k)."""
    B, n, d = x.shape
    n_b = n if omega is None else omega.sum(-1, keepdim=True)                # points per element
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    tied = torch.as_tensor(tied, device=x.device).expand(B)                  # (B,)
    any_tied = bool(tied.any())
    for _ in range(iters):
        log_p, _, _ = _component_log_prob(x, mix)                            # (B, K, n)
        resp = torch.softmax(log_p, 1)                                       # (B, K, n)
        if omega is not None:
            resp = resp * omega[:, None]                                     # (B, K, n) padding: no weight
        n_k = resp.sum(-1) + 1e-10                                           # (B, K)
        mean = (resp @ x) / n_k[..., None]                                   # (B, K, d)
        diff = x[:, None] - mean[:, :, None]                                 # (B, K, n, d)
        cov = (resp[..., None] * diff).transpose(-1, -2) @ diff / n_k[..., None, None]  # (B, K, d, d)
        counts = n_k                                                         # (B, K) shrinkage counts
        if any_tied:
            pooled = (n_k[..., None, None] * cov).sum(1, keepdim=True) / n_k.sum(1)[:, None, None, None]  # (B, 1, d, d)
            cov = torch.where(tied[:, None, None, None], pooled, cov)         # (B, K, d, d)
            counts = torch.where(tied[:, None], n_k.sum(1, keepdim=True), n_k)  # (B, K)
        rho = (shrink * d / (counts + d)).clamp(max=1.0)[..., None, None]    # (B, K, 1, 1)
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]     # (B, K, 1, 1)
        cov = (1 - rho) * cov + (rho * scale + ridge) * eye                  # (B, K, d, d)
        mix = Mixture(torch.log(n_k / n_b), mean, torch.linalg.cholesky(cov))
    return mix, _log_likelihood(x, mix, omega)


def _is_tied(mix: Mixture) -> torch.Tensor:
    """(B,) True where every used component has the same covariance factor (a tied fit)."""
    used = torch.isfinite(mix.log_weight)                                    # (B, K)
    first = mix.chol[:, :1]                                                  # (B, 1, d, d)
    same = (mix.chol == first).flatten(2).all(-1) | ~used                    # (B, K)
    return same.all(-1) & (used.sum(-1) > 1)


def _unbiased_precision(mix: Mixture, counts: torch.Tensor) -> Mixture:
    """Covariances scaled by ``N/(N − d − 2)`` (one component fitted to N points; ``N/(N − K −
    d − 1)`` for K tied components), so that their inverses are unbiased estimates of the
    precisions: ``E[S⁻¹] = N Σ⁻¹/(N − d − 2)`` for the maximum-likelihood covariance S of N
    Gaussian points (Anderson 2003, §7.2); the factor is capped at 2 for small N."""
    d = mix.mean.shape[-1]
    used = torch.isfinite(mix.log_weight)                                    # (B, K)
    k_used = used.sum(-1, keepdim=True).to(counts.dtype)                     # (B, 1)
    n_b = counts.reshape(-1, 1).to(mix.mean.dtype)                           # (B, 1)
    tied = _is_tied(mix)[:, None]                                            # (B, 1)
    points = torch.where(tied, n_b, torch.exp(mix.log_weight) * n_b)         # (B, K) N
    dof = points - torch.where(tied, k_used + d + 1, torch.full_like(k_used, d + 2.0))  # (B, K)
    factor = torch.where(dof > points / 2, points / dof, torch.full_like(points, 2.0))  # (B, K)
    factor = torch.where(used, factor, torch.ones_like(factor))              # (B, K)
    return Mixture(mix.log_weight, mix.mean, mix.chol * factor.sqrt()[..., None, None])


def select_mixture(choose: torch.Tensor, first: Mixture, second: Mixture) -> Mixture:
    """Per batch element, ``first`` where ``choose`` (B,) is True, else ``second`` (same shapes)."""
    return Mixture(*(torch.where(choose.view((-1,) + (1,) * (a.dim() - 1)), a, b) for a, b in zip(first, second)))


def _padded(mix: Mixture, size: int) -> Mixture:
    """``mix`` padded to ``size`` components: weight 0 (log −inf), mean 0, identity covariance."""
    B, k, d = mix.mean.shape
    extra = size - k
    eye = torch.eye(d, dtype=mix.mean.dtype, device=mix.mean.device)
    return Mixture(F.pad(mix.log_weight, (0, extra), value=-math.inf), F.pad(mix.mean, (0, 0, 0, extra)),
                   torch.cat([mix.chol, eye.expand(B, extra, d, d)], 1))


#: fit_mixture's kmeans_start: Lloyd iterations after the k-means++ seeding
KMEANS_ITERS = 10


def _kmeans_start(x: torch.Tensor, k: int, omega: torch.Tensor | None, ridge: float, restart: int = 0) -> Mixture:
    """A k-component tied mixture from k-means (B,n,d) -> Mixture: greedy k-means++ seeding
    (Arthur & Vassilvitskii 2007; 2 + ⌊ln k⌋ candidates per centre, the one that lowers the
    potential most, as scikit-learn does), :data:`KMEANS_ITERS` Lloyd steps, then the clusters'
    fractions, means and pooled within-cluster scatter. The draws come from a generator seeded
    with k, over the points sorted by their norm: the start is a deterministic function of the
    set, invariant to the points' order and, since norms and distances are, to rotations of
    the whitened frame. ``omega`` (B,n) masks padding; ``restart`` > 0 seeds another draw
    (``fit_mixture``'s ``kmeans_restarts``)."""
    B, n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    log_w, means, chols = [], [], []
    for b in range(B):
        pts = x[b] if omega is None else x[b][omega[b] > 0]                  # (n_b, d)
        pts = pts[torch.argsort((pts * pts).sum(-1))]                        # (n_b, d) canonical order
        gen = torch.Generator().manual_seed(k + 1_000_003 * restart)
        trials = 2 + int(math.log(k))
        centres = pts[torch.randint(len(pts), (1,), generator=gen)]          # (1, d)
        dist = ((pts - centres) ** 2).sum(-1)                                # (n_b,) D² to the nearest centre
        for _ in range(1, k):
            idx = torch.multinomial(dist.clamp_min(0).cpu() + 1e-300, trials, replacement=True, generator=gen)
            cand = ((pts[None] - pts[idx.to(pts.device)][:, None]) ** 2).sum(-1)  # (T, n_b)
            new = torch.minimum(dist[None], cand)                            # (T, n_b)
            j = new.sum(-1).argmin()
            centres = torch.cat([centres, pts[idx[j]][None]])                # (c, d)
            dist = new[j]
        for _ in range(KMEANS_ITERS):
            label = torch.cdist(pts, centres).argmin(-1)                     # (n_b,)
            onehot = F.one_hot(label, k).to(pts.dtype)                       # (n_b, k)
            size = onehot.sum(0)                                             # (k,)
            centres = torch.where(size[:, None] > 0, onehot.T @ pts / size.clamp_min(1)[:, None], centres)
        label = torch.cdist(pts, centres).argmin(-1)                         # (n_b,)
        onehot = F.one_hot(label, k).to(pts.dtype)                           # (n_b, k)
        size = onehot.sum(0).clamp_min(1.0)                                  # (k,) an empty cluster keeps one point's weight
        diff = pts - centres[label]                                          # (n_b, d)
        cov = diff.T @ diff / len(pts) + ridge * eye                         # (d, d) pooled within-cluster scatter
        log_w.append(torch.log(size / size.sum()))
        means.append(centres)
        chols.append(torch.linalg.cholesky(cov).expand(k, d, d))
    return Mixture(torch.stack(log_w), torch.stack(means), torch.stack(chols))


def _birth_start(x: torch.Tensor, m: Mixture, omega: torch.Tensor | None) -> Mixture:
    """k-1 -> k components: a new component, with the shared covariance of the tied fit ``m``, at
    the point the fit explains worst (lowest ``log f``), weight 1/k."""
    B, n, d = x.shape
    log_p, _, _ = _component_log_prob(x, m)                                  # (B, k-1, n)
    log_f = torch.logsumexp(log_p, 1)                                        # (B, n)
    if omega is not None:
        log_f = log_f.masked_fill(omega <= 0, math.inf)
    i = log_f.argmin(1)                                                      # (B,)
    rows = torch.arange(B, device=x.device)
    k = m.log_weight.shape[1] + 1
    log_w = m.log_weight + math.log((k - 1) / k)                             # (B, k-1)
    return Mixture(torch.cat([log_w, torch.full_like(log_w[:, :1], -math.log(k))], 1),
                   torch.cat([m.mean, x[rows, i][:, None]], 1), torch.cat([m.chol, m.chol[:, :1]], 1))


#: fit_mixture's tied_clustering: the tied chain competes below this many points per full-component parameter
TIED_CLUSTERING_POINTS = 128


@torch.no_grad()
def fit_mixture(x: torch.Tensor, max_components: int, iters: int, shrink: float, ridge: float,
                mask: torch.Tensor | None = None, *, tied: bool = False, tied_clustering: bool = False,
                kmeans_start: bool = False, unbiased: bool = False, patience: int | None = None,
                scale_split: bool = False, birth: bool = False, kmeans_restarts: int = 1) -> Mixture:
    """Gaussian mixture fitted to ``x`` (B,n,d) by EM, grown one split at a time, K by BIC.

    K = 1 is the sample Gaussian (the maximum-likelihood single Gaussian, so EM has nothing to
    do: only its log-likelihood is computed). K → K+1 splits the component j with the largest
    ``w_j·λ_max`` along its principal axis ``v`` (eigenvalue λ) into two halves of weight
    ``w_j/2`` with means ``μ ± δ``, ``δ = 0.8·√λ·v``, and covariance ``Σ − δδᵀ`` each: the pair
    has exactly the parent's mean and covariance (½Σ_± [(Σ − δδᵀ) + δδᵀ] = Σ), and ``Σ − δδᵀ``
    stays positive definite (0.36·λ along v), so EM starts from a moment-matched split
    (as in Richardson & Green 1997). No random initialisation: the fit is a deterministic,
    permutation-invariant function of the set. BIC = −2·loglik + p·log n with
    p = K(d + d(d+1)/2) + K − 1 free parameters (Schwarz 1978) picks K per batch element; K
    stops at n/(2d). ``mask`` (B,n) marks the valid points of a padded batch. Runs in float64;
    returns a mixture padded to ``max_components``.

    ``tied``: a second chain of fits whose components share one covariance (grown by the same
    splits, with the shared covariance ``Σ − δδᵀ``), p = Kd + d(d+1)/2 + K − 1. It is grown, and
    competes in BIC, only where two full-covariance components would have more parameters than
    n/2 (fewer than two points per parameter): in high d a separate covariance per component
    costs more data than there is (d = 100, n = 2048, two components: the full fit loses to one
    Gaussian), while where full fits are affordable BIC's likelihood preferred tied ones even
    when their score was worse (measured on random mixtures, d = 10, n = 1024: 7.0 → 10.3 %).
    ``tied_clustering``: the tied chain also competes wherever a full component has fewer than
    :data:`TIED_CLUSTERING_POINTS` points per parameter, ``n < 128·(d + d(d+1)/2)``. Meant for fits
    whose covariances are re-estimated per component afterwards (:func:`loo_covariances`), where
    the tied fit only supplies the clustering: a shared covariance costs d(d+1)/2 parameters once
    instead of per component, so BIC can afford the components that full fits merge (held-out
    random mixtures, d = 10, n = 256: 2.3 components chosen on average where the mixtures have
    5.7, 6.5 with the tied chain; with the leave-one-out covariances the d = 10 network's relative
    score MSE drops from 21.2 to 14.2 %; model card, "Tied clustering"). The bound: measured at
    every n, the tied chain helped up to 114 points per parameter (d = 3, n = 1024: 5.85 → 5.21 %)
    and changed nothing beyond the standard error from 205 on (d = 2, n = 1024 and larger), where
    it only doubles the search (n = 25 600, d = 2: 2.2 s against 1.2 s).
    ``kmeans_start``: at every K the tied chain also runs EM from a k-means++ start
    (:func:`_kmeans_start`) and keeps whichever of the two fits is likelier; the split chain then
    grows from it. Principal-axis splits are a divisive search: in d = 10 a split of a blob that
    holds several clusters cuts some of them, and EM does not undo it in 20 steps (held-out random
    mixtures, d = 10: the d = 10 network's relative score MSE 14.19 → 12.14 % at n = 256,
    6.22 → 5.16 % at n = 1024; model card, "k-means++ start").
    ``kmeans_restarts``: k-means++ draws per K (seeds 0 … r−1), each run through EM; the likeliest
    competes with the split as above. Scored by likelihood after EM, not by k-means inertia
    (three draws by inertia changed nothing; model card, "k-means++ start").
    ``birth``: the tied chain also grows by a birth move (:func:`_birth_start`): a new component,
    with the shared covariance, at the point the K−1 fit explains worst, the likelier of it and
    the split kept. Splits and k-means++ seeds go where the mass is, so a cluster of a few points
    far from the rest stays absorbed in a neighbour's tail: in d = 10 a component of 8 points
    carries about 1 % of the queries but, scored with its neighbour's covariance, several points of
    relative score error. Inserting a component at a data point is greedy EM's move (Vlassis &
    Likas 2002; Verbeek, Vlassis & Kröse 2003, Neural Comput. 15), here with one candidate point
    (model card, "Birth moves").
    ``scale_split``: a third chain of full-covariance fits, grown by splitting the heaviest
    component j into two concentric halves of weight ``w_j/2`` and covariances ``Σ_j/2`` and
    ``3Σ_j/2`` (again moment-matched). Principal-axis splits start every pair side by side, and
    20 EM steps do not turn them into the concentric pair a heavy-tailed cluster is best
    approximated by (a scale mixture, as a Student-t is an integral over Gaussian scales), which
    is where scikit-learn's converged fits won (Student-t ν = 3, d = 5, n = 1024, 16 draws: the
    any-d network's mixture candidate 8.50 → 4.32 %, scikit-learn 5.96 %; model card, "Scale
    splits"). The chain competes in BIC with the others, only where two full components have at
    least two points per parameter (``2(d + d(d+1)/2) + 1 ≤ n/2``; not in d = 100, n = 2048,
    where it could not win).
    ``unbiased``: the chosen fit's covariances go through :func:`_unbiased_precision`.
    ``patience``: stop growing once no batch element's BIC has improved for ``patience``
    consecutive K (None: every K up to ``max_components``, the search the weights were trained
    with). Each K costs ``iters`` EM steps, so on a single Gaussian patience 2 runs 2 of 9 splits.
    """
    if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 1):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")
    if tied_clustering and not tied:
        raise ValueError("tied_clustering needs tied=True (it widens where the tied chain competes)")
    if birth and not tied:
        raise ValueError("birth needs tied=True (it is a second start for the tied chain)")
    if not isinstance(kmeans_restarts, int) or isinstance(kmeans_restarts, bool) or kmeans_restarts < 1:
        raise ValueError(f"kmeans_restarts must be a positive int, got {kmeans_restarts!r}")
    if kmeans_start and not tied:
        raise ValueError("kmeans_start needs tied=True (it is a second start for the tied chain)")
    dtype = x.dtype
    x = x.double()
    B, n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    rows = torch.arange(B, device=x.device)
    omega = None if mask is None else mask.to(x.dtype)                       # (B, n)
    if omega is None:
        mean0 = x.mean(1, keepdim=True)                                      # (B, 1, d)
        centred = x - mean0                                                  # (B, n, d)
        cov = (centred.transpose(-1, -2) @ centred / n + ridge * eye)[:, None]  # (B, 1, d, d)
        counts = torch.full((B,), float(n), dtype=x.dtype, device=x.device)  # (B,)
        log_n = math.log(n)
    else:
        counts = omega.sum(-1)                                               # (B,)
        x = x * omega[..., None]                                             # (B, n, d) padding at 0
        mean0 = x.sum(1, keepdim=True) / counts[:, None, None]               # (B, 1, d)
        centred = (x - mean0) * omega[..., None]                             # (B, n, d)
        cov = (centred.transpose(-1, -2) @ centred / counts[:, None, None] + ridge * eye)[:, None]
        log_n = torch.log(counts)                                            # (B,)
    mix = Mixture(torch.zeros(B, 1, dtype=x.dtype, device=x.device), mean0, torch.linalg.cholesky(cov))
    loglik = _log_likelihood(x, mix, omega)

    def bic(k: int, ll: torch.Tensor) -> torch.Tensor:
        return -2 * ll + (k * (d + d * (d + 1) / 2) + k - 1) * log_n

    def bic_tied(k: int, ll: torch.Tensor) -> torch.Tensor:
        return -2 * ll + (k * d + d * (d + 1) / 2 + k - 1) * log_n

    def split(m: Mixture, k: int, shared: bool) -> Mixture:
        """k-1 -> k components: split the component with the largest w_j·λ_max (docstring)."""
        cov = m.chol @ m.chol.transpose(-1, -2)                              # (B, k-1, d, d)
        lam, vec = torch.linalg.eigh(cov)                                    # (B, k-1, d), (B, k-1, d, d)
        j = (m.log_weight + torch.log(lam[..., -1])).argmax(1)               # (B,) component to split
        delta = 0.8 * lam[rows, j, -1, None].sqrt() * vec[rows, j, :, -1]    # (B, d)
        cov_j = cov[rows, j] - delta[:, :, None] * delta[:, None, :]         # (B, d, d)
        mean, log_w = m.mean.clone(), m.log_weight.clone()
        mean[rows, j] += delta
        log_w[rows, j] -= math.log(2)
        if shared:
            cov = cov_j[:, None].expand(B, k, d, d)                          # (B, k, d, d)
        else:
            cov[rows, j] = cov_j
            cov = torch.cat([cov, cov_j[:, None]], 1)                        # (B, k, d, d)
        return Mixture(torch.cat([log_w, log_w[rows, j, None]], 1),
                       torch.cat([mean, (m.mean[rows, j] - delta)[:, None]], 1), torch.linalg.cholesky(cov))

    def split_scale(m: Mixture) -> Mixture:
        """k-1 -> k components: the heaviest component j becomes two concentric halves of
        weight ``w_j/2``, covariances ``Σ/2`` and ``3Σ/2`` (their mixture keeps the parent's mean
        and covariance), the start a principal-axis split cannot reach: a scale mixture."""
        j = m.log_weight.argmax(1)                                           # (B,)
        chol = m.chol.clone()
        chol[rows, j] = m.chol[rows, j] * math.sqrt(0.5)
        log_w = m.log_weight.clone()
        log_w[rows, j] -= math.log(2)
        return Mixture(torch.cat([log_w, log_w[rows, j, None]], 1), torch.cat([m.mean, m.mean[rows, j, None]], 1),
                       torch.cat([chol, (m.chol[rows, j] * math.sqrt(1.5))[:, None]], 1))

    best, best_bic = _padded(mix, max_components), bic(1, loglik)
    best_k = torch.ones(B, dtype=torch.int64, device=x.device)               # (B,) K of the best fit so far
    full_params = d + d * (d + 1) / 2                                        # one full component's mean and covariance
    if tied_clustering:   # contains the rule below: 128·p > 4p + 2
        tied_allowed = counts < TIED_CLUSTERING_POINTS * full_params         # (B,) docstring
    else:
        tied_allowed = 2 * full_params + 1 > counts / 2                      # (B,) docstring
    # chains: (fit, shared covariance, criterion, grown by scale splits)
    chains = [(mix, False, bic, False)] + ([(mix, True, bic_tied, False)] if tied and bool(tied_allowed.any()) else [])
    scale_allowed = 2 * full_params + 1 <= counts / 2                        # (B,) docstring
    if scale_split and bool(scale_allowed.any()):
        chains.append((mix, False, bic, True))
    for k in range(2, max_components + 1):
        if k * d > float(counts.max()) / 2:
            break
        grown = []
        for chain, shared, criterion, by_scale in chains:
            starts = [split_scale(chain) if by_scale else split(chain, k, shared)]
            if shared and birth:
                starts.append(_birth_start(x, chain, omega))
            if shared and kmeans_start:
                starts += [_kmeans_start(x, k, omega, ridge, restart) for restart in range(kmeans_restarts)]
            chain, loglik = _em(x, starts[0], iters, shrink, ridge, omega, tied=shared)
            for start in starts[1:]:   # the tied chain's other starts: the likeliest fit is kept
                other, other_ll = _em(x, start, iters, shrink, ridge, omega, tied=shared)
                likelier = other_ll > loglik                                 # (B,)
                chain = select_mixture(likelier, other, chain)
                loglik = torch.where(likelier, other_ll, loglik)
            grown.append((chain, shared, criterion, by_scale))
            score = criterion(k, loglik)
            better = score < best_bic                                        # (B,)
            if shared:
                better = better & tied_allowed
            if by_scale:
                better = better & scale_allowed
            if omega is not None:
                better = better & (k * d <= counts / 2)                      # (B,) per-element cap
            best = select_mixture(better, _padded(chain, max_components), best)
            best_bic = torch.where(better, score, best_bic)
            best_k = torch.where(better, k, best_k)
        chains = grown
        if patience is not None and bool((k - best_k >= patience).all()):
            break
    if unbiased:
        best = _unbiased_precision(best, counts)
    return Mixture(best.log_weight.to(dtype), best.mean.to(dtype), best.chol.to(dtype))


#: shrinkage intensities the leave-one-out selection tries (loo_covariances)
LOO_INTENSITIES = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: loo_covariances(small_prior=True): prior strength (points) of the pooled scale for components of at most d points
SMALL_PRIOR_POINTS = 20


def _loo_shrunk_covariance(diff: torch.Tensor, resp: torch.Tensor, cov: torch.Tensor,
                           target: torch.Tensor) -> torch.Tensor:
    """``(1 − ρ)S + ρT`` per component (target T (B,K,d,d)), with the ρ among
    :data:`LOO_INTENSITIES` that maximises the leave-one-out Gaussian log-likelihood of the
    component's points (Hoffbeck & Landgrebe 1996, IEEE TPAMI 18, "LOOC";
    :func:`_loo_log_likelihoods`). The likelihood weighs the precision's errors, which the score
    inherits, unlike the covariance's Frobenius risk."""
    arg = _loo_log_likelihoods(diff, resp, cov, target).argmax(-1)           # (B, K)
    rho = torch.tensor(LOO_INTENSITIES, dtype=cov.dtype, device=cov.device)[arg][..., None, None]  # (B, K, 1, 1)
    return (1 - rho) * cov + rho * target


def _loo_log_likelihoods(diff: torch.Tensor, resp: torch.Tensor, cov: torch.Tensor,
                         target: torch.Tensor) -> torch.Tensor:
    """``Σ_i rᵢ log N(xᵢ | μ₋ᵢ, (1 − ρ)S₋ᵢ + ρT)`` (B,K,G) for ρ in :data:`LOO_INTENSITIES`, up to
    the constant ``−(d/2) log 2π`` per point, μ₋ᵢ and S₋ᵢ the weighted mean and scatter without
    point i. In closed form: removing point i (weight rᵢ) from N = Σr gives
    ``S₋ᵢ = gᵢS − rᵢN/(N − rᵢ)² zᵢzᵢᵀ`` with ``gᵢ = N/(N − rᵢ)``,
    so ``C₋ᵢ = Aᵢ − βᵢzᵢzᵢᵀ`` and Sherman–Morrison gives ``log det C₋ᵢ = log det Aᵢ + log(1 − βᵢqᵢ)``
    and ``uᵢᵀC₋ᵢ⁻¹uᵢ = gᵢ²qᵢ/(1 − βᵢqᵢ)`` (``qᵢ = zᵢᵀAᵢ⁻¹zᵢ``, ``uᵢ = gᵢzᵢ`` the offset from the
    other points' mean); Aᵢ is diagonal in the eigenbasis of the T-whitened S. ``diff`` (B,K,n,d)
    the offsets z, ``resp`` (B,K,n) the weights r, ``cov`` S (B,K,d,d)."""
    n_k = resp.sum(-1)                                                       # (B, K)
    g = n_k[..., None] / (n_k[..., None] - resp).clamp_min(1e-3)             # (B, K, n)
    beta_unit = resp * g * g / n_k[..., None].clamp_min(1e-3)                # (B, K, n) β/(1 − ρ)
    chol_t = torch.linalg.cholesky(target)                                   # (B, K, d, d)
    half = torch.linalg.solve_triangular(chol_t, cov, upper=False)           # (B, K, d, d) L⁻¹S
    inner = torch.linalg.solve_triangular(chol_t, half.transpose(-1, -2), upper=False)  # (B, K, d, d) L⁻¹SL⁻ᵀ
    lam, vec = torch.linalg.eigh(inner)                                      # (B, K, d), (B, K, d, d)
    lam = lam.clamp_min(0.0)
    y = vec.transpose(-1, -2) @ torch.linalg.solve_triangular(chol_t, diff.transpose(-1, -2), upper=False)  # (B, K, d, n)
    y2 = (y * y).transpose(-1, -2)                                           # (B, K, n, d)
    log_det_t = 2 * torch.log(chol_t.diagonal(dim1=-2, dim2=-1)).sum(-1)     # (B, K)
    lls = []
    for r in LOO_INTENSITIES:
        D = (1 - r) * g[..., None] * lam[..., None, :] + r                   # (B, K, n, d) Aᵢ's eigenvalues
        q = (y2 / D).sum(-1)                                                 # (B, K, n)
        one_minus = 1 - (1 - r) * beta_unit * q                              # (B, K, n) 1 − βᵢqᵢ
        ok = one_minus > 1e-12                                               # C₋ᵢ positive definite
        safe = torch.where(ok, one_minus, torch.ones_like(one_minus))
        ll = -0.5 * (log_det_t[..., None] + torch.log(D).sum(-1) + torch.log(safe) + g * g * q / safe)  # (B, K, n)
        ll = torch.where(ok | (resp == 0), ll, torch.full_like(ll, -1e300))
        lls.append((resp * ll).sum(-1))                                      # (B, K)
    return torch.stack(lls, -1)                                              # (B, K, G)


@torch.no_grad()
def loo_covariances(x: torch.Tensor, mix: Mixture, frame_chol: torch.Tensor, ridge: float,
                    mask: torch.Tensor | None = None, *, small_prior: bool = False) -> Mixture:
    """The fit ``mix`` with every component's covariance estimated afresh from its
    responsibilities: its scatter S shrunk toward a multiple of the identity of the original
    coordinates ``x_orig − μ = L w`` (``frame_chol`` L (B,d,d)), ``(1 − ρ)S + ρ(tr S/d)I``, with ρ
    chosen by leave-one-out likelihood (:func:`_loo_shrunk_covariance`); a tied fit's components
    get covariances of their own. One-component fits, and components with at most 2 points, are
    returned unchanged. ``x`` (B,n,d) whitened, ``mask`` (B,n).

    BIC picks the clustering (in high d only tied fits can afford a second component); the
    covariances are then chosen for accuracy. EM's own shrinkage works in the whitened frame,
    where a scalar target inflates the between-component directions (their within-component
    variance is tiny there). Measured on the any-d network, random mixtures of its training
    family (d = 100: 2 components, n = 2048, score MSE, 8 draws; else 1–10 components, relative
    score MSE; the EM fit as it is: 0.264, 19.4 % (d = 64), 19.4 % (d = 10, n = 256), 7.92 %
    (d = 10, n = 1024)): with the target isotropic in the whitened frame instead, 0.27 in d = 100
    against 0.15 (true labels); with Ledoit–Wolf's intensity (Ledoit & Wolf 2004), which minimises
    the covariance's Frobenius risk rather than weighing the precision that the score needs,
    0.161, 28.1 %, 14.5 %, 6.82 %, against 0.147, 12.4 %, 13.8 %, 6.46 % with the leave-one-out
    choice.

    ``small_prior``: a component whose responsibilities sum to at most d (its scatter is
    singular), including those of at most 2 points, gets ``(N S + ν c I)/(N + ν)`` instead,
    ν = :data:`SMALL_PRIOR_POINTS`, c the point-weighted mean of ``tr S_k/d`` over the fit's
    components: the posterior mean under a prior worth ν points at the pooled scale. The
    leave-one-out choice from so few points shrinks toward the component's own, noisy scale
    (held-out random mixtures, d = 10, n = 256: a fit that found a mixture's 2- and 3-point
    components had 26.0 % relative score MSE where merging them gave 11.1 %). The bound ``N ≤ d`` was measured against ``N ≤ 2d``, which in d = 100
    gave a 133-point component the prior and tripled the score error (0.126 → 0.482); in d = 10
    it was also the better of the two (model card, "Birth moves")."""
    dtype, x = mix.mean.dtype, x.double()
    B, n, d = x.shape
    fit = Mixture(mix.log_weight.double(), mix.mean.double(), mix.chol.double())
    multi = torch.isfinite(fit.log_weight).sum(-1) > 1                       # (B,)
    if not bool(multi.any()):
        return mix
    L = frame_chol.double()                                                  # (B, d, d)
    log_p, _, _ = _component_log_prob(x, fit)                                # (B, K, n)
    resp = torch.softmax(log_p, 1)                                           # (B, K, n)
    if mask is not None:
        resp = resp * mask.to(x.dtype)[:, None]                              # (B, K, n)
    n_k = resp.sum(-1) + 1e-10                                               # (B, K)
    mean = (resp @ x) / n_k[..., None]                                       # (B, K, d)
    diff = (x[:, None] - mean[:, :, None]) @ L[:, None].transpose(-1, -2)    # (B, K, n, d) original units
    cov = (resp[..., None] * diff).transpose(-1, -2) @ diff / n_k[..., None, None]  # (B, K, d, d)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    renew = multi[:, None] & torch.isfinite(fit.log_weight) & (n_k > 2)      # (B, K) components re-estimated
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]        # (B, K, 1, 1)
    target = torch.where(renew[..., None, None], scale * eye, eye)           # (B, K, d, d) others: I
    scatter = cov                                                            # (B, K, d, d)
    cov = _loo_shrunk_covariance(diff, resp, torch.where(renew[..., None, None], scatter, eye), target)  # (B, K, d, d)
    if small_prior:
        used = multi[:, None] & torch.isfinite(fit.log_weight)               # (B, K)
        w = torch.where(used, n_k, torch.zeros_like(n_k))                    # (B, K)
        pooled_scale = (w[..., None, None] * scale).sum(1, keepdim=True) / w.sum(1)[:, None, None, None]  # (B, 1, 1, 1)
        prior = (n_k[..., None, None] * scatter + SMALL_PRIOR_POINTS * pooled_scale * eye) / (
            n_k[..., None, None] + SMALL_PRIOR_POINTS)                       # (B, K, d, d)
        small = used & (n_k <= d)                                            # (B, K) singular scatter
        cov = torch.where(small[..., None, None], prior, cov)                # (B, K, d, d)
        renew = renew | small
    back = torch.linalg.solve_triangular(L[:, None], cov, upper=False)       # (B, K, d, d) L⁻¹C
    cov = torch.linalg.solve_triangular(L[:, None], back.transpose(-1, -2), upper=False)  # (B, K, d, d) L⁻¹CL⁻ᵀ
    chol = torch.linalg.cholesky(cov + ridge * eye)                          # (B, K, d, d)
    chol = torch.where(renew[..., None, None], chol, fit.chol)               # (B, K, d, d)
    mean = torch.where(renew[..., None], mean, fit.mean)                     # (B, K, d)
    return Mixture(mix.log_weight, mean.to(dtype), chol.to(dtype))


#: merge_components: critical value of the Anderson–Darling statistic A*² at significance 0.01
#: (mean and variance estimated; Stephens 1974, JASA 69, table 1A, case 3). G-means splits at
#: α = 10⁻⁴ (1.8692); merging at that level cost the d = 10 network 0.2–1.0 points on
#: Student-t, Laplace and banana ensembles for the same gain on mixtures (model card, "Merge test")
MERGE_AD_CRITICAL = 1.092
#: merge_components: pairs with fewer points than this are not tested
MERGE_MIN_POINTS = 8


def anderson_darling_normal(z: torch.Tensor) -> torch.Tensor:
    """``A*² = A²(1 + 4/m − 25/m²)`` of a sample z (m,) against the normal law with the sample's
    own mean and variance (Stephens 1974, JASA 69, case 3): ``A² = −m − (1/m)Σᵢ(2i − 1)
    [ln Φ(u₍ᵢ₎) + ln(1 − Φ(u₍ₘ₊₁₋ᵢ₎))]``, u the sorted standardised sample."""
    m = z.shape[0]
    u = torch.sort((z - z.mean()) / z.std().clamp_min(1e-300))[0]           # (m,)
    cdf = torch.special.ndtr(u).clamp(1e-300, 1 - 1e-16)                     # (m,)
    i = torch.arange(1, m + 1, dtype=z.dtype, device=z.device)               # (m,)
    a2 = -m - ((2 * i - 1) * (torch.log(cdf) + torch.log1p(-cdf.flip(0)))).mean()
    return a2 * (1 + 4 / m - 25 / m ** 2)


def _merged_pair(mix: Mixture, a: int, b: int) -> Mixture:
    """One batch element's mixture (K slots) with components a < b replaced by their
    moment-matched union in slot a (weight w_a + w_b, the pair's mean and covariance) and the
    padding moved to the end."""
    w = torch.exp(mix.log_weight[0])                                         # (K,)
    cov = mix.chol[0] @ mix.chol[0].transpose(-1, -2)                        # (K, d, d)
    total = w[a] + w[b]
    mean = (w[a] * mix.mean[0, a] + w[b] * mix.mean[0, b]) / total           # (d,)
    da, db = mix.mean[0, a] - mean, mix.mean[0, b] - mean                    # (d,), (d,)
    union = (w[a] * (cov[a] + torch.outer(da, da)) + w[b] * (cov[b] + torch.outer(db, db))) / total  # (d, d)
    keep = [k for k in range(len(w)) if k != b]
    log_w, means, chols = mix.log_weight[0].clone(), mix.mean[0].clone(), mix.chol[0].clone()
    log_w[a], means[a], chols[a] = torch.log(total), mean, torch.linalg.cholesky(union)
    d = means.shape[-1]
    eye = torch.eye(d, dtype=means.dtype, device=means.device)
    return Mixture(torch.cat([log_w[keep], log_w.new_full((1,), -math.inf)])[None],
                   torch.cat([means[keep], means.new_zeros(1, d)])[None], torch.cat([chols[keep], eye[None]])[None])


@torch.no_grad()
def merge_components(x: torch.Tensor, mix: Mixture, frame_chol: torch.Tensor, ridge: float,
                     mask: torch.Tensor | None = None, *, unbiased: bool = False,
                     small_prior: bool = False) -> Mixture:
    """Over-split components of a :func:`loo_covariances` fit merged back, one pair at a time.

    G-means' split test run backwards (Hamerly & Elkan 2003, "Learning the k in k-means",
    NIPS 16): for every pair of components (a, b), the points whose likeliest component is a or
    b are projected onto ``μ_a − μ_b``; where that projection looks normal, two components are
    not needed. The pair with the smallest Anderson–Darling statistic
    (:func:`anderson_darling_normal`) is merged (moment-matched, :func:`_merged_pair`) if it is
    below :data:`MERGE_AD_CRITICAL` (α = 0.01), the covariances are re-estimated
    (:func:`loo_covariances`), and the test runs again until no pair passes. Pairs with fewer
    than :data:`MERGE_MIN_POINTS` points are not tested. A fit merged down to one component
    becomes the sample Gaussian, as :func:`fit_mixture` gives for K = 1 (with ``unbiased`` as there);
    ``small_prior`` goes to :func:`loo_covariances`.

    Why: with ``tied_clustering`` BIC chooses the clustering among shared-covariance fits, which
    split a component whose shape differs from the pooled one into two (held-out random
    mixtures, d = 10, n = 1024: 6.3 components where the mixtures have 5.4). The projection is
    rotation-equivariant and the pairs are visited in component order, so the result is a
    deterministic function of the fit. ``x`` (B,n,d) whitened, ``frame_chol`` (B,d,d) as in
    :func:`loo_covariances`, ``mask`` (B,n)."""
    dtype = mix.mean.dtype
    x = x.double()
    out = []
    for b in range(x.shape[0]):
        pts = x[b:b + 1] if mask is None else x[b:b + 1, mask[b]]            # (1, n_b, d)
        m = Mixture(*(t[b:b + 1].double() for t in mix))
        merged = False
        while int(torch.isfinite(m.log_weight).sum()) > 1:
            log_p, _, _ = _component_log_prob(pts, m)                        # (1, K, n_b)
            label = log_p[0].argmax(0)                                       # (n_b,)
            used = torch.nonzero(torch.isfinite(m.log_weight[0]))[:, 0].tolist()
            sizes = torch.bincount(label, minlength=m.log_weight.shape[1]).tolist()  # one transfer, not one per pair
            pairs = [(a, c) for i, a in enumerate(used) for c in used[i + 1:]
                     if sizes[a] + sizes[c] >= MERGE_MIN_POINTS]
            if not pairs:
                break
            stats = torch.stack([anderson_darling_normal(pts[0, (label == a) | (label == c)] @ (m.mean[0, a] - m.mean[0, c]))
                                 for a, c in pairs])                         # (P,)
            best = int(stats.argmin())
            if float(stats[best]) >= MERGE_AD_CRITICAL:
                break
            m = _merged_pair(m, *pairs[best])
            m = loo_covariances(pts, m, frame_chol[b:b + 1], ridge, small_prior=small_prior)
            merged = True
        if merged and int(torch.isfinite(m.log_weight).sum()) == 1:
            one = fit_mixture(pts, 1, 0, 0.0, ridge, unbiased=unbiased)      # the sample Gaussian
            m = _padded(Mixture(*(t.double() for t in one)), mix.mean.shape[1])
        out.append(m)
    return Mixture(*(torch.cat(parts).to(dtype) for parts in zip(*out)))


def reframe_mixture(mix: Mixture, A: torch.Tensor, b: torch.Tensor) -> Mixture:
    """The same mixture in coordinates ``w' = A w + b`` (A (B,d,d), b (B,d)): means ``Aμ_k + b``,
    covariances ``AΣ_kAᵀ`` (refactorised), weights unchanged."""
    A, b = A.to(mix.mean.dtype), b.to(mix.mean.dtype)
    mean = mix.mean @ A.transpose(-1, -2) + b[:, None]                       # (B, K, d)
    factor = A[:, None] @ mix.chol                                           # (B, K, d, d) a factor of AΣAᵀ
    cov = factor @ factor.transpose(-1, -2)                                  # (B, K, d, d)
    return Mixture(mix.log_weight, mean, torch.linalg.cholesky(cov))


@torch.no_grad()
def refit_mixture(x: torch.Tensor, mix: Mixture, iters: int, shrink: float, ridge: float,
                  mask: torch.Tensor | None = None, *, unbiased: bool = False) -> tuple[Mixture, torch.Tensor]:
    """Warm start: ``iters`` EM steps on ``x`` (B,n,d) from ``mix`` (its padding stays padding).
    ``mask`` (B,n) marks the points of a padded batch (default: every row). Returns the mixture
    and its log-likelihood gain per point over the sample Gaussian ``(ℓ_K − ℓ_1)/n_b`` (B,)
    (float64). A tied fit (:func:`_is_tied`) stays tied; ``unbiased`` as in :func:`fit_mixture`.
    A one-component fit becomes the sample Gaussian of ``x``, as in :func:`fit_mixture`."""
    dtype, x = mix.mean.dtype, x.double()
    omega = None if mask is None else mask.to(torch.float64)                 # (B, n)
    used = torch.isfinite(mix.log_weight)                                    # (B, K)
    mix = Mixture(mix.log_weight.double(), mix.mean.double(), mix.chol.double())
    one = fit_mixture(x, 1, 0, shrink, ridge, mask)                          # the sample Gaussian
    base = _log_likelihood(x, Mixture(one.log_weight.double(), one.mean.double(), one.chol.double()), omega)
    if iters:
        B, K = mix.mean.shape[:2]
        counts = torch.as_tensor(x.shape[1] if omega is None else omega.sum(-1), dtype=x.dtype,
                                 device=x.device).expand(B)                  # (B,)
        single = used.sum(-1) == 1                                           # (B,) one-component fits
        if not bool(single.all()):
            mix, _ = _em(x, mix, iters, shrink, ridge, omega, tied=_is_tied(mix))
            # padding must stay padding (EM gives an empty component weight log 1e-10/n, not −inf)
            mix = Mixture(torch.where(used, mix.log_weight, -math.inf), mix.mean, mix.chol)
            if unbiased:
                mix = _unbiased_precision(mix, counts)
        if bool(single.any()):
            # one component: the search's fit, the sample Gaussian (EM would only add its shrinkage),
            # so that warm and cold calls agree there, and no EM runs on Gaussian ensembles
            sample = _padded(Mixture(*(t.double() for t in one)), K)
            if unbiased:
                sample = _unbiased_precision(sample, counts)
            pick = single.view(B, 1)
            mix = Mixture(torch.where(pick, sample.log_weight, mix.log_weight),
                          torch.where(pick[..., None], sample.mean, mix.mean),
                          torch.where(pick[..., None, None], sample.chol, mix.chol))
    points = x.shape[1] if omega is None else omega.sum(-1)
    gain = (_log_likelihood(x, mix, omega) - base) / points
    return Mixture(mix.log_weight.to(dtype), mix.mean.to(dtype), mix.chol.to(dtype)), gain


@torch.no_grad()
def mixture_score_matching_loss(x: torch.Tensor, mix: Mixture, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hyvärinen's score-matching loss of the mixture at its own points x (B,n,d) (``mask`` (B,n):
    the valid ones of a padded batch), (B,) float64:
    ``J = mean_i ½|s(x_i)|² + ∇·s(x_i)``, equal to ``½ E|s − ∇log f|²`` up to a constant that
    does not depend on the mixture (Hyvärinen 2005, JMLR 6, eq. 4). In closed form, with
    responsibilities r_k, component scores ``s_k = −Σ_k⁻¹(x − μ_k)`` and ``s = Σ r_k s_k``
    (∇r_k = r_k(s_k − s)): ``∇·s = Σ_k r_k(|s_k|² − tr Σ_k⁻¹) − |s|²``."""
    x = x.double()
    mix = Mixture(mix.log_weight.double(), mix.mean.double(), mix.chol.double())
    used = torch.isfinite(mix.log_weight)                                    # (B, K)
    log_p, s_k, _ = _component_log_prob(x, mix, want_score=True)            # (B, K, n), (B, K, n, d)
    resp = torch.softmax(log_p, 1)                                           # (B, K, n)
    inv_l = torch.linalg.inv(mix.chol)                                       # (B, K, d, d)
    trace = torch.where(used, (inv_l * inv_l).sum((-2, -1)), 0.0)            # (B, K) tr Σ_k⁻¹
    score = (resp[..., None] * s_k).sum(1)                                   # (B, n, d)
    div = (resp * ((s_k * s_k).sum(-1) - trace[..., None])).sum(1) - (score * score).sum(-1)  # (B, n)
    loss = 0.5 * (score * score).sum(-1) + div                               # (B, n)
    if mask is None:
        return loss.mean(-1)
    omega = mask.to(loss.dtype)                                              # (B, n)
    return (loss * omega).sum(-1) / omega.sum(-1)                            # (B,)


def mixture_candidate(mix: Mixture, qry: torch.Tensor):
    """The fitted mixture at ``qry`` (B,m,d): score (B,m,d), log-density (B,m) and descriptors
    (B,m,3): responsibility entropy, √(Mahalanobis²/d) to the likeliest component, and that
    component's ``log w_k / 10`` (divided by 10 to be O(1), like the other descriptors)."""
    log_p, comp_score, z = _component_log_prob(qry, mix, want_score=True)   # (B,K,m), (B,K,m,d), (B,K,d,m)
    log_f = torch.logsumexp(log_p, 1)                                        # (B, m)
    resp = torch.exp(log_p - log_f[:, None])                                 # (B, K, m)
    score = (resp[..., None] * comp_score).sum(1)                            # (B, m, d)
    entropy = -(resp * torch.log(resp.clamp_min(1e-30))).sum(1)              # (B, m)
    top = resp.argmax(1, keepdim=True)                                       # (B, 1, m)
    maha = (z * z).sum(-2)                                                   # (B, K, m) (y−μ)ᵀΣ⁻¹(y−μ)
    d = qry.shape[-1]
    # + 1e-8: a query on a one-point component's mean (maha = 0) must not give sqrt an infinite gradient
    desc = torch.stack([entropy, torch.sqrt(maha.gather(1, top)[:, 0] / d + 1e-8),
                        mix.log_weight.gather(1, top[:, 0]) / 10], -1)      # (B, m, 3)
    return score, log_f, desc


# --------------------------------------------------------------------------- all candidates
def evaluate_candidates(config, ctx_w: torch.Tensor, mixture: Mixture | None, qry_w: torch.Tensor,
                        counts: list[int] | None = None, mask: torch.Tensor | None = None,
                        ellipticals: list[RadialFit] | None = None) -> Candidates:
    """The bank at ``config.kde_bandwidths`` then ``config.local_bandwidths`` (times the Scott
    factor), then the mixture if fitted, then the elliptical KDE if the config has it (the fits
    ``ellipticals``, else fitted to ``ctx_w`` here): K candidates at ``qry_w`` (B,m,d). With
    ``config.shape_features`` the descriptors end with each context's ``N_SPHERICITY`` sphericity
    statistics (``RadialFit.sphericity``, the same for every query of a context).
    ``counts``/``mask``: padded batch (see :func:`kernel_bank`)."""
    cand_s, cand_l, desc = kernel_bank(ctx_w, qry_w, list(config.kde_bandwidths), list(config.local_bandwidths),
                                       config.local_ridge, counts, mask)
    if mixture is not None:
        mix_s, mix_l, mix_desc = mixture_candidate(mixture, qry_w)          # (B,m,d), (B,m), (B,m,3)
        cand_s = torch.cat([cand_s, mix_s[..., None, :]], -2)                # (B, m, K, d)
        cand_l = torch.cat([cand_l, mix_l[..., None]], -1)                   # (B, m, K)
        desc = torch.cat([desc, mix_desc], -1)                               # (B, m, K·N_DESCRIPTORS)
    if config.elliptical_candidate:
        if ellipticals is None:
            ellipticals = elliptical_fits(ctx_w, counts, mask)
        ell_s, ell_l, ell_desc = elliptical_candidate(ellipticals, qry_w)   # (B,m,d), (B,m), (B,m,3)
        cand_s = torch.cat([cand_s, ell_s[..., None, :]], -2)                # (B, m, K, d)
        cand_l = torch.cat([cand_l, ell_l[..., None]], -1)                   # (B, m, K)
        desc = torch.cat([desc, ell_desc], -1)                               # (B, m, K·N_DESCRIPTORS)
        if config.shape_features:
            shape = torch.stack([fit.sphericity for fit in ellipticals]).to(desc.dtype)  # (B, N_SPHERICITY)
            desc = torch.cat([desc, shape[:, None].expand(-1, desc.shape[1], -1)], -1)  # (B, m, K·3 + N_SPHERICITY)
    return Candidates(cand_s, cand_l, desc)


def elliptical_fits(ctx_w: torch.Tensor, counts: list[int] | None = None,
                    mask: torch.Tensor | None = None) -> list[RadialFit]:
    """One :class:`particlescore.elliptical.RadialFit` per whitened context of a batch (B,n,d),
    float64, on its valid points, in the model's frame (``whiten=False``: the frame's mean and
    covariance, so a cell of d + 1 points works as it does for the other candidates). Fitted on
    all n points, like the mixture: binned radii and a tabulated profile keep it O(n)."""
    fits = []
    with torch.no_grad():
        for b in range(ctx_w.shape[0]):
            ctx = ctx_w[b] if mask is None else ctx_w[b][mask[b]]
            if counts is not None and mask is None:
                ctx = ctx[:counts[b]]
            fits.append(RadialFit(ctx.double(), whiten=False))
    return fits


def elliptical_candidate(fits: list[RadialFit], qry_w: torch.Tensor):
    """The elliptical KDE of each context (:func:`elliptical_fits`) at ``qry_w`` (B,m,d): score
    (B,m,d), log-density (B,m) and descriptors (B,m,3): the query's radius over the context's
    largest, its standardised radius, and its log-density's deviation from a standard
    Gaussian's (how far the radial profile is from Gaussian there). Differentiable in the
    queries, as the other candidates are (the consistency and score-matching losses need it)."""
    d = qry_w.shape[-1]
    scores, log_fs, descs = [], [], []
    for b, fit in enumerate(fits):
        q64 = qry_w[b].double()                                              # (m, d)
        lf, sc = fit.evaluate(q64)                                           # (m,), (m, d)
        radius, r_q = fit.radius, q64.norm(dim=1)                            # (n,), (m,)
        gauss = -0.5 * r_q ** 2 - 0.5 * d * math.log(2 * math.pi)            # (m,) standard normal
        scores.append(sc)
        log_fs.append(lf)
        descs.append(torch.stack([r_q / radius.max(), (r_q - radius.mean()) / radius.std(),
                                  (lf - gauss).clamp(-10, 10) / 10], -1))   # (m, 3)
    to = qry_w.dtype
    return torch.stack(scores).to(to), torch.stack(log_fs).to(to), torch.stack(descs).to(to)
