"""Probability distributions with exact log-densities and scores.

Every distribution offers ``sample(n, generator=g)``, ``log_prob(x)`` and ``score(x)``
(the exact gradient ``∇_x log f`` in closed form, not autograd).  They are the training
labels of DiScoFormer (random Gaussian mixtures, arXiv:2511.05924) and the known answers of the
test problems (Student-t, Laplace, the BKW solution of the Landau equation, docs/equations.md).

Conventions: all computations run in the dtype of the parameters (float32 or float64);
inputs ``x`` are converted to that dtype; every random draw goes through the explicit
``torch.Generator`` passed as ``generator=``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "Distribution",
    "GaussianMixture",
    "random_gmm",
    "Gaussian",
    "isotropic_gaussian",
    "StudentT",
    "Laplace",
    "BKW",
    "sample_gamma",
]

_LOG_2PI = math.log(2.0 * math.pi)
# Upper bound on the number of elements of the (B, K, d, m) temporaries of the mixture code;
# queries are processed in chunks so that memory stays O(m) with a moderate constant.
_MAX_CHUNK_ELEMENTS = 2**24


# ----------------------------------------------------------------------------- helpers


def _as_float_tensor(value, name: str, dtype: torch.dtype | None = None,
                     device: torch.device | None = None) -> Tensor:
    tensor = torch.as_tensor(value, device=device)
    if dtype is not None:
        tensor = tensor.to(dtype)
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite (shape {tuple(tensor.shape)})")
    return tensor


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (pass it as generator=...)")
    return generator


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return n


def _check_points(x, dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.as_tensor(x, device=device).to(dtype)
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape (..., {dim}), got {tuple(x.shape)}")
    return x


def _device_of(x) -> torch.device:
    return x.device if isinstance(x, Tensor) else torch.device("cpu")


def _uniform_open(shape, *, generator, dtype, device) -> Tensor:
    """Uniform draws on (0, 1]: ``1 − U`` with ``U ~ torch.rand`` on [0, 1)."""
    return 1.0 - torch.rand(shape, generator=generator, dtype=dtype, device=device)


def _standard_exponential(shape, *, generator, dtype, device) -> Tensor:
    """Exp(1) by inversion: ``E = −log(1 − U)``."""
    return -torch.log(_uniform_open(shape, generator=generator, dtype=dtype, device=device))


def sample_gamma(concentration: float, n: int, *, generator: torch.Generator,
                 dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> Tensor:
    """Draw ``n`` samples of Gamma(concentration, rate 1) with an explicit generator.

    Marsaglia & Tsang (2000), "A simple method for generating gamma variables":
    for a ≥ 1, with d = a − 1/3, c = 1/√(9d), propose v = (1 + c z)³ with z ~ N(0,1)
    and accept d·v if v > 0 and log u < z²/2 + d − d v + d log v (u ~ U(0,1)).
    For a < 1 use Gamma(a) = Gamma(a + 1) · U^{1/a}.  Vectorised: all pending entries are
    proposed at once and rejected ones re-proposed (acceptance ≥ 95 % per round).
    """
    _check_generator(generator)
    n = _check_n(n)
    a = float(concentration)
    if not math.isfinite(a) or a <= 0:
        raise ValueError(f"concentration must be positive and finite, got {concentration!r}")
    device = generator.device if device is None else torch.device(device)
    # Sample in float64 for accuracy of the acceptance test, cast at the end.
    work = torch.float64
    boost = a < 1.0
    shape_a = a + 1.0 if boost else a
    d = shape_a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=work, device=device)
    pending = torch.arange(n, device=device)
    for _ in range(1000):
        if pending.numel() == 0:
            break
        m = pending.numel()
        z = torch.randn(m, generator=generator, dtype=work, device=device)
        u = _uniform_open(m, generator=generator, dtype=work, device=device)
        v = (1.0 + c * z) ** 3
        positive = v > 0
        log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
        accept = positive & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
        out[pending[accept]] = d * v[accept]
        pending = pending[~accept]
    else:  # pragma: no cover - probability ~ 0.05**1000
        raise RuntimeError("gamma sampler did not converge")
    if boost:
        u = _uniform_open(n, generator=generator, dtype=work, device=device)
        out = out * u ** (1.0 / a)
    return out.to(dtype)


# ----------------------------------------------------------------------------- base class


class Distribution:
    """Abstract base: a density f on R^d with exact ``log_prob`` and ``score = ∇_x log f``."""

    dim: int

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """``n`` i.i.d. samples, shape (n, d) (batched classes: (B, n, d))."""
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """log f(x) for x of shape (..., d); returns shape (...)."""
        raise NotImplementedError

    def score(self, x: Tensor) -> Tensor:
        """∇_x log f(x) in closed form; x (..., d) -> (..., d)."""
        raise NotImplementedError

    def log_prob_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both labels at once (subclasses may share work)."""
        return self.log_prob(x), self.score(x)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form mean")

    @property
    def covariance(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form covariance")


# ----------------------------------------------------------------------------- Gaussian mixture


def _mixture_terms(x: Tensor, means: Tensor, chol: Tensor, half_logdet: Tensor,
                   want_score: bool, *, log_weight: Tensor | None = None, return_z: bool = False):
    """Per-component Gaussian log-densities (and scores) for a batch of mixtures.

    x (B, m, d), means (B, K, d), chol (B, K, d, d) lower Cholesky factors L_k of Σ_k,
    half_logdet (B, K) = Σ_i log L_k,ii.  With z = L_k^{-1}(x − μ_k):
    log N_k(x) = −½|z|² − ½ log det Σ_k − (d/2) log 2π,  score_k = −Σ_k^{-1}(x − μ_k) = −L_k^{-T} z.
    Returns log N (B, K, m) and score (B, K, m, d) or None; with ``log_weight`` (B, K) the first
    output is ``log w_k + log N_k`` instead, and ``return_z`` appends z (B, K, d, m). This is the
    one implementation of these sums: the in-context mixture fit of DiScoFormer
    (``particlescore.candidates``) uses it too.
    """
    d = x.shape[-1]
    diff = x[:, None, :, :] - means[:, :, None, :]                     # (B, K, m, d)
    z = torch.linalg.solve_triangular(chol, diff.transpose(-1, -2), upper=False)  # (B,K,d,m)
    half_sq = 0.5 * (z * z).sum(-2)                                         # (B, K, m)
    if log_weight is None:
        log_norm = -half_sq - half_logdet[..., None] - 0.5 * d * _LOG_2PI
    else:
        log_norm = log_weight[..., None] - half_sq - half_logdet[..., None] - 0.5 * d * _LOG_2PI
    score = None
    if want_score:
        score = -torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True).transpose(-1, -2)  # (B,K,m,d)
    return (log_norm, score, z) if return_z else (log_norm, score)


class GaussianMixture(Distribution):
    """Mixture f(x) = Σ_k w_k N(x; μ_k, Σ_k), optionally a batch of B mixtures.

    log f = logsumexp_k(log w_k + log N_k(x)) over the components with w_k > 0;
    score = Σ_k r_k(x) (−Σ_k^{-1}(x − μ_k)) with responsibilities r_k = softmax_k(log w_k + log N_k).
    Components of weight exactly 0 are padding: masked out (log-weight −inf), their covariance
    replaced by the identity so that the Cholesky factorisation stays defined.  Weights are
    normalised to sum to 1 per mixture.

    Shapes: weights (K,) | (B, K); means (K, d) | (B, K, d); covariances (K, d, d) | (B, K, d, d).
    """

    def __init__(self, weights, means, covariances):
        means = _as_float_tensor(means, "means")
        dtype, device = means.dtype, means.device
        weights = _as_float_tensor(weights, "weights", dtype, device)
        covariances = _as_float_tensor(covariances, "covariances", dtype, device)
        if weights.ndim not in (1, 2):
            raise ValueError(f"weights must have shape (K,) or (B, K), got {tuple(weights.shape)}")
        batched = weights.ndim == 2
        if not batched:
            weights, means, covariances = weights[None], means[None], covariances[None]
        B, K = weights.shape
        if K < 1:
            raise ValueError(f"weights must have at least one component, got {tuple(weights.shape)}")
        if means.ndim != 3 or means.shape[:2] != (B, K) or means.shape[2] < 1:
            expect = "(B, K, d)" if batched else "(K, d)"
            raise ValueError(f"means must have shape {expect} matching weights "
                             f"{tuple(weights.shape[int(not batched):])}, got "
                             f"{tuple(means.shape[int(not batched):])}")
        d = means.shape[2]
        if covariances.shape != (B, K, d, d):
            expect = f"({B}, {K}, {d}, {d})" if batched else f"({K}, {d}, {d})"
            raise ValueError(f"covariances must have shape {expect}, got "
                             f"{tuple(covariances.shape[int(not batched):])}")
        if (weights < 0).any():
            raise ValueError("weights must be non-negative")
        total = weights.sum(-1, keepdim=True)
        if (total <= 0).any():
            raise ValueError("weights must have a positive sum in every mixture")
        active = weights > 0
        eye = torch.eye(d, dtype=dtype, device=device)
        covariances = torch.where(active[..., None, None], covariances, eye)
        asym = (covariances - covariances.transpose(-1, -2)).abs().amax(dim=(-1, -2))
        scale = covariances.abs().amax(dim=(-1, -2))
        if (asym > 100 * torch.finfo(dtype).eps * scale).any():
            raise ValueError(f"covariances must be symmetric (shape {tuple(covariances.shape)})")
        chol, info = torch.linalg.cholesky_ex(covariances)
        if (info != 0).any():
            bad = torch.nonzero(info != 0)[0].tolist()
            where = f"mixture {bad[0]}, component {bad[1]}" if batched else f"component {bad[1]}"
            raise ValueError(f"covariances must be positive definite ({where} is not; "
                             f"shape {tuple(covariances.shape[int(not batched):])})")
        self.dim = d
        self._batched = batched
        self._weights = weights / total
        self._means = means
        self._covariances = covariances
        self._active = active
        self._log_weights = torch.where(active, torch.log(torch.where(active, self._weights,
                                                                      torch.ones_like(weights))),
                                        torch.full_like(weights, -math.inf))
        self._chol = chol
        self._half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    # -- metadata -------------------------------------------------------------------------
    @property
    def batched(self) -> bool:
        return self._batched

    @property
    def batch_size(self) -> int:
        """B for a batched mixture, 1 otherwise."""
        return self._weights.shape[0]

    @property
    def n_components(self) -> int:
        """Number of component slots K (zero-weight padding included)."""
        return self._weights.shape[1]

    @property
    def n_active(self) -> Tensor:
        """Number of components with positive weight: (B,) int64, or a 0-d tensor unbatched."""
        counts = self._active.sum(-1)
        return counts if self._batched else counts[0]

    @property
    def dtype(self) -> torch.dtype:
        return self._means.dtype

    @property
    def device(self) -> torch.device:
        return self._means.device

    def _public(self, tensor: Tensor) -> Tensor:
        return tensor if self._batched else tensor[0]

    @property
    def weights(self) -> Tensor:
        return self._public(self._weights)

    @property
    def means(self) -> Tensor:
        return self._public(self._means)

    @property
    def covariances(self) -> Tensor:
        return self._public(self._covariances)

    @property
    def cholesky_factors(self) -> Tensor:
        """Lower Cholesky factors L_k with Σ_k = L_k L_k^T (cached)."""
        return self._public(self._chol)

    def __len__(self) -> int:
        if not self._batched:
            raise TypeError("an unbatched GaussianMixture has no len()")
        return self.batch_size

    def __getitem__(self, i: int) -> "GaussianMixture":
        """The i-th mixture of a batch, unbatched."""
        if not self._batched:
            raise TypeError("indexing needs a batched GaussianMixture")
        return GaussianMixture(self._weights[i], self._means[i], self._covariances[i])

    def __repr__(self) -> str:
        batch = f"B={self.batch_size}, " if self._batched else ""
        return (f"GaussianMixture({batch}K={self.n_components}, d={self.dim}, "
                f"dtype={self.dtype})")

    # -- moments --------------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        """E x = Σ_k w_k μ_k; (d,) or (B, d)."""
        return self._public(torch.einsum("bk,bkd->bd", self._weights, self._means))

    @property
    def covariance(self) -> Tensor:
        """Cov x = Σ_k w_k (Σ_k + μ_k μ_k^T) − m m^T (law of total covariance); (d,d) or (B,d,d)."""
        w, mu = self._weights, self._means
        m = torch.einsum("bk,bkd->bd", w, mu)
        second = torch.einsum("bk,bkij->bij", w, self._covariances
                              + mu[..., :, None] * mu[..., None, :])
        return self._public(second - m[:, :, None] * m[:, None, :])

    # -- evaluation -----------------------------------------------------------------------
    def _flatten_queries(self, x) -> tuple[Tensor, tuple[int, ...]]:
        x = _check_points(x, self.dim, self.dtype, self.device)
        if self._batched:
            if x.ndim < 2 or x.shape[0] != self.batch_size:
                raise ValueError(f"x must have shape ({self.batch_size}, ..., {self.dim}) for a "
                                 f"batch of {self.batch_size} mixtures, got {tuple(x.shape)}")
            lead = tuple(x.shape[:-1])
            return x.reshape(self.batch_size, -1, self.dim), lead
        lead = tuple(x.shape[:-1])
        return x.reshape(1, -1, self.dim), lead

    def _evaluate(self, x, want_log_prob: bool, want_score: bool):
        xf, lead = self._flatten_queries(x)
        B, m, d = xf.shape
        K = self.n_components
        chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, B * K * d))
        log_probs, scores = [], []
        for start in range(0, max(m, 1), chunk):
            xc = xf[:, start:start + chunk]
            log_norm, comp_score = _mixture_terms(xc, self._means, self._chol,
                                                  self._half_logdet, want_score)
            joint = self._log_weights[..., None] + log_norm                  # (B, K, mc)
            joint = torch.where(self._active[..., None], joint,
                                torch.full_like(joint, -math.inf))
            if want_log_prob:
                log_probs.append(torch.logsumexp(joint, dim=1))
            if want_score:
                resp = torch.softmax(joint, dim=1)                            # (B, K, mc)
                scores.append((resp[..., None] * comp_score).sum(1))
        log_prob = torch.cat(log_probs, dim=1).reshape(lead) if want_log_prob else None
        score = torch.cat(scores, dim=1).reshape(lead + (d,)) if want_score else None
        return log_prob, score

    def log_prob(self, x: Tensor) -> Tensor:
        """log f(x) = logsumexp_k(log w_k + log N(x; μ_k, Σ_k)).

        Unbatched: x (..., d) -> (...).  Batched: x (B, ..., d) -> (B, ...).
        """
        return self._evaluate(x, True, False)[0]

    def score(self, x: Tensor) -> Tensor:
        """∇ log f(x) = Σ_k r_k(x) (−Σ_k^{-1}(x − μ_k)); same shape as x."""
        return self._evaluate(x, False, True)[1]

    def log_prob_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._evaluate(x, True, True)

    # -- sampling -------------------------------------------------------------------------
    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """x = μ_k + L_k ε with k ~ Categorical(w), ε ~ N(0, I); (n, d) or (B, n, d)."""
        _check_generator(generator)
        n = _check_n(n)
        B, K, d = self.batch_size, self.n_components, self.dim
        if n == 0:
            return self._public(torch.empty(B, 0, d, dtype=self.dtype, device=self.device))
        probs = self._weights.to(torch.float64)
        component = torch.multinomial(probs, n, replacement=True, generator=generator)  # (B,n)
        eps = torch.randn(B, n, d, generator=generator, dtype=self.dtype, device=self.device)
        out = torch.zeros(B, n, d, dtype=self.dtype, device=self.device)
        for k in range(K):  # K is small (≤ ~10); keeps memory at O(B n d)
            xk = self._means[:, k, None, :] + eps @ self._chol[:, k].transpose(-1, -2)
            out = torch.where((component == k)[..., None], xk, out)
        return self._public(out)


def _haar_orthogonal(shape: Sequence[int], dim: int, *, generator, dtype, device) -> Tensor:
    """Haar-distributed orthogonal matrices: Q of G = QR (G Gaussian), columns times sign(R_ii).

    Mezzadri (2007), "How to generate random matrices from the classical compact groups".
    """
    gauss = torch.randn(*shape, dim, dim, generator=generator, dtype=dtype, device=device)
    q, r = torch.linalg.qr(gauss)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs[..., None, :]


def random_gmm(batch: int, dim: int, *, generator: torch.Generator,
               n_components: tuple[int, int] = (1, 10),
               mean_range: tuple[float, float] = (-3.0, 3.0),
               var_range: tuple[float, float] = (0.2, 1.0),
               rotate: bool = True, dtype: torch.dtype = torch.float32) -> GaussianMixture:
    """A batch of random Gaussian mixtures (DiScoFormer, arXiv 2511.05924, Algorithm 1).

    Per mixture: K ~ U{n_components[0], …, n_components[1]}; weights ~ Dirichlet(1) over the K
    active components (normalised Exp(1) draws); means ~ U(mean_range)^d; covariances
    R diag(v) R^T with v ~ U(var_range)^d and R Haar-random orthogonal (identity if not rotate).
    Returns a batched mixture with K_max = n_components[1] slots; inactive slots have weight 0,
    mean 0 and identity covariance.  Random numbers are drawn in float64 on generator.device
    (so a seed gives the same mixtures in every dtype) and cast to ``dtype``.
    """
    _check_generator(generator)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    k_min, k_max = (int(v) for v in n_components)
    if not 1 <= k_min <= k_max:
        raise ValueError(f"n_components must satisfy 1 <= min <= max, got {tuple(n_components)}")
    lo_mean, hi_mean = (float(v) for v in mean_range)
    lo_var, hi_var = (float(v) for v in var_range)
    if not lo_mean <= hi_mean:
        raise ValueError(f"mean_range must satisfy low <= high, got {tuple(mean_range)}")
    if not 0 < lo_var <= hi_var:
        raise ValueError(f"var_range must satisfy 0 < low <= high, got {tuple(var_range)}")
    device = generator.device
    work = torch.float64
    counts = torch.randint(k_min, k_max + 1, (batch,), generator=generator, device=device)
    active = torch.arange(k_max, device=device)[None, :] < counts[:, None]      # (B, K)
    raw = _standard_exponential((batch, k_max), generator=generator, dtype=work, device=device)
    raw = torch.where(active, raw, torch.zeros_like(raw))
    # An Exp(1) draw is exactly 0 only if rand() returned 0 (prob. 2^-53): keep it positive.
    raw = torch.where(active, raw.clamp_min(torch.finfo(work).tiny), raw)
    weights = raw / raw.sum(-1, keepdim=True)
    means = lo_mean + (hi_mean - lo_mean) * torch.rand(batch, k_max, dim, generator=generator,
                                                       dtype=work, device=device)
    variances = lo_var + (hi_var - lo_var) * torch.rand(batch, k_max, dim, generator=generator,
                                                        dtype=work, device=device)
    if rotate:
        rot = _haar_orthogonal((batch, k_max), dim, generator=generator, dtype=work,
                               device=device)
        covs = (rot * variances[..., None, :]) @ rot.transpose(-1, -2)
        covs = 0.5 * (covs + covs.transpose(-1, -2))
    else:
        covs = torch.diag_embed(variances)
    eye = torch.eye(dim, dtype=work, device=device)
    covs = torch.where(active[..., None, None], covs, eye)
    means = torch.where(active[..., None], means, torch.zeros_like(means))
    return GaussianMixture(weights.to(dtype), means.to(dtype), covs.to(dtype))


# ----------------------------------------------------------------------------- Gaussian


class Gaussian(Distribution):
    """N(μ, Σ) with full covariance; log f = −½|L^{-1}(x−μ)|² − Σ log L_ii − (d/2) log 2π,
    score = −Σ^{-1}(x − μ), Σ = L L^T."""

    def __init__(self, mean, covariance):
        mean = _as_float_tensor(mean, "mean")
        covariance = _as_float_tensor(covariance, "covariance", mean.dtype, mean.device)
        if mean.ndim != 1 or mean.shape[0] < 1:
            raise ValueError(f"mean must have shape (d,), got {tuple(mean.shape)}")
        d = mean.shape[0]
        if covariance.shape != (d, d):
            raise ValueError(f"covariance must have shape ({d}, {d}), got {tuple(covariance.shape)}")
        scale = covariance.abs().max()
        if (covariance - covariance.T).abs().max() > 100 * torch.finfo(mean.dtype).eps * scale:
            raise ValueError(f"covariance must be symmetric (shape {tuple(covariance.shape)})")
        chol, info = torch.linalg.cholesky_ex(covariance)
        if info != 0:
            raise ValueError(f"covariance must be positive definite (shape {tuple(covariance.shape)})")
        self.dim = d
        self._mean = mean
        self._covariance = covariance
        self._chol = chol
        self._half_logdet = torch.log(torch.diagonal(chol)).sum()

    @property
    def dtype(self) -> torch.dtype:
        return self._mean.dtype

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def mean(self) -> Tensor:
        return self._mean

    @property
    def covariance(self) -> Tensor:
        return self._covariance

    @property
    def cholesky_factor(self) -> Tensor:
        return self._chol

    def _terms(self, x, want_score: bool):
        x = _check_points(x, self.dim, self.dtype, self.device)
        lead = tuple(x.shape[:-1])
        log_norm, score = _mixture_terms(x.reshape(1, -1, self.dim), self._mean[None, None],
                                         self._chol[None, None],
                                         self._half_logdet.reshape(1, 1), want_score)
        log_prob = log_norm.reshape(lead)
        return log_prob, (score.reshape(lead + (self.dim,)) if want_score else None)

    def log_prob(self, x: Tensor) -> Tensor:
        return self._terms(x, False)[0]

    def score(self, x: Tensor) -> Tensor:
        return self._terms(x, True)[1]

    def log_prob_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._terms(x, True)

    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """x = μ + L ε, ε ~ N(0, I)."""
        _check_generator(generator)
        n = _check_n(n)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        return self._mean + eps @ self._chol.T


def isotropic_gaussian(dim: int, variance: float = 1.0, *, mean=None,
                       dtype: torch.dtype = torch.float64) -> Gaussian:
    """N(mean, variance·I) (mean defaults to 0)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not float(variance) > 0:
        raise ValueError(f"variance must be positive, got {variance!r}")
    loc = torch.zeros(dim, dtype=dtype) if mean is None else _as_float_tensor(mean, "mean", dtype)
    if loc.ndim == 0:
        loc = loc.expand(dim).clone()
    if loc.shape != (dim,):
        raise ValueError(f"mean must have shape ({dim},), got {tuple(loc.shape)}")
    return Gaussian(loc, float(variance) * torch.eye(dim, dtype=dtype, device=loc.device))


# ----------------------------------------------------------------------------- Student-t


def _location(loc, dim: int, dtype: torch.dtype) -> Tensor:
    if loc is None:
        return torch.zeros(dim, dtype=dtype)
    loc = _as_float_tensor(loc, "loc", dtype)
    if loc.ndim == 0:
        return loc.expand(dim).clone()
    if loc.shape != (dim,):
        raise ValueError(f"loc must be a scalar or have shape ({dim},), got {tuple(loc.shape)}")
    return loc


def _check_dim(dim, minimum: int = 1) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < minimum:
        raise ValueError(f"dim must be an int >= {minimum}, got {dim!r}")
    return dim


class StudentT(Distribution):
    """Multivariate Student-t with ν = df degrees of freedom, location μ, shape matrix s²I.

    log f = lgamma((ν+d)/2) − lgamma(ν/2) − (d/2) log(νπ) − d log s
            − ((ν+d)/2) log(1 + |x−μ|²/(ν s²))
    score = −(ν + d)(x − μ)/(ν s² + |x − μ|²)
    (Kotz & Nadarajah, "Multivariate t Distributions", 2004, eq. 1.1).
    Sampling: x = μ + s z / √(W/ν), z ~ N(0, I), W ~ χ²_ν = 2 Gamma(ν/2).
    Mean μ (ν > 1); covariance ν/(ν−2) s² I (ν > 2).
    """

    def __init__(self, dim: int, df: float, *, loc=None, scale: float = 1.0,
                 dtype: torch.dtype = torch.float64):
        self.dim = _check_dim(dim)
        df = float(df)
        if not (math.isfinite(df) and df > 0):
            raise ValueError(f"df must be positive and finite, got {df!r}")
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be positive and finite, got {scale!r}")
        self.df = df
        self.scale = scale
        self.loc = _location(loc, dim, dtype)
        self._log_norm = (math.lgamma(0.5 * (df + dim)) - math.lgamma(0.5 * df)
                          - 0.5 * dim * math.log(df * math.pi) - dim * math.log(scale))

    @property
    def dtype(self) -> torch.dtype:
        return self.loc.dtype

    @property
    def device(self) -> torch.device:
        return self.loc.device

    @property
    def mean(self) -> Tensor:
        if self.df <= 1:
            raise ValueError(f"StudentT mean is undefined for df <= 1 (df={self.df})")
        return self.loc

    @property
    def covariance(self) -> Tensor:
        if self.df <= 2:
            raise ValueError(f"StudentT covariance is infinite for df <= 2 (df={self.df})")
        factor = self.df / (self.df - 2.0) * self.scale ** 2
        return factor * torch.eye(self.dim, dtype=self.dtype, device=self.device)

    def log_prob(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.dim, self.dtype, self.device)
        r2 = ((x - self.loc) ** 2).sum(-1)
        return self._log_norm - 0.5 * (self.df + self.dim) * torch.log1p(
            r2 / (self.df * self.scale ** 2))

    def score(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.dim, self.dtype, self.device)
        diff = x - self.loc
        r2 = (diff ** 2).sum(-1, keepdim=True)
        return -(self.df + self.dim) * diff / (self.df * self.scale ** 2 + r2)

    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        _check_generator(generator)
        n = _check_n(n)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.dtype, device=self.device)
        chi2 = 2.0 * sample_gamma(0.5 * self.df, n, generator=generator, dtype=torch.float64,
                                  device=self.device)
        factor = torch.sqrt(self.df / chi2).to(self.dtype)
        return self.loc + self.scale * z * factor[:, None]


# ----------------------------------------------------------------------------- Laplace


class Laplace(Distribution):
    """Product of independent 1-d Laplace laws: f(x) = Π_i exp(−|x_i − μ_i|/b_i)/(2 b_i).

    log f = −Σ_i log(2 b_i) − Σ_i |x_i − μ_i|/b_i,  score_i = −sign(x_i − μ_i)/b_i (sign(0) = 0).
    Sampling: μ + b(E₁ − E₂) with E₁, E₂ ~ Exp(1).  Mean μ, covariance diag(2 b²).
    ``loc`` and ``scale`` are scalars or (d,) tensors.
    """

    def __init__(self, dim: int, *, loc=0.0, scale=1.0, dtype: torch.dtype = torch.float64):
        self.dim = _check_dim(dim)
        self.loc = _location(loc, dim, dtype)
        scale_t = _as_float_tensor(scale, "scale", dtype)
        if scale_t.ndim == 0:
            scale_t = scale_t.expand(dim).clone()
        if scale_t.shape != (dim,):
            raise ValueError(f"scale must be a scalar or have shape ({dim},), got "
                             f"{tuple(scale_t.shape)}")
        if not (scale_t > 0).all():
            raise ValueError("scale must be positive")
        self.scale = scale_t
        self._log_norm = -torch.log(2.0 * scale_t).sum()

    @property
    def dtype(self) -> torch.dtype:
        return self.loc.dtype

    @property
    def device(self) -> torch.device:
        return self.loc.device

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def covariance(self) -> Tensor:
        return torch.diag(2.0 * self.scale ** 2)

    def log_prob(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.dim, self.dtype, self.device)
        return self._log_norm - ((x - self.loc).abs() / self.scale).sum(-1)

    def score(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.dim, self.dtype, self.device)
        return -torch.sign(x - self.loc) / self.scale

    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        _check_generator(generator)
        n = _check_n(n)
        e1 = _standard_exponential((n, self.dim), generator=generator, dtype=self.dtype,
                                   device=self.device)
        e2 = _standard_exponential((n, self.dim), generator=generator, dtype=self.dtype,
                                   device=self.device)
        return self.loc + self.scale * (e1 - e2)


# ----------------------------------------------------------------------------- BKW


class BKW(Distribution):
    """Bobylev–Krook–Wu exact solution of the homogeneous Landau equation, Maxwell molecules.

    (docs/equations.md; Bobylev 1975, Krook & Wu 1977.)  With K(t) = 1 − exp(−2B(d−1)t),
    P = ((d+2)K − d)/(2K), Q = (1−K)/(2K²):
        f(t,v) = (2πK)^{−d/2} exp(−|v|²/2K)(P + Q|v|²),
        s(t,v) = v(−1/K + 2Q/(P + Q|v|²)).
    Valid for t ≥ t0 = log((d+2)/2)/(2B(d−1)) (P ≥ 0; P = 0 at t0).
    f = P·N(0, K I) + (Q K d)·g with g ∝ |v|² e^{−|v|²/2K}, i.e. v = √K·R·u, R ~ χ_{d+2},
    u uniform on the sphere; P + QKd = 1.  Moments: E v = 0, Cov v = I (E|v|² = d),
    E|v|⁴ = K d (d+2)(2 − K).
    """

    def __init__(self, dim: int, t: float, *, B: float = 1.0 / 24.0,
                 dtype: torch.dtype = torch.float64):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an int >= 2 for the BKW solution, got {dim!r}")
        B = float(B)
        if not (math.isfinite(B) and B > 0):
            raise ValueError(f"B must be positive and finite, got {B!r}")
        t = float(t)
        t0 = self.start_time(dim, B)
        # Tolerate round-off of a t computed from t0 by the caller.
        if not math.isfinite(t) or t < t0 * (1.0 - 1e-12):
            raise ValueError(f"t must be >= start_time(dim={dim}, B={B}) = {t0!r} "
                             f"(the BKW density is negative before), got t={t!r}")
        K = -math.expm1(-2.0 * B * (dim - 1) * t)
        P = ((dim + 2) * K - dim) / (2.0 * K)
        if P < 0.0:  # only round-off can bring us here (t ≈ t0)
            P = 0.0
        self.dim = dim
        self.t = t
        self.B = B
        self.K = K
        self.P = P
        self.Q = (1.0 - K) / (2.0 * K * K)
        self._dtype = dtype

    @staticmethod
    def start_time(dim: int, B: float = 1.0 / 24.0) -> float:
        """t0 = log((d+2)/2)/(2B(d−1)), the time at which P = 0."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an int >= 2 for the BKW solution, got {dim!r}")
        return math.log((dim + 2) / 2.0) / (2.0 * float(B) * (dim - 1))

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def mean(self) -> Tensor:
        return torch.zeros(self.dim, dtype=self._dtype)

    @property
    def covariance(self) -> Tensor:
        return torch.eye(self.dim, dtype=self._dtype)

    @property
    def fourth_moment(self) -> float:
        """E|v|⁴ = K d (d+2)(2 − K) (mixture of N(0,KI) and the χ_{d+2} radial law)."""
        return self.K * self.dim * (self.dim + 2) * (2.0 - self.K)

    def log_prob(self, x: Tensor) -> Tensor:
        """log f = −(d/2) log(2πK) − |v|²/2K + log(P + Q|v|²) (−inf at v = 0 when P = 0)."""
        x = _check_points(x, self.dim, self._dtype, _device_of(x))
        r2 = (x * x).sum(-1)
        return (-0.5 * self.dim * math.log(2.0 * math.pi * self.K) - 0.5 * r2 / self.K
                + torch.log(self.P + self.Q * r2))

    def score(self, x: Tensor) -> Tensor:
        """s = v(−1/K + 2Q/(P + Q|v|²)); for P = 0 this is −v/K + 2v/|v|², set to 0 at v = 0."""
        x = _check_points(x, self.dim, self._dtype, _device_of(x))
        r2 = (x * x).sum(-1, keepdim=True)
        if self.P > 0.0:
            factor = -1.0 / self.K + 2.0 * self.Q / (self.P + self.Q * r2)
        else:
            nonzero = r2 > 0
            safe_r2 = torch.where(nonzero, r2, torch.ones_like(r2))
            factor = -1.0 / self.K + torch.where(nonzero, 2.0 / safe_r2, torch.zeros_like(r2))
        return x * factor

    def sample(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Exact: with prob. P draw N(0, K I), else √K·R·u, R ~ χ_{d+2}, u uniform on S^{d−1}."""
        _check_generator(generator)
        n = _check_n(n)
        d, device, work = self.dim, generator.device, torch.float64
        gaussian = torch.randn(n, d, generator=generator, dtype=work, device=device)
        radius = torch.randn(n, d + 2, generator=generator, dtype=work,
                             device=device).norm(dim=-1, keepdim=True)
        direction = torch.randn(n, d, generator=generator, dtype=work, device=device)
        norm = direction.norm(dim=-1, keepdim=True)
        # A Gaussian vector is exactly 0 with probability 0; guard anyway.
        direction = torch.where(norm > 0, direction / norm.clamp_min(1e-300),
                                torch.ones_like(direction) / math.sqrt(d))
        pick_gaussian = torch.rand(n, 1, generator=generator, dtype=work, device=device) < self.P
        v = math.sqrt(self.K) * torch.where(pick_gaussian, gaussian, radius * direction)
        return v.to(self._dtype)
