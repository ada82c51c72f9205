"""The affine (whitening) wrapper around DiScoFormer's network, as EDM's preconditioning wrapper
wraps its denoiser (Karras et al. 2022, NVlabs/edm ``training/networks.py``, ``EDMPrecond``).

Centre by the context mean ``μ`` and whiten with the lower Cholesky factor ``L`` of the
regularised context covariance ``Σ + ε·diag(Σ)``: ``w = L⁻¹(x − μ)``. The network and its
candidates work on ``w``; results map back with the change-of-variables formulas
``log f(x) = log f_w(w) − log det L`` and ``∇ₓ log f = L⁻ᵀ ∇_w log f_w``.
``L(DΣD) = D·L(Σ)`` for a positive diagonal ``D``, so permutation, translation and anisotropic
axis scaling are exact symmetries of the estimator. For a rotated context ``Rx`` the whitened points are
``Qw`` with ``Q = L'⁻¹RL`` orthogonal (``L'`` the factor of ``RΣRᵀ``), so a network that is rotation
equivariant in whitened coordinates (``model.EquivariantDiScoFormerNet``) makes the estimator
rotation equivariant up to the ridge ``ε·diag(Σ)``; the per-dimension network learns rotations
(approximately).

:class:`WhitenedModel` is the only place that whitens: the estimator (``discoformer``) and
training (``particlescore.training``) both call it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from .candidates import (Candidates, Mixture, elliptical_fits, evaluate_candidates, fit_mixture, loo_covariances,
                         merge_components, uses_fused_bank)
from .model import DiScoFormerNet

__all__ = ["AffineFrame", "EncodedContext", "WhitenedModel"]


class AffineFrame(NamedTuple):
    """``μ`` (B,1,d), ``L`` (B,d,d) with ``LLᵀ = Σ + ε·diag(Σ)``, and ``log det L`` (B,)."""
    mean: torch.Tensor
    chol: torch.Tensor
    log_det: torch.Tensor

    @classmethod
    def fit(cls, context: torch.Tensor, ridge: float, mask: torch.Tensor | None = None) -> "AffineFrame":
        """The frame of ``context`` (B,n,d) (only the points where ``mask`` (B,n) is True);
        ValueError if its covariance is singular or not finite."""
        if mask is None:
            n = context.shape[-2]
            mean = context.mean(-2, keepdim=True)                            # (B, 1, d)
            centred = context - mean                                         # (B, n, d)
        else:
            weight = mask[..., None].to(context.dtype)                       # (B, n, 1)
            n = weight.sum(-2, keepdim=True)                                 # (B, 1, 1) points per element
            mean = (context * weight).sum(-2, keepdim=True) / n              # (B, 1, d)
            centred = (context - mean) * weight                              # (B, n, d) padding at 0
        cov = centred.transpose(-1, -2) @ centred / (n - 1)                  # (B, d, d)
        cov = cov + ridge * torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))  # (B, d, d)
        chol, info = torch.linalg.cholesky_ex(cov)                           # (B, d, d)
        if bool((info != 0).any()) or not bool(torch.isfinite(chol).all()):
            raise ValueError(f"cannot whiten the context: its sample covariance is singular or not finite in "
                             f"{str(context.dtype).replace('torch.', '')} (points identical, on a subspace, or with values too "
                             f"large or too small to square in that precision); context shape {tuple(context.shape)}")
        log_det = torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)         # (B,)
        return cls(mean, chol, log_det)

    def whiten(self, points: torch.Tensor) -> torch.Tensor:
        """``w = L⁻¹(x − μ)`` for row vectors: (B,m,d) -> (B,m,d)."""
        return torch.linalg.solve_triangular(self.chol, (points - self.mean).transpose(-1, -2),
                                             upper=False).transpose(-1, -2)

    def change_to(self, other: "AffineFrame") -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, b)`` with ``w_other = A w_self + b``: ``A = L_o⁻¹L_s`` (B,d,d), ``b = L_o⁻¹(μ_s − μ_o)`` (B,d)."""
        A = torch.linalg.solve_triangular(other.chol, self.chol, upper=False)                   # (B, d, d)
        b = torch.linalg.solve_triangular(other.chol, (self.mean - other.mean).transpose(-1, -2),
                                          upper=False)[..., 0]                                  # (B, d)
        return A, b

    def unwhiten(self, log_w: torch.Tensor, score_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log f = log f_w − log det L`` (B,m) and ``s = L⁻ᵀ s_w`` (B,m,d) (row form ``s_w L⁻¹``)."""
        log_f = log_w - self.log_det[:, None]                                # (B, m)
        score = torch.linalg.solve_triangular(self.chol.transpose(-1, -2), score_w.transpose(-1, -2),
                                              upper=True).transpose(-1, -2)  # (B, m, d)
        return log_f, score


class EncodedContext(NamedTuple):
    """Everything the queries need from one context: its frame, the whitened context (B,n,d),
    the context tokens after each self-attention block (list of (B,n,W)) and the fitted mixture
    (None without a mixture candidate); ``mask`` and ``counts`` for a padded batch."""
    frame: AffineFrame
    ctx_w: torch.Tensor
    layers: list
    mixture: Mixture | None
    mask: torch.Tensor | None = None    # (B, n) valid points of a padded batch
    counts: list | None = None          # valid points per element of a padded batch
    radius: torch.Tensor | None = None  # (B,) largest whitened norm of the whole context (far_field)
    bank_w: torch.Tensor | None = None  # (B, P_b, d) the kernel bank's points when not ctx_w (encode)
    bank_mask: torch.Tensor | None = None   # (B, P_b) and
    bank_counts: list | None = None         # per element, of a padded bank_w
    ellipticals: list | None = None     # B RadialFits of the whole whitened context (elliptical candidate)
    n_points: list | None = None        # all valid context points per element, also when subsampled


def context_radius(ctx_w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the largest ``‖w_j‖`` over the valid points of a whitened context (B,n,d)."""
    sq = (ctx_w * ctx_w).sum(-1)                                             # (B, n)
    if mask is not None:
        sq = sq.masked_fill(~mask, 0.0)
    return sq.max(-1).values.sqrt()                                          # (B,)


#: the far-field blend runs from the network (``‖w‖ ≤ FAR_FIELD[0]·R``) to the mixture candidate
#: alone (``‖w‖ ≥ FAR_FIELD[1]·R``), R the context's radius (:meth:`WhitenedModel.far_field`).
#: Chosen among (1, 1.5), (1.25, 2), (1.5, 2.5), (2, 3) on the ablation's draws (n = 1024):
#: (1, 1.5) helped Student-t most but cost banana 0.1–0.3 points (its curved arms reach past R,
#: where the network is better than the mixture); (1.5, 2.5) left banana and Laplace unchanged.
#: On 32 other draws per cell it lowered Student-t ν = 3 from 8.18 / 8.38 / 4.02 % to
#: 5.32 / 6.51 / 3.71 % (d = 1 / 2 / 3) and left banana (d = 2, 3, 10) and Laplace as they were.
FAR_FIELD = (1.5, 2.5)


class WhitenedModel(nn.Module):
    """``forward(context (B,n,d), queries (B,m,d)) -> (log f (B,m), score (B,m,d))`` in the
    original coordinates; ``encode`` once, then ``predict`` queries in chunks. A padded batch of
    contexts of different sizes passes ``counts`` (B ints) to ``encode``: element b uses its first
    ``counts[b]`` points, exactly as if it were alone."""

    def __init__(self, net: DiScoFormerNet):
        super().__init__()
        self.net = net

    @property
    def config(self):
        return self.net.config

    def encode(self, context: torch.Tensor, mixture: Mixture | None = None,
               counts: list[int] | None = None, *, fitter=None,
               subsample: torch.Tensor | None = None, bank_subsample: torch.Tensor | None = None) -> EncodedContext:
        """Whiten ``context`` (B,n,d), fit the mixture candidate and encode the context tokens.

        ``mixture``: use this fit (whitened units) instead; ``fitter(ctx_w, frame) -> Mixture``:
        fit with this instead of the cold search (the estimator's warm start); ``counts``: valid
        points per element of a padded batch; ``subsample`` (P,) indices: the kernel bank and the
        attention see only these context points (bounded cost), the frame and the mixture fit
        use all n; ``bank_subsample`` (P_b,) indices: the kernel bank sees these points instead.
        """
        c = self.net.config
        mask = None
        if counts is not None:
            counts = [int(k) for k in counts]
            mask = torch.arange(context.shape[1], device=context.device) < torch.tensor(
                counts, device=context.device)[:, None]                      # (B, n)
            context = context.masked_fill(~mask[..., None], 0.0)             # (B, n, d) padding at 0
        frame = AffineFrame.fit(context, c.whiten_ridge, mask)
        ctx_w = frame.whiten(context)                                        # (B, n, d)
        if mask is not None:
            ctx_w = ctx_w.masked_fill(~mask[..., None], 0.0)                 # (B, n, d)
        if mixture is None:
            mixture = self.fit_mixture(ctx_w, frame, mask, fitter)
        radius = context_radius(ctx_w, mask)                                 # (B,) of all n points
        ellipticals = elliptical_fits(ctx_w, counts, mask) if c.elliptical_candidate else None
        bank_w = None
        if (subsample is not None or bank_subsample is not None) and mask is not None:
            raise ValueError("subsample and counts cannot be combined")
        if bank_subsample is not None:
            bank_w = ctx_w[:, bank_subsample]                                # (B, P_b, d)
        if subsample is not None:
            ctx_w = ctx_w[:, subsample]                                      # (B, P, d)
        n_points = counts if counts is not None else [context.shape[1]] * context.shape[0]
        return EncodedContext(frame, ctx_w, self.net.encode_context(ctx_w, mask), mixture, mask, counts, radius,
                              bank_w, ellipticals=ellipticals, n_points=n_points)

    def fit_mixture(self, ctx_w: torch.Tensor, frame: AffineFrame, mask: torch.Tensor | None = None,
                    fitter=None) -> Mixture | None:
        """The mixture candidate's fit to the whitened context (B,n,d) (None without one): the
        cold BIC search, or ``fitter(ctx_w, frame)`` (the estimator's warm start), then the
        leave-one-out covariances and the merge test where the config asks for them."""
        c = self.net.config
        if not c.mixture_components:
            return None
        mixture = fitter(ctx_w, frame) if fitter is not None else self.search_mixture(ctx_w, mask)
        if c.mixture_loo_covariances:
            mixture = loo_covariances(ctx_w, mixture, frame.chol, c.mixture_ridge, mask,
                                      small_prior=c.mixture_loo_small_prior)
        if c.mixture_merge_test:
            mixture = merge_components(ctx_w, mixture, frame.chol, c.mixture_ridge, mask, unbiased=c.mixture_unbiased,
                                       small_prior=c.mixture_loo_small_prior)
        return mixture

    def search_mixture(self, ctx_w: torch.Tensor, mask: torch.Tensor | None = None,
                       patience: int | None = None) -> Mixture:
        """The split/BIC search of the config's mixture on whitened contexts (B,n,d)
        (:func:`~particlescore.candidates.fit_mixture`), stopped after ``patience`` K without a
        better BIC (None: up to the config's maximum)."""
        c = self.net.config
        return fit_mixture(ctx_w, c.mixture_components, c.mixture_iters, c.mixture_shrink, c.mixture_ridge, mask,
                           tied=c.mixture_tied, tied_clustering=c.mixture_tied_clustering,
                           kmeans_start=c.mixture_kmeans_start, kmeans_restarts=c.mixture_kmeans_restarts,
                           birth=c.mixture_birth, scale_split=c.mixture_scale_split,
                           unbiased=c.mixture_unbiased, patience=patience)

    def candidates(self, enc: EncodedContext, qry_w: torch.Tensor) -> Candidates:
        if enc.bank_w is None:
            return evaluate_candidates(self.net.config, enc.ctx_w, enc.mixture, qry_w, enc.counts, enc.mask,
                                       enc.ellipticals)
        return evaluate_candidates(self.net.config, enc.bank_w, enc.mixture, qry_w, enc.bank_counts, enc.bank_mask,
                                   enc.ellipticals)

    def decode_whitened(self, enc: EncodedContext, qry_w: torch.Tensor):
        """Whitened log-density (B,m) and score (B,m,d) at whitened queries (B,m,d)."""
        cand = self.candidates(enc, qry_w)
        # log n of every point (config.log_n_all_points), not of the attention's subsample
        counts = enc.n_points if self.net.config.log_n_all_points and enc.n_points is not None else enc.counts
        log_w, score_w = self.net(qry_w, enc.layers, cand, enc.mask, counts, ctx_w=enc.ctx_w)
        return self.far_field(enc, qry_w, cand, log_w, score_w, self.net.config.mixture_index)

    @staticmethod
    def far_field(enc: EncodedContext, qry_w: torch.Tensor, cand, log_w: torch.Tensor, score_w: torch.Tensor,
                  mixture_index: int):
        """Beyond the context the network's outputs blend into the mixture candidate's:
        weight ``λ = clip((b·R − ‖w‖)/((b − a)·R), 0, 1)`` on the network, ``(a, b) = FAR_FIELD``,
        R the largest whitened norm of the context (``enc.radius``). Up to a·R nothing changes.
        Training goes through it too (its queries lie within a·R but for rare outliers).

        Why: past the last particle every kernel candidate extrapolates its nearest points
        (KDE scores grow like distance/h²), the gates never saw such queries in training, and the
        mixture, a parametric fit, is the one candidate with a sane tail. Measured on Student-t
        ν = 3 in d = 1 (n = 1024): a query at 2.5 R got a score of 18.6 where the truth is 0.15
        and the mixture gives 4.7; that one query made the draw's relative error 111 %.
        No-op without a mixture candidate or a radius. The solver's queries are the particles
        themselves (‖w‖ ≤ R), so trajectories are unchanged."""
        if enc.radius is None or enc.mixture is None:
            return log_w, score_w
        inner, outer = FAR_FIELD
        radius = enc.radius.to(qry_w.dtype)[:, None]                         # (B, 1)
        lam = ((outer * radius - qry_w.norm(dim=-1)) / ((outer - inner) * radius)).clamp(0.0, 1.0)  # (B, m)
        log_w = lam * log_w + (1 - lam) * cand.log_density[..., mixture_index]  # (B, m)
        score_w = lam[..., None] * score_w + (1 - lam[..., None]) * cand.score[..., mixture_index, :]  # (B, m, d)
        return log_w, score_w

    def predict(self, enc: EncodedContext, queries: torch.Tensor, chunk: int | None = None):
        """Log-density (B,m) and score (B,m,d) at ``queries`` (original coordinates); queries go
        in chunks, so memory is O(chunk·n)."""
        qry_w = enc.frame.whiten(queries)                                    # (B, m, d)
        B, n = (enc.ctx_w if enc.bank_w is None else enc.bank_w).shape[:2]
        m = queries.shape[1]
        if chunk is None:
            if uses_fused_bank(enc.ctx_w, qry_w):   # O(d·n) memory per query: one chunk of query_chunk
                chunk = self.net.config.query_chunk
            else:  # bound the (B, chunk, n) kernel blocks of the torch bank
                chunk = max(16, min(self.net.config.query_chunk, 2 ** 23 // (B * n * self.net.n_candidates) + 1))
        logs, scores = [], []
        for start in range(0, m, chunk):
            log_f, score = enc.frame.unwhiten(*self.decode_whitened(enc, qry_w[:, start:start + chunk]))
            logs.append(log_f)                                               # (B, c)
            scores.append(score)                                             # (B, c, d)
        return torch.cat(logs, 1), torch.cat(scores, 1)

    def forward(self, context: torch.Tensor, queries: torch.Tensor, chunk: int | None = None, *,
                subsample: torch.Tensor | None = None, bank_subsample: torch.Tensor | None = None, fitter=None):
        """``predict(encode(context, ...), queries)``; the keywords are :meth:`encode`'s."""
        return self.predict(self.encode(context, fitter=fitter, subsample=subsample, bank_subsample=bank_subsample),
                            queries, chunk)
