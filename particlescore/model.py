"""DiScoFormer network: the transformer and its heads (arXiv 2511.05924, with the additions
measured in the model card). Read top to bottom: config, MLP, attention, block, network.

The network works in whitened coordinates only: ``particlescore.affine`` centres and whitens
the context (and un-whitens the outputs), ``particlescore.candidates`` computes the classical
candidate estimates it gates over. Here:

1. Context stream. Tokens ``embed([w, ‖w‖²/d])`` pass ``n_layers`` pre-norm self-attention
   blocks without positional encodings (permutation equivariant).
2. Query stream. Each query's token embeds its coordinates, ``‖w‖²/d``, ``log n / 10`` and the
   candidates' descriptors (with ``shape_features``, also four statistics of how far the whole
   whitened context is from spherical symmetry, ``elliptical.sphericity_statistics``: they tell
   the gates when the elliptical candidate is the right model), then cross-attends to the
   context tokens of the matching layer only, so queries never influence each other. With
   ``log_n_all_points``, n counts every context point even where the attention sees a subsample
   (``DiScoFormer.context_size``), as the mixture and elliptical candidates do.
3. Heads. Per query, softmax gates over the K candidate scores and log-densities plus a learned
   residual for each: the network learns which estimate to trust where, and how to correct it.

:class:`EquivariantDiScoFormerNet` (``dim = 0`` in the config) is one network for every
dimension. Its tokens see only rotation invariants of the whitened points (``‖w‖²/d``, ``log d``,
``log n`` and the candidates' descriptors); the geometry enters through attention whose logits
add a Gaussian kernel with a learned bandwidth per head to the content logits,
``q·k/√(W/H) − ‖y − x_j‖²/2h²`` with ``h = c_head·n^{-1/(d+4)}`` (the "squared-norm lift" that
makes attention a kernel estimate, arXiv 2511.05924), realised inside one
``scaled_dot_product_attention`` call by appending ``y/h, 1`` to the queries and
``x_j/h, −‖x_j‖²/2h²`` to the keys. Each head's attention-weighted mean ``x̄`` gives an
equivariant vector ``(x̄ − y)/h²`` (a KDE score at a learned, content-steered bandwidth); the
score residual is an invariant combination of these vectors and ``y``. Whitened coordinates of a
rotated context are the original ones rotated by an orthogonal matrix (``particlescore.affine``),
so the estimator is exactly rotation equivariant (up to the whitening ridge ``ε·diag Σ``) and
needs no per-dimension weights.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .candidates import N_DESCRIPTORS, N_SPHERICITY, Candidates

__all__ = ["DiScoFormerConfig", "DiScoFormerNet", "EquivariantDiScoFormerNet", "HeadLayout", "N_DESCRIPTORS",
           "build_network"]


@dataclass
class DiScoFormerConfig:
    """Stored as JSON in every weights file and checkpoint (``to_dict``/``from_dict``)."""
    dim: int                                   # d, dimension of the samples (0: any d, the equivariant network)
    width: int = 64                            # token width
    n_heads: int = 4
    n_layers: int = 2                          # context self-attention blocks (= query cross blocks)
    mlp_ratio: int = 2
    kde_bandwidths: tuple = (0.5, 0.71, 1.0, 1.41, 2.0)      # c_b, times the Scott factor n^{-1/(d+4)}
    local_bandwidths: tuple = (1.41, 2.0, 2.83, 4.0, 5.66)   # local Gaussian fits need wider windows
    whiten_ridge: float = 1e-4                 # ε in Σ + ε·diag(Σ) (particlescore.affine)
    local_ridge: float = 1e-3                  # C + ridge·h²·I in the local Gaussian fit
    query_chunk: int = 2048                    # queries per forward chunk at inference
    mixture_components: int = 0                # max EM mixture components (0: no mixture candidate)
    mixture_iters: int = 20                    # EM iterations after each split
    mixture_shrink: float = 0.5                # covariance shrinkage strength (shrink·d/(N_k + d))
    mixture_ridge: float = 1e-3                # added to every component covariance (whitened units)
    mixture_tied: bool = False                 # also fit mixtures with one shared covariance (BIC picks)
    mixture_tied_clustering: bool = False      # the tied fits also compete where n < 128 points per full-component parameter (needs mixture_tied; candidates.fit_mixture)
    mixture_kmeans_start: bool = False         # the tied fits also start from k-means++ at every K, the likelier kept (needs mixture_tied; candidates.fit_mixture)
    mixture_kmeans_restarts: int = 1           # k-means++ draws per K for the tied fits, the likeliest kept (needs mixture_kmeans_start; candidates.fit_mixture)
    mixture_birth: bool = False                # the tied fits also grow by a component born at the worst-explained point, the likelier kept (needs mixture_tied; candidates.fit_mixture)
    mixture_unbiased: bool = False             # unbiased precisions N/(N − d − 2) (candidates.fit_mixture)
    mixture_scale_split: bool = False          # a third chain of full fits, grown by concentric (scale) splits, competes in BIC (candidates.fit_mixture)
    mixture_loo_covariances: bool = False      # covariances re-estimated by leave-one-out shrinkage (candidates.loo_covariances)
    mixture_loo_small_prior: bool = False      # components of at most d points shrunk toward the pooled scale instead (needs mixture_loo_covariances; candidates.loo_covariances)
    mixture_merge_test: bool = False           # over-split components merged by G-means' normality test (needs mixture_loo_covariances; candidates.merge_components)
    elliptical_candidate: bool = False         # one more candidate, the elliptical KDE of the context (particlescore.elliptical), last
    shape_features: bool = False               # the context's sphericity statistics join each query's features (needs elliptical_candidate)
    log_n_all_points: bool = False             # the queries' log n counts every context point, also when the attention sees a subsample
    max_dim: int = 0                           # dim = 0 only: the largest d it was trained and checked for

    def __post_init__(self):
        if self.shape_features and not self.elliptical_candidate:
            raise ValueError("shape_features needs elliptical_candidate (the sphericity statistics come with its fit)")
        if self.mixture_tied_clustering and not self.mixture_tied:
            raise ValueError("mixture_tied_clustering needs mixture_tied (it widens where the tied fits compete)")
        if self.mixture_merge_test and not self.mixture_loo_covariances:
            raise ValueError("mixture_merge_test needs mixture_loo_covariances (merged components get their covariances from it)")
        if self.mixture_loo_small_prior and not self.mixture_loo_covariances:
            raise ValueError("mixture_loo_small_prior needs mixture_loo_covariances (it replaces that estimate for small components)")
        if self.mixture_kmeans_start and not self.mixture_tied:
            raise ValueError("mixture_kmeans_start needs mixture_tied (it is a second start for the tied fits)")
        if self.mixture_birth and not self.mixture_tied:
            raise ValueError("mixture_birth needs mixture_tied (it is a second start for the tied fits)")
        if (not isinstance(self.mixture_kmeans_restarts, int) or isinstance(self.mixture_kmeans_restarts, bool)
                or self.mixture_kmeans_restarts < 1):
            raise ValueError(f"mixture_kmeans_restarts must be a positive int, got {self.mixture_kmeans_restarts!r}")
        if self.mixture_kmeans_restarts > 1 and not self.mixture_kmeans_start:
            raise ValueError("mixture_kmeans_restarts > 1 needs mixture_kmeans_start (the restarts are its draws)")
        if self.log_n_all_points and self.dim == 0:
            raise ValueError("log_n_all_points is for the per-dimension network (the any-d one sets its kernels from n)")

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

    @property
    def n_candidates(self) -> int:
        """K: the kernel bank's bandwidths, plus one for the mixture, plus one for the elliptical KDE."""
        return (len(self.kde_bandwidths) + len(self.local_bandwidths) + (1 if self.mixture_components else 0)
                + (1 if self.elliptical_candidate else 0))

    @property
    def n_query_descriptors(self) -> int:
        """Descriptors per query: K·N_DESCRIPTORS, then the N_SPHERICITY shape features if configured."""
        return self.n_candidates * N_DESCRIPTORS + (N_SPHERICITY if self.shape_features else 0)

    @property
    def mixture_index(self) -> int:
        """Position of the mixture among the K candidates (after the kernel bank)."""
        return len(self.kde_bandwidths) + len(self.local_bandwidths)


# --------------------------------------------------------------------------- transformer
class MLP(nn.Module):
    def __init__(self, width: int, ratio: int):
        super().__init__()
        self.fc = nn.Linear(width, ratio * width)
        self.proj = nn.Linear(ratio * width, width)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))                                 # (B, m, W)


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B,m,W) over ``source`` (B,n,W) (self-attention if same);
    ``mask`` (B,n) hides padded sources."""

    def __init__(self, width: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, source, mask=None):
        B, m, W = x.shape
        n, H = source.shape[1], self.n_heads
        q = self.q(x).view(B, m, H, W // H).transpose(1, 2)                  # (B, H, m, W/H)
        k, v = self.kv(source).view(B, n, 2, H, W // H).permute(2, 0, 3, 1, 4)  # 2 × (B, H, n, W/H)
        attn_mask = None if mask is None else mask[:, None, None, :]         # (B, 1, 1, n) valid sources
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)   # (B, H, m, W/H)
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

    def forward(self, x, source=None, mask=None):
        x_n = self.ln_x(x)                                                   # (B, m, W)
        src = x_n if self.ln_src is None else self.ln_src(source)            # (B, n, W)
        x = x + self.attn(x_n, src, mask)                                    # (B, m, W)
        return x + self.mlp(self.ln_mlp(x))                                  # (B, m, W)


class HeadLayout:
    """Rows of the head's output (2K + d + 1): score gates, log-density gates, score residual,
    log-density residual. ``training``'s ``transplant`` uses it too."""

    def __init__(self, n_candidates: int, dim: int):
        K = n_candidates
        self.score_gates = slice(0, K)
        self.log_gates = slice(K, 2 * K)
        self.score_residual = slice(2 * K, 2 * K + dim)
        self.log_residual = slice(2 * K + dim, 2 * K + dim + 1)
        self.size = 2 * K + dim + 1


class DiScoFormerNet(nn.Module):
    """The network in whitened coordinates: ``encode_context(ctx_w)`` once per context, then
    ``forward(qry_w, layers, candidates)`` per chunk of queries."""

    def __init__(self, config: DiScoFormerConfig):
        super().__init__()
        if config.dim < 1:
            raise ValueError(f"DiScoFormerNet needs dim >= 1 (dim = 0 is EquivariantDiScoFormerNet), got {config.dim}")
        self.config = c = config
        K = c.n_candidates
        self.layout = HeadLayout(K, c.dim)
        self.embed_ctx = nn.Linear(c.dim + 1, c.width)
        self.embed_qry = nn.Linear(c.dim + 2 + c.n_query_descriptors, c.width)
        self.ctx_blocks = nn.ModuleList([Block(c.width, c.n_heads, c.mlp_ratio, cross=False) for _ in range(c.n_layers)])
        self.qry_blocks = nn.ModuleList([Block(c.width, c.n_heads, c.mlp_ratio, cross=True) for _ in range(c.n_layers)])
        self.ln_out = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, self.layout.size)
        # Untrained start: zero head weights, and both gates on one candidate with bias 8, so its
        # softmax weight is e⁸/(e⁸ + K − 1) ≈ 0.997 (K = 11) while every other candidate keeps a
        # gradient (e⁻⁸ ≫ float32 round-off). That candidate is the mixture when configured (every
        # shipped weight file; it is the better start in high d), else the local Gaussian fit at
        # c ≈ 2, the best single candidate on random mixtures before training (model card).
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            best = K - 1 if c.mixture_components else len(c.kde_bandwidths) + min(
                range(len(c.local_bandwidths)), key=lambda i: abs(c.local_bandwidths[i] - 2.0))
            self.head.bias[self.layout.score_gates.start + best] = 8.0
            self.head.bias[self.layout.log_gates.start + best] = 8.0

    @property
    def n_candidates(self) -> int:
        return self.config.n_candidates

    def adaptable_parameters(self) -> list[nn.Parameter]:
        """Parameters tuned by test-time adaptation: the output norm and head."""
        return [*self.ln_out.parameters(), *self.head.parameters()]

    def encode_context(self, ctx_w: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Context tokens after each self-attention block: a list of (B,n,W). ``mask`` (B,n)
        marks the valid points of a padded batch."""
        sq_norm = (ctx_w * ctx_w).sum(-1, keepdim=True) / self.config.dim    # (B, n, 1) ‖w‖²/d
        tokens = self.embed_ctx(torch.cat([ctx_w, sq_norm], -1))             # (B, n, W)
        layers = []
        for block in self.ctx_blocks:
            tokens = block(tokens, mask=mask)                                # (B, n, W)
            layers.append(tokens)
        return layers

    def forward(self, qry_w: torch.Tensor, layers: list[torch.Tensor], cand: Candidates,
                mask: torch.Tensor | None = None, counts: list[int] | None = None, ctx_w: torch.Tensor | None = None):
        """Whitened log-density (B,m) and score (B,m,d) at ``qry_w`` (B,m,d); ``mask`` (B,n) and
        ``counts`` (B ints) describe a padded batch of contexts. ``ctx_w`` is not used: here the
        context's coordinates enter through its tokens (``layers``)."""
        (B, n), d = layers[0].shape[:2], self.config.dim
        counts = [n] * B if counts is None else counts
        # log n / 10: O(1) for n = 10…10⁵, like the other inputs
        log_n = torch.tensor([math.log(k) / 10 for k in counts], dtype=torch.float64, device=qry_w.device)
        log_n = log_n.to(qry_w.dtype)[:, None, None].expand(B, qry_w.shape[1], 1)  # (B, m, 1)
        feats = torch.cat([qry_w, (qry_w * qry_w).sum(-1, keepdim=True) / d, log_n, cand.descriptors], -1)  # (B, m, d+2+K·3[+4])
        tokens = self.embed_qry(feats)                                       # (B, m, W)
        for block, source in zip(self.qry_blocks, layers):
            tokens = block(tokens, source, mask)                             # (B, m, W)
        out = self.head(self.ln_out(tokens))                                 # (B, m, 2K + d + 1)
        gate_s = torch.softmax(out[..., self.layout.score_gates], -1)        # (B, m, K)
        gate_l = torch.softmax(out[..., self.layout.log_gates], -1)          # (B, m, K)
        score = (gate_s[..., None] * cand.score).sum(-2) + out[..., self.layout.score_residual]   # (B, m, d)
        log_density = (gate_l * cand.log_density).sum(-1) + out[..., self.layout.log_residual][..., 0]  # (B, m)
        return log_density, score


# --------------------------------------------------------------------------- any dimension
class KernelAttention(nn.Module):
    """Multi-head attention with logits ``q·k/√(W/H) − ‖y − x_j‖²/2h_head²`` (module docstring).
    Returns the attended content (B,m,W) and each head's kernel score ``(x̄ − y)/h²`` (B,H,m,d)."""

    def __init__(self, width: int, n_heads: int, log_c: torch.Tensor):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.log_c = nn.Parameter(log_c.clone())                             # (H,) bandwidths / Scott factor

    def forward(self, x, source, pos_x, pos_src, scott, mask=None):
        """x (B,m,W), source (B,n,W), pos_x (B,m,d), pos_src (B,n,d), scott (B,) = n^{-1/(d+4)}."""
        B, m, W = x.shape
        n, H, d = source.shape[1], self.n_heads, pos_x.shape[-1]
        inv_h = torch.exp(-self.log_c)[None, :] / scott[:, None]             # (B, H) 1/h
        inv_h = inv_h[:, :, None, None]                                      # (B, H, 1, 1)
        q = self.q(x).view(B, m, H, W // H).transpose(1, 2) / math.sqrt(W // H)  # (B, H, m, W/H)
        k, v = self.kv(source).view(B, n, 2, H, W // H).permute(2, 0, 3, 1, 4)  # 2 × (B, H, n, W/H)
        y, xs = pos_x[:, None], pos_src[:, None]                             # (B, 1, m, d), (B, 1, n, d)
        q = torch.cat([q, y * inv_h, torch.ones_like(q[..., :1])], -1)        # (B, H, m, W/H + d + 1)
        k = torch.cat([k, xs * inv_h, -0.5 * (xs * xs).sum(-1, keepdim=True) * inv_h ** 2], -1)  # (B, H, n, W/H + d + 1)
        v = torch.cat([v, xs.expand(B, H, n, d)], -1)                         # (B, H, n, W/H + d)
        attn_mask = None if mask is None else mask[:, None, None, :]         # (B, 1, 1, n) valid sources
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)  # (B, H, m, W/H + d)
        content, mean = out[..., : W // H], out[..., W // H:]                # (B, H, m, W/H), (B, H, m, d)
        kernel_score = (mean - y) * inv_h ** 2                               # (B, H, m, d)
        return self.proj(content.transpose(1, 2).reshape(B, m, W)), kernel_score


class KernelBlock(nn.Module):
    """Pre-norm block as :class:`Block`, with :class:`KernelAttention`."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: int, cross: bool, log_c: torch.Tensor):
        super().__init__()
        self.ln_x = nn.LayerNorm(width)
        self.ln_src = nn.LayerNorm(width) if cross else None
        self.attn = KernelAttention(width, n_heads, log_c)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x, pos_x, scott, source=None, pos_src=None, mask=None):
        x_n = self.ln_x(x)                                                   # (B, m, W)
        src = x_n if self.ln_src is None else self.ln_src(source)            # (B, n, W)
        pos_src = pos_x if pos_src is None else pos_src                      # (B, n, d)
        attended, kernel_score = self.attn(x_n, src, pos_x, pos_src, scott, mask)  # (B, m, W), (B, H, m, d)
        x = x + attended                                                     # (B, m, W)
        return x + self.mlp(self.ln_mlp(x)), kernel_score                    # (B, m, W), (B, H, m, d)


class EquivariantDiScoFormerNet(nn.Module):
    """One network for every dimension (``config.dim == 0``; module docstring). Same interface
    as :class:`DiScoFormerNet`: ``encode_context(ctx_w)``, then ``forward(qry_w, layers,
    candidates, ctx_w=ctx_w)``. Head rows: K score gates, K log-density gates, one coefficient
    per kernel score (``n_layers·n_heads``) and one for ``y`` (the score residual), and the
    log-density residual."""

    def __init__(self, config: DiScoFormerConfig):
        super().__init__()
        if config.dim != 0 or config.max_dim < 1:
            raise ValueError(f"the equivariant network needs dim = 0 and max_dim >= 1, got {config.dim}, {config.max_dim}")
        self.config = c = config
        K, H = c.n_candidates, c.n_heads
        self.n_vectors = c.n_layers * H + 1
        # per-head bandwidths c·n^{-1/(d+4)}, spread over the KDE bank's range at the start
        log_c = torch.linspace(math.log(0.5), math.log(4.0), H)
        self.embed_ctx = nn.Linear(3, c.width)
        self.embed_qry = nn.Linear(3 + c.n_query_descriptors, c.width)
        self.ctx_blocks = nn.ModuleList([KernelBlock(c.width, H, c.mlp_ratio, False, log_c) for _ in range(c.n_layers)])
        self.qry_blocks = nn.ModuleList([KernelBlock(c.width, H, c.mlp_ratio, True, log_c) for _ in range(c.n_layers)])
        self.ln_out = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, 2 * K + self.n_vectors + 1)
        # untrained start: the mixture candidate (gate bias 8, as in DiScoFormerNet), no residual
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            best = K - 1 if c.mixture_components else len(c.kde_bandwidths)
            self.head.bias[best] = 8.0
            self.head.bias[K + best] = 8.0

    @property
    def n_candidates(self) -> int:
        return self.config.n_candidates

    def adaptable_parameters(self) -> list[nn.Parameter]:
        """Parameters tuned by test-time adaptation: the output norm and head."""
        return [*self.ln_out.parameters(), *self.head.parameters()]

    @staticmethod
    def _invariants(points: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point ``[‖w‖²/d, log d / 5, log n / 10]`` (B,m,3) and the Scott factors (B,)."""
        B, m, d = points.shape
        n = torch.tensor(counts, dtype=torch.float64, device=points.device)  # (B,)
        scott = (n ** (-1.0 / (d + 4))).to(points.dtype)                      # (B,)
        log_n = (torch.log(n) / 10).to(points.dtype)[:, None, None].expand(B, m, 1)  # (B, m, 1)
        log_d = torch.full_like(points[..., :1], math.log(d) / 5)             # (B, m, 1)
        return torch.cat([(points * points).sum(-1, keepdim=True) / d, log_d, log_n], -1), scott

    def encode_context(self, ctx_w: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Context tokens after each kernel self-attention block: a list of (B,n,W)."""
        counts = [ctx_w.shape[1]] * ctx_w.shape[0] if mask is None else mask.sum(-1).tolist()
        feats, scott = self._invariants(ctx_w, counts)                       # (B, n, 3), (B,)
        tokens = self.embed_ctx(feats)                                       # (B, n, W)
        layers = []
        for block in self.ctx_blocks:
            tokens, _ = block(tokens, ctx_w, scott, mask=mask)               # (B, n, W)
            layers.append(tokens)
        return layers

    def forward(self, qry_w: torch.Tensor, layers: list[torch.Tensor], cand: Candidates,
                mask: torch.Tensor | None = None, counts: list[int] | None = None, ctx_w: torch.Tensor | None = None):
        """Whitened log-density (B,m) and score (B,m,d) at ``qry_w`` (B,m,d); ``ctx_w`` (B,n,d)
        is required (the kernel part of the attention)."""
        if ctx_w is None:
            raise ValueError("EquivariantDiScoFormerNet needs the whitened context ctx_w")
        B, n = layers[0].shape[:2]
        K = self.n_candidates
        counts = [n] * B if counts is None else counts
        feats, scott = self._invariants(qry_w, counts)                       # (B, m, 3), (B,)
        tokens = self.embed_qry(torch.cat([feats, cand.descriptors], -1))    # (B, m, W)
        vectors = []
        for block, source in zip(self.qry_blocks, layers):
            tokens, kernel_score = block(tokens, qry_w, scott, source, ctx_w, mask)  # (B, m, W), (B, H, m, d)
            vectors.append(kernel_score)
        vectors.append(qry_w[:, None])                                       # (B, 1, m, d)
        vectors = torch.cat(vectors, 1)                                      # (B, V, m, d)
        out = self.head(self.ln_out(tokens))                                 # (B, m, 2K + V + 1)
        gate_s = torch.softmax(out[..., :K], -1)                             # (B, m, K)
        gate_l = torch.softmax(out[..., K:2 * K], -1)                        # (B, m, K)
        coef = out[..., 2 * K:2 * K + self.n_vectors]                        # (B, m, V)
        score = (gate_s[..., None] * cand.score).sum(-2) + torch.einsum("bmv,bvmd->bmd", coef, vectors)  # (B, m, d)
        log_density = (gate_l * cand.log_density).sum(-1) + out[..., -1]      # (B, m)
        return log_density, score


def build_network(config: DiScoFormerConfig) -> nn.Module:
    """The network a config describes: per-dimension (``dim ≥ 1``) or for any d (``dim = 0``)."""
    return EquivariantDiScoFormerNet(config) if config.dim == 0 else DiScoFormerNet(config)
