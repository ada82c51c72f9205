"""DiScoFormer network: the transformer and its heads (arXiv 2511.05924, with the additions
measured in the model card). Read top to bottom: config, MLP, attention, block, network.

The network works in whitened coordinates only: ``particlescore.affine`` centres and whitens
the context (and un-whitens the outputs), ``particlescore.candidates`` computes the classical
candidate estimates it gates over. Here:

1. Context stream. Tokens ``embed([w, ‖w‖²/d])`` pass ``n_layers`` pre-norm self-attention
   blocks without positional encodings (permutation equivariant).
2. Query stream. Each query's token embeds its coordinates, ``‖w‖²/d``, ``log n / 10`` and the
   candidates' descriptors, then cross-attends to the context tokens of the matching layer
   only, so queries never influence each other.
3. Heads. Per query, softmax gates over the K candidate scores and log-densities plus a learned
   residual for each: the network learns which estimate to trust where, and how to correct it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .candidates import N_DESCRIPTORS, Candidates

__all__ = ["DiScoFormerConfig", "DiScoFormerNet", "HeadLayout", "N_DESCRIPTORS"]


@dataclass
class DiScoFormerConfig:
    """Stored as JSON in every weights file and checkpoint (``to_dict``/``from_dict``)."""
    dim: int                                   # d, dimension of the samples
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
        """K: the kernel bank's bandwidths, plus one for the mixture."""
        return len(self.kde_bandwidths) + len(self.local_bandwidths) + (1 if self.mixture_components else 0)


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
        self.config = c = config
        K = c.n_candidates
        self.layout = HeadLayout(K, c.dim)
        self.embed_ctx = nn.Linear(c.dim + 1, c.width)
        self.embed_qry = nn.Linear(c.dim + 2 + K * N_DESCRIPTORS, c.width)
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
                mask: torch.Tensor | None = None, counts: list[int] | None = None):
        """Whitened log-density (B,m) and score (B,m,d) at ``qry_w`` (B,m,d); ``mask`` (B,n) and
        ``counts`` (B ints) describe a padded batch of contexts."""
        (B, n), d = layers[0].shape[:2], self.config.dim
        counts = [n] * B if counts is None else counts
        # log n / 10: O(1) for n = 10…10⁵, like the other inputs
        log_n = torch.tensor([math.log(k) / 10 for k in counts], dtype=torch.float64, device=qry_w.device)
        log_n = log_n.to(qry_w.dtype)[:, None, None].expand(B, qry_w.shape[1], 1)  # (B, m, 1)
        feats = torch.cat([qry_w, (qry_w * qry_w).sum(-1, keepdim=True) / d, log_n, cand.descriptors], -1)  # (B, m, d+2+K·3)
        tokens = self.embed_qry(feats)                                       # (B, m, W)
        for block, source in zip(self.qry_blocks, layers):
            tokens = block(tokens, source, mask)                             # (B, m, W)
        out = self.head(self.ln_out(tokens))                                 # (B, m, 2K + d + 1)
        gate_s = torch.softmax(out[..., self.layout.score_gates], -1)        # (B, m, K)
        gate_l = torch.softmax(out[..., self.layout.log_gates], -1)          # (B, m, K)
        score = (gate_s[..., None] * cand.score).sum(-2) + out[..., self.layout.score_residual]   # (B, m, d)
        log_density = (gate_l * cand.log_density).sum(-1) + out[..., self.layout.log_residual][..., 0]  # (B, m)
        return log_density, score
