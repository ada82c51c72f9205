"""DiScoFormer network: a set of samples -> log-density and score at any query points.

Design (DiScoFormer, arXiv 2511.05924, with additions measured in the model card):

1. Affine wrapper. Centre by the context mean ``μ`` and whiten with the Cholesky factor ``L``
   of the regularised context covariance ``Σ + ε·diag(Σ)``: ``w = L⁻¹(x − μ)``. The core works
   on ``w``; results map back with ``log f = log f_w − log det L`` and ``s = L⁻ᵀ s_w``.
   ``L(DΣD) = D·L(Σ)`` for a positive diagonal ``D``, so permutation, translation and
   anisotropic axis scaling are exact symmetries; rotations are learned (approximate).
2. Kernel bank (the "squared-norm lift"). For bandwidths ``h_b = c_b·n^{-1/(d+4)}`` the
   attention logits ``q·k_j`` with ``q = [y, 1]/h²`` and ``k_j = [x_j, −½‖x_j‖²]`` give the
   Gaussian-kernel weights ``w_j(y) = softmax_j(−‖y − x_j‖²/2h²)`` (DESIGN §2). From them, per
   bandwidth: the KDE log-density and score, and the *local Gaussian* (local likelihood,
   Hjort & Jones 1996) estimate: with the kernel-weighted mean ``m`` and covariance ``C``,
   ``s_L = C⁻¹(m − y)`` and ``log f_L = log f_KDE + ½(d log h² − log det C) − ½ (m−y)ᵀC⁻¹(m−y)``,
   exact for any Gaussian population at any ``h`` (the kernel's bias cancels).
3. Transformer. Pre-norm blocks without positional encodings: context tokens ``[w, ‖w‖²]``
   attend to each other; query tokens (their coordinates, lift and bank descriptors) attend to
   the context by cross-attention only, so queries never influence each other.
4. In-context Gaussian mixture (optional, ``mixture_components > 0``; all shipped weights use it).
   One more bank candidate: a Gaussian mixture fitted to the whitened context by EM, grown by
   splitting components along their principal axis (deterministic and permutation invariant),
   covariances shrunk towards a multiple of I with weight ``shrink·d/(N_k + d)``, the number of
   components chosen by BIC. Kernel estimates converge like n^{-4/(d+4)}, slower as d grows; a
   parametric fit converges like 1/n in any d, which is what d = 10 needed (model card).
5. Heads. The query stream gives per-query softmax gates over the bank's candidate scores and
   log-densities plus a learned residual for each: the network learns which estimate to
   trust where, and how to correct it.

Inference is O(n + m) in memory: queries are processed in chunks (``query_chunk``) and
attention uses ``scaled_dot_product_attention``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DiScoFormerConfig", "DiScoFormerNet", "whiten", "kernel_bank", "fit_mixture", "mixture_candidate",
           "N_DESCRIPTORS"]


@dataclass
class DiScoFormerConfig:
    dim: int                                   # d, dimension of the samples
    width: int = 64                            # token width
    n_heads: int = 4
    n_layers: int = 2                          # context self-attention blocks (= query cross blocks)
    mlp_ratio: int = 2
    kde_bandwidths: tuple = (0.5, 0.71, 1.0, 1.41, 2.0)      # c_b, times the Scott factor n^{-1/(d+4)}
    local_bandwidths: tuple = (1.41, 2.0, 2.83, 4.0, 5.66)   # local Gaussian fits need wider windows
    whiten_ridge: float = 1e-4                 # ε in Σ + ε·diag(Σ)
    local_ridge: float = 1e-3                  # C + ridge·h²·I in the local Gaussian fit
    query_chunk: int = 2048                    # queries per forward chunk at inference
    mixture_components: int = 0                # max EM mixture components (0: no mixture candidate)
    mixture_iters: int = 20                    # EM iterations after each split
    mixture_shrink: float = 0.5                # covariance shrinkage strength (shrink·d/(N_k + d))
    mixture_ridge: float = 1e-3                # added to every component covariance (whitened units)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DiScoFormerConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DiScoFormer config keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(values)
        for key in ("kde_bandwidths", "local_bandwidths"):
            if key in values:
                values[key] = tuple(float(c) for c in values[key])
        return cls(**values)


N_DESCRIPTORS = 3   # per candidate: log N_eff, log det C / d − log h², ‖m − y‖/h (mixture: see below)
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- affine wrapper
def whiten(context: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean ``μ`` (B,1,d), Cholesky factor ``L`` (B,d,d) of ``Σ + ε diag(Σ)``, and ``log det L`` (B,)."""
    n = context.shape[-2]
    mean = context.mean(-2, keepdim=True)                                    # (B, 1, d)
    centred = context - mean                                                 # (B, n, d)
    cov = centred.transpose(-1, -2) @ centred / (n - 1)                      # (B, d, d)
    cov = cov + ridge * torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))     # (B, d, d)
    chol = torch.linalg.cholesky(cov)                                        # (B, d, d)
    log_det = torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)             # (B,)
    return mean, chol, log_det


def to_whitened(points: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """``w = L⁻¹(x − μ)`` for row vectors: (B,m,d) -> (B,m,d)."""
    return torch.linalg.solve_triangular(chol, (points - mean).transpose(-1, -2), upper=False).transpose(-1, -2)


# --------------------------------------------------------------------------- kernel bank
def kernel_bank(ctx: torch.Tensor, qry: torch.Tensor, kde_h: list[float], local_h: list[float],
                local_ridge: float):
    """KDE and local-Gaussian estimates at several bandwidths, in whitened coordinates.

    ctx (B,n,d), qry (B,m,d); ``kde_h`` and ``local_h`` absolute bandwidths (K = their total).
    Returns candidate scores (B,m,K,d), candidate log-densities (B,m,K) and descriptors
    (B,m,K·N_DESCRIPTORS). The local fit's covariance is shrunk towards ``h²I`` (the flat-density
    limit, where it equals KDE) with weight ``d/(N_eff + d)``.
    """
    B, n, d = ctx.shape
    m = qry.shape[1]
    eye = torch.eye(d, dtype=ctx.dtype, device=ctx.device)
    keys = torch.cat([ctx, -0.5 * (ctx * ctx).sum(-1, keepdim=True)], -1)    # (B, n, d+1) lifted keys
    queries = torch.cat([qry, torch.ones_like(qry[..., :1])], -1)           # (B, m, d+1)
    ctx_outer = (ctx[..., :, None] * ctx[..., None, :]).reshape(B, n, d * d)  # (B, n, d²)
    values = torch.cat([ctx, ctx_outer], -1)                                 # (B, n, d + d²)
    dot = queries @ keys.transpose(-1, -2)                                   # (B, m, n) = y·x − ½‖x‖²
    half_sq_q = 0.5 * (qry * qry).sum(-1)                                    # (B, m)
    scores, logdens, descs = [], [], []
    for h, local in [(h, False) for h in kde_h] + [(h, True) for h in local_h]:
        inv_h2 = 1.0 / (h * h)
        logits = dot * inv_h2                                                # (B, m, n)
        lse = torch.logsumexp(logits, -1)                                    # (B, m)
        weights = torch.exp(logits - lse[..., None])                         # (B, m, n)
        n_eff = 1.0 / (weights * weights).sum(-1)                            # (B, m)
        kde_log = lse - inv_h2 * half_sq_q - math.log(n) - 0.5 * d * math.log(2 * math.pi * h * h)  # (B, m)
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
        cov = (1 - shrink) * cov + (shrink + local_ridge) * (h * h) * eye    # (B, m, d, d)
        chol, _ = torch.linalg.cholesky_ex(cov)                              # (B, m, d, d)
        shift = local_mean - qry                                             # (B, m, d)
        local_score = torch.cholesky_solve(shift[..., None], chol)[..., 0]   # (B, m, d) = C⁻¹(m − y)
        log_det_cov = 2 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)  # (B, m)
        local_log = kde_log + 0.5 * (d * math.log(h * h) - log_det_cov) - 0.5 * (shift * local_score).sum(-1)
        scores.append(local_score)
        logdens.append(local_log)
        descs += [torch.log(n_eff), shift.norm(dim=-1) / h, log_det_cov / d - math.log(h * h)]
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


def _component_log_prob(x: torch.Tensor, mix: Mixture):
    """``log w_k + log N(x | μ_k, Σ_k)`` (B,K,m) and the whitened offsets ``z = L_k⁻¹(x − μ_k)``
    (B,K,d,m)."""
    diff = x[:, None] - mix.mean[:, :, None]                                  # (B, K, m, d)
    z = torch.linalg.solve_triangular(mix.chol, diff.transpose(-1, -2), upper=False)  # (B, K, d, m)
    log_det = torch.log(mix.chol.diagonal(dim1=-2, dim2=-1)).sum(-1)         # (B, K)
    d = x.shape[-1]
    log_p = mix.log_weight[..., None] - 0.5 * (z * z).sum(-2) - log_det[..., None] - 0.5 * d * LOG_2PI  # (B, K, m)
    return log_p, z


def _em(x: torch.Tensor, mix: Mixture, iters: int, shrink: float, ridge: float) -> tuple[Mixture, torch.Tensor]:
    """``iters`` EM steps (Dempster, Laird & Rubin 1977) with shrunk covariances; returns the
    mixture and the log-likelihood (B,)."""
    B, n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        log_p, _ = _component_log_prob(x, mix)                               # (B, K, n)
        resp = torch.softmax(log_p, 1)                                       # (B, K, n)
        n_k = resp.sum(-1) + 1e-10                                           # (B, K)
        mean = (resp @ x) / n_k[..., None]                                   # (B, K, d)
        diff = x[:, None] - mean[:, :, None]                                 # (B, K, n, d)
        cov = (resp[..., None] * diff).transpose(-1, -2) @ diff / n_k[..., None, None]  # (B, K, d, d)
        rho = (shrink * d / (n_k + d)).clamp(max=1.0)[..., None, None]       # (B, K, 1, 1)
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]     # (B, K, 1, 1)
        cov = (1 - rho) * cov + (rho * scale + ridge) * eye                  # (B, K, d, d)
        mix = Mixture(torch.log(n_k / n), mean, torch.linalg.cholesky(cov))
    log_p, _ = _component_log_prob(x, mix)                                   # (B, K, n)
    return mix, torch.logsumexp(log_p, 1).sum(-1)


@torch.no_grad()
def fit_mixture(x: torch.Tensor, max_components: int, iters: int, shrink: float, ridge: float) -> Mixture:
    """Gaussian mixture fitted to ``x`` (B,n,d) by EM, grown one split at a time, K by BIC.

    K = 1 is the sample Gaussian; K → K+1 splits the component with the largest
    ``w_k·λ_max`` into ``μ ± 0.8·√λ·v`` along its principal axis ``v`` (no random
    initialisation, so the fit is a deterministic, permutation-invariant function of the set).
    BIC = −2·loglik + p·log n with p = K(d + d(d+1)/2) + K − 1 picks K per batch element;
    K stops at n/(2d). Runs in float64; returns a mixture padded to ``max_components``.
    """
    dtype = x.dtype
    x = x.double()
    B, n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    rows = torch.arange(B, device=x.device)
    centred = x - x.mean(1, keepdim=True)                                    # (B, n, d)
    cov = (centred.transpose(-1, -2) @ centred / n + ridge * eye)[:, None]   # (B, 1, d, d)
    mix, loglik = _em(x, Mixture(torch.zeros(B, 1, dtype=x.dtype, device=x.device), x.mean(1, keepdim=True),
                                 torch.linalg.cholesky(cov)), 0, shrink, ridge)

    def padded(m: Mixture, k: int) -> Mixture:
        extra = max_components - k
        return Mixture(F.pad(m.log_weight, (0, extra), value=-math.inf), F.pad(m.mean, (0, 0, 0, extra)),
                       torch.cat([m.chol, eye.expand(B, extra, d, d)], 1))

    def bic(k: int, ll: torch.Tensor) -> torch.Tensor:
        return -2 * ll + (k * (d + d * (d + 1) / 2) + k - 1) * math.log(n)

    best, best_bic = padded(mix, 1), bic(1, loglik)
    for k in range(2, max_components + 1):
        if k * d > n / 2:
            break
        cov = mix.chol @ mix.chol.transpose(-1, -2)                          # (B, k-1, d, d)
        lam, vec = torch.linalg.eigh(cov)                                    # (B, k-1, d), (B, k-1, d, d)
        j = (mix.log_weight + torch.log(lam[..., -1])).argmax(1)             # (B,) component to split
        delta = 0.8 * lam[rows, j, -1, None].sqrt() * vec[rows, j, :, -1]    # (B, d)
        cov_j = cov[rows, j] - delta[:, :, None] * delta[:, None, :]         # (B, d, d)
        mean, log_w = mix.mean.clone(), mix.log_weight.clone()
        mean[rows, j] += delta
        log_w[rows, j] -= math.log(2)
        cov[rows, j] = cov_j
        mix = Mixture(torch.cat([log_w, log_w[rows, j, None]], 1),
                      torch.cat([mean, (mix.mean[rows, j] - delta)[:, None]], 1),
                      torch.linalg.cholesky(torch.cat([cov, cov_j[:, None]], 1)))
        mix, loglik = _em(x, mix, iters, shrink, ridge)
        score = bic(k, loglik)
        better = score < best_bic                                            # (B,)
        best = Mixture(*(torch.where(better.view((B,) + (1,) * (new.dim() - 1)), new, old)
                         for new, old in zip(padded(mix, k), best)))
        best_bic = torch.where(better, score, best_bic)
    return Mixture(best.log_weight.to(dtype), best.mean.to(dtype), best.chol.to(dtype))


def mixture_candidate(mix: Mixture, qry: torch.Tensor):
    """The fitted mixture at ``qry`` (B,m,d): score (B,m,d), log-density (B,m) and descriptors
    (B,m,3): responsibility entropy, √(Mahalanobis²/d) to the likeliest component, and that
    component's ``log w_k / 10``."""
    log_p, z = _component_log_prob(qry, mix)                                 # (B, K, m), (B, K, d, m)
    log_f = torch.logsumexp(log_p, 1)                                        # (B, m)
    resp = torch.exp(log_p - log_f[:, None])                                 # (B, K, m)
    # −Σ_k⁻¹(y − μ_k) = −L_k⁻ᵀ z
    comp_score = -torch.linalg.solve_triangular(mix.chol.transpose(-1, -2), z, upper=True).transpose(-1, -2)  # (B, K, m, d)
    score = (resp[..., None] * comp_score).sum(1)                            # (B, m, d)
    entropy = -(resp * torch.log(resp.clamp_min(1e-30))).sum(1)              # (B, m)
    top = resp.argmax(1, keepdim=True)                                       # (B, 1, m)
    maha = (z * z).sum(-2)                                                   # (B, K, m) (y−μ)ᵀΣ⁻¹(y−μ)
    d = qry.shape[-1]
    # + 1e-8: a query on a one-point component's mean (maha = 0) must not give sqrt an infinite gradient
    desc = torch.stack([entropy, torch.sqrt(maha.gather(1, top)[:, 0] / d + 1e-8),
                        mix.log_weight.gather(1, top[:, 0]) / 10], -1)      # (B, m, 3)
    return score, log_f, desc


# --------------------------------------------------------------------------- transformer
class MLP(nn.Module):
    def __init__(self, width: int, ratio: int):
        super().__init__()
        self.fc = nn.Linear(width, ratio * width)
        self.proj = nn.Linear(ratio * width, width)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B,m,W) over ``source`` (B,n,W) (self-attention if same)."""

    def __init__(self, width: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, source):
        B, m, W = x.shape
        n, H = source.shape[1], self.n_heads
        q = self.q(x).view(B, m, H, W // H).transpose(1, 2)                  # (B, H, m, W/H)
        k, v = self.kv(source).view(B, n, 2, H, W // H).permute(2, 0, 3, 1, 4)  # 2 × (B, H, n, W/H)
        out = F.scaled_dot_product_attention(q, k, v)                        # (B, H, m, W/H)
        return self.proj(out.transpose(1, 2).reshape(B, m, W))               # (B, m, W)


class Block(nn.Module):
    """Pre-norm block: ``x + Attn(LN x, LN source)`` (self-attention when ``cross`` is False),
    then ``x + MLP(LN x)``."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: int, cross: bool):
        super().__init__()
        self.ln_x = nn.LayerNorm(width)
        self.ln_src = nn.LayerNorm(width) if cross else None
        self.attn = Attention(width, n_heads)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x, source=None):
        x_n = self.ln_x(x)
        src = x_n if self.ln_src is None else self.ln_src(source)
        x = x + self.attn(x_n, src)
        return x + self.mlp(self.ln_mlp(x))


class ContextEncoding(NamedTuple):
    """What the queries need from the context: tokens after each self-attention block
    (list of (B,n,W)) and the fitted mixture (None without a mixture candidate)."""
    layers: list
    mixture: Mixture | None


class DiScoFormerNet(nn.Module):
    """The network; ``forward(context, queries)`` works on batches (B,n,d), (B,m,d)."""

    def __init__(self, config: DiScoFormerConfig):
        super().__init__()
        self.config = config
        c = config
        K = self.n_candidates
        self.embed_ctx = nn.Linear(c.dim + 1, c.width)
        self.embed_qry = nn.Linear(c.dim + 2 + K * N_DESCRIPTORS, c.width)
        self.ctx_blocks = nn.ModuleList([Block(c.width, c.n_heads, c.mlp_ratio, cross=False) for _ in range(c.n_layers)])
        self.qry_blocks = nn.ModuleList([Block(c.width, c.n_heads, c.mlp_ratio, cross=True) for _ in range(c.n_layers)])
        self.ln_out = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, 2 * K + c.dim + 1)   # score gates (K), log-density gates (K), residuals
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():  # start from the local Gaussian fit at c ≈ 2, the best single
            self.head.bias.zero_()  # candidate on random mixtures before training (model card)
            best = len(c.kde_bandwidths) + min(range(len(c.local_bandwidths)),
                                               key=lambda i: abs(c.local_bandwidths[i] - 2.0))
            if c.mixture_components:  # the mixture fit is the better start in high d
                best = K - 1
            self.head.bias[best] = 8.0
            self.head.bias[K + best] = 8.0

    @property
    def n_candidates(self) -> int:
        c = self.config
        return len(c.kde_bandwidths) + len(c.local_bandwidths) + (1 if c.mixture_components else 0)

    def adaptable_parameters(self) -> list[nn.Parameter]:
        """Parameters tuned by test-time adaptation: the output norm and head."""
        return [*self.ln_out.parameters(), *self.head.parameters()]

    def encode_context(self, ctx_w: torch.Tensor) -> ContextEncoding:
        """Context tokens after each self-attention block, and the mixture fit if configured."""
        c = self.config
        mixture = (fit_mixture(ctx_w, c.mixture_components, c.mixture_iters, c.mixture_shrink, c.mixture_ridge)
                   if c.mixture_components else None)
        tokens = self.embed_ctx(torch.cat([ctx_w, (ctx_w * ctx_w).sum(-1, keepdim=True) / self.config.dim], -1))  # (B,n,W)
        layers = []
        for block in self.ctx_blocks:
            tokens = block(tokens)                                           # (B, n, W)
            layers.append(tokens)
        return ContextEncoding(layers, mixture)

    def query_features(self, ctx_w, encoding: ContextEncoding, qry_w):
        """Everything upstream of the head: query tokens (B,m,W), candidate scores (B,m,K,d)
        and candidate log-densities (B,m,K). Test-time adaptation never changes these."""
        B, n, d = ctx_w.shape
        scott = n ** (-1.0 / (d + 4))
        cand_s, cand_l, desc = kernel_bank(ctx_w, qry_w, [c * scott for c in self.config.kde_bandwidths],
                                           [c * scott for c in self.config.local_bandwidths], self.config.local_ridge)
        if encoding.mixture is not None:
            mix_s, mix_l, mix_desc = mixture_candidate(encoding.mixture, qry_w)  # (B,m,d), (B,m), (B,m,3)
            cand_s = torch.cat([cand_s, mix_s[..., None, :]], -2)            # (B, m, K, d)
            cand_l = torch.cat([cand_l, mix_l[..., None]], -1)               # (B, m, K)
            desc = torch.cat([desc, mix_desc], -1)                           # (B, m, K·N_DESCRIPTORS)
        log_n = torch.full_like(qry_w[..., :1], math.log(n) / 10)            # (B, m, 1)
        feats = torch.cat([qry_w, (qry_w * qry_w).sum(-1, keepdim=True) / d, log_n, desc], -1)
        tokens = self.embed_qry(feats)                                       # (B, m, W)
        for block, source in zip(self.qry_blocks, encoding.layers):
            tokens = block(tokens, source)                                   # (B, m, W)
        return tokens, cand_s, cand_l

    def heads(self, tokens, cand_s, cand_l):
        """Gated candidates plus residuals: whitened log-density (B,m) and score (B,m,d)."""
        K, d = self.n_candidates, self.config.dim
        out = self.head(self.ln_out(tokens))                                 # (B, m, 2K + d + 1)
        gate_s = torch.softmax(out[..., :K], -1)                             # (B, m, K)
        gate_l = torch.softmax(out[..., K:2 * K], -1)                        # (B, m, K)
        score = (gate_s[..., None] * cand_s).sum(-2) + out[..., 2 * K:2 * K + d]   # (B, m, d)
        log_density = (gate_l * cand_l).sum(-1) + out[..., -1]               # (B, m)
        return log_density, score

    def decode_queries(self, ctx_w, encoding: ContextEncoding, qry_w):
        """Whitened log-density (B,m) and score (B,m,d) at whitened queries."""
        return self.heads(*self.query_features(ctx_w, encoding, qry_w))

    def forward(self, context: torch.Tensor, queries: torch.Tensor, chunk: int | None = None):
        """Log-density (B,m) and score (B,m,d) of the distribution behind ``context`` at ``queries``."""
        frame = whiten(context, self.config.whiten_ridge)
        ctx_w = to_whitened(context, frame[0], frame[1])                     # (B, n, d)
        return self.predict(ctx_w, self.encode_context(ctx_w), frame, queries, chunk)

    def predict(self, ctx_w, encoding: ContextEncoding, frame, queries: torch.Tensor, chunk: int | None = None):
        """Log-density (B,m) and score (B,m,d) at ``queries`` (original coordinates) from an encoded
        whitened context; ``frame = whiten(context)``. Queries go in chunks: O(chunk·n) memory."""
        mean, chol, log_det = frame
        qry_w = to_whitened(queries, mean, chol)                             # (B, m, d)
        B, n = ctx_w.shape[:2]
        m = queries.shape[1]
        if chunk is None:  # bound the (B, chunk, n) kernel blocks of the bank
            chunk = max(16, min(self.config.query_chunk, 2 ** 23 // (B * n * self.n_candidates) + 1))
        logs, scores = [], []
        for start in range(0, m, chunk):
            log_w, score_w = self.decode_queries(ctx_w, encoding, qry_w[:, start:start + chunk])
            logs.append(log_w - log_det[:, None])                            # (B, c)
            # s = L⁻ᵀ s_w for column vectors; row form: s_w L⁻¹
            scores.append(torch.linalg.solve_triangular(chol.transpose(-1, -2), score_w.transpose(-1, -2),
                                                        upper=True).transpose(-1, -2))  # (B, c, d)
        return torch.cat(logs, 1), torch.cat(scores, 1)
