"""Training batches: fresh random distributions every step.

``gmm`` (the default, and the only family of the GMM-pretrained weights): Gaussian mixtures of
DiScoFormer's Algorithm 1 (arXiv 2511.05924). Two further families with exact log-densities and
scores teach the network where the mixture candidate is wrong (heavy tails, kinks), and a third
keeps it sharp where the mixture is right:

* ``gaussian``: one Gaussian of the same law as a mixture component (after whitening every such
  draw is the same law: the near-Maxwellian ensembles of the solver, seen at every step);
* ``t_mixture``: the same random mixtures with every component a multivariate Student-t of
  location μ_k, scale matrix Σ_k and one ν per mixture, log-uniform in [2.2, 30];
* ``laplace``: a rotated, scaled product of Laplace laws, ``x = μ + R y``, ``y_i ~ Laplace(0, b_i)``,
  b ~ U[0.5, 1.5]^d, R Haar-random, μ ~ U[−1, 1]^d;
* ``radial``: elliptical laws whose radial profile is not Gaussian, ``x = μ + L y`` with
  ``f(y) ∝ Σ_j w_j |y|^{2p_j} exp(−|y|²/2s_j²)``: one to three shells, p_j ∈ {0, 1, 2},
  s_j log-uniform in [0.5, 2] (the BKW solution of the Landau equation is one of them; the
  elliptical candidate is the one made for this family).

Every draw comes from a generator seeded by ``(seed, rank, step)``, so a resumed run sees
exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from particlescore._validation import seeded_generator
from particlescore.distributions import _haar_orthogonal, _standard_exponential, random_gmm, sample_gamma


@dataclass
class Batch:
    context: torch.Tensor       # (B, n, d)
    queries: torch.Tensor       # (B, m, d)
    log_density: torch.Tensor   # (B, m) exact log f at the queries
    score: torch.Tensor         # (B, m, d) exact ∇ log f at the queries


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of one rank's batch at ``step``: :func:`particlescore._validation.seeded_generator`
    ``(seed, rank, step)``, the package's one seeding rule (the solver's per-step draws use it too).
    Weights trained before this change drew from ``manual_seed(seed·1000003 + rank·7919 + step)``."""
    return seeded_generator(seed, rank, step)


def context_size(step: int, seed: int, n_min: int, n_max: int) -> int:
    """Log-uniform context size in [n_min, n_max], the same on every rank for a step."""
    g = step_generator(seed, 10_000, step)
    u = torch.rand((), generator=g, dtype=torch.float64).item()
    return int(round(math.exp(math.log(n_min) + u * (math.log(n_max) - math.log(n_min)))))


def _blur(queries: torch.Tensor, off_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """The first ``off_fraction`` of the queries (B,m,d) moved by N(0, I): points off the support."""
    B, m, d = queries.shape
    n_off = int(round(off_fraction * m))
    if n_off:
        queries[:, :n_off] += torch.randn(B, n_off, d, generator=generator, dtype=queries.dtype)
    return queries


def _gmm(batch: int, dim: int, generator: torch.Generator, n_components: tuple[int, int] = (1, 10)):
    mixture = random_gmm(batch, dim, generator=generator, n_components=n_components, dtype=torch.float64)
    return lambda count: mixture.sample(count, generator=generator), mixture.log_prob_and_score


def _t_mixture(batch: int, dim: int, generator: torch.Generator):
    """Student-t mixtures: ``log t_k = lgamma((ν+d)/2) − lgamma(ν/2) − (d/2)·log(νπ) − log|L_k|
    − ((ν+d)/2)·log(1 + q_k/ν)``, ``q_k = |L_k⁻¹(x − μ_k)|²``, ``∇ log t_k = −(ν+d)/(ν+q_k)·Σ_k⁻¹(x − μ_k)``
    (Kotz & Nadarajah 2004, eq. 1.1); sampled as ``μ_k + L_k z·√(ν/W)``, W ~ χ²_ν."""
    mixture = random_gmm(batch, dim, generator=generator, dtype=torch.float64)
    weights, means, chol = mixture.weights, mixture.means, mixture.cholesky_factors  # (B,K), (B,K,d), (B,K,d,d)
    half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (B, K)
    log_w = torch.log(weights)                                               # (B, K), −inf at padding
    nu = torch.exp(math.log(2.2) + torch.rand(batch, generator=generator, dtype=torch.float64)
                   * (math.log(30.0) - math.log(2.2)))                       # (B,)

    def sample(count: int) -> torch.Tensor:
        out = []
        for b in range(batch):
            k = torch.multinomial(weights[b], count, replacement=True, generator=generator)  # (count,)
            z = torch.randn(count, dim, generator=generator, dtype=torch.float64)            # (count, d)
            w = 2.0 * sample_gamma(0.5 * float(nu[b]), count, generator=generator, dtype=torch.float64)
            out.append(means[b, k] + (chol[b, k] @ z[..., None])[..., 0] * torch.sqrt(nu[b] / w)[:, None])
        return torch.stack(out)                                              # (B, count, d)

    def log_prob_and_score(x: torch.Tensor):
        z = torch.linalg.solve_triangular(chol, (x[:, None] - means[:, :, None]).transpose(-1, -2),
                                          upper=False)                       # (B, K, d, m)
        q = (z * z).sum(-2)                                                  # (B, K, m)
        nu_ = nu[:, None, None]                                              # (B, 1, 1)
        log_wt = log_w[..., None] + (torch.lgamma(0.5 * (nu_ + dim)) - torch.lgamma(0.5 * nu_)
                                     - 0.5 * dim * torch.log(nu_ * math.pi) - half_logdet[..., None]
                                     - 0.5 * (nu_ + dim) * torch.log1p(q / nu_))    # (B, K, m)
        log_f = torch.logsumexp(log_wt, 1)                                   # (B, m)
        resp = torch.exp(log_wt - log_f[:, None])                            # (B, K, m)
        prec_diff = torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True)  # (B, K, d, m) Σ⁻¹(x−μ)
        comp_score = -((nu_ + dim) / (nu_ + q))[:, :, None] * prec_diff      # (B, K, d, m)
        return log_f, (resp[:, :, None] * comp_score).sum(1).transpose(-1, -2)  # (B, m), (B, m, d)

    return sample, log_prob_and_score


def _laplace(batch: int, dim: int, generator: torch.Generator):
    """``x = μ + R y``, ``y_i ~ Laplace(0, b_i)``: ``log f = −Σ_i log(2 b_i) − Σ_i |y_i|/b_i``,
    ``∇ log f = −R (sign(y)/b)``."""
    cpu = torch.device("cpu")
    scale = 0.5 + torch.rand(batch, 1, dim, generator=generator, dtype=torch.float64)      # (B, 1, d)
    rot = _haar_orthogonal((batch,), dim, generator=generator, dtype=torch.float64, device=cpu)  # (B, d, d)
    loc = -1.0 + 2.0 * torch.rand(batch, 1, dim, generator=generator, dtype=torch.float64)  # (B, 1, d)

    def sample(count: int) -> torch.Tensor:
        e = _standard_exponential((2, batch, count, dim), generator=generator, dtype=torch.float64, device=cpu)
        return loc + (scale * (e[0] - e[1])) @ rot.transpose(-1, -2)       # (B, count, d)

    def log_prob_and_score(x: torch.Tensor):
        y = (x - loc) @ rot                                                  # (B, m, d) Rᵀ(x − μ)
        log_f = -torch.log(2 * scale).sum(-1) - (y.abs() / scale).sum(-1)    # (B, m)
        return log_f, -(torch.sign(y) / scale) @ rot.transpose(-1, -2)       # (B, m), (B, m, d)

    return sample, log_prob_and_score


def _radial(batch: int, dim: int, generator: torch.Generator, max_terms: int = 3):
    """Gaussian shells about one centre: ``x = μ + L y``, ``f(y) = Σ_j w_j |y|^{2p_j} e^{−|y|²/2s_j²} / Z_j``,
    ``Z_j = (2π s_j²)^{d/2} (2s_j²)^{p_j} Γ(d/2 + p_j)/Γ(d/2)`` (the moment E|z|^{2p} of N(0, s²I)),
    ``∇_y log f = Σ_j ρ_j y (2p_j/|y|² − 1/s_j²)``, ρ_j the terms' shares. Term j samples as
    ``y = s_j·u·√χ²_{d+2p_j}``, u uniform on the sphere. μ and L: one component of
    :func:`particlescore.distributions.random_gmm`."""
    shape = random_gmm(batch, dim, generator=generator, n_components=(1, 1), dtype=torch.float64)
    loc, chol = shape.means[:, 0], shape.cholesky_factors[:, 0]              # (B, d), (B, d, d)
    n_terms = torch.randint(1, max_terms + 1, (batch,), generator=generator)  # (B,)
    power = torch.randint(0, 3, (batch, max_terms), generator=generator).double()  # (B, J)
    scale = torch.exp(math.log(0.5) + math.log(4.0) * torch.rand(batch, max_terms, generator=generator,
                                                                dtype=torch.float64))  # (B, J)
    raw = _standard_exponential((batch, max_terms), generator=generator, dtype=torch.float64,
                                device=torch.device("cpu"))                  # (B, J) Dirichlet(1,…,1)
    raw = raw * (torch.arange(max_terms)[None] < n_terms[:, None])           # (B, J) unused terms at 0
    weight = raw / raw.sum(1, keepdim=True)                                  # (B, J)
    half = 0.5 * dim
    log_norm = (half * torch.log(2 * math.pi * scale ** 2) + power * torch.log(2 * scale ** 2)
                + torch.lgamma(half + power) - math.lgamma(half))            # (B, J) log Z_j
    log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)      # (B,)

    def sample(count: int) -> torch.Tensor:
        out = []
        for b in range(batch):
            j = torch.multinomial(weight[b], count, replacement=True, generator=generator)  # (count,)
            u = torch.randn(count, dim, generator=generator, dtype=torch.float64)           # (count, d)
            u = u / u.norm(dim=1, keepdim=True)
            r = torch.empty(count, dtype=torch.float64)
            for k in range(max_terms):
                pick = j == k
                if int(pick.sum()):
                    chi2 = 2.0 * sample_gamma(half + float(power[b, k]), int(pick.sum()), generator=generator)
                    r[pick] = scale[b, k] * torch.sqrt(chi2)
            out.append(loc[b] + (u * r[:, None]) @ chol[b].T)
        return torch.stack(out)                                              # (B, count, d)

    def log_prob_and_score(x: torch.Tensor):
        y = torch.linalg.solve_triangular(chol, (x - loc[:, None]).transpose(-1, -2),
                                          upper=False).transpose(-1, -2)     # (B, m, d) L⁻¹(x − μ)
        r2 = (y * y).sum(-1).clamp_min(1e-300)                               # (B, m)
        log_terms = (torch.log(weight)[:, None] + power[:, None] * torch.log(r2)[..., None]
                     - r2[..., None] / (2 * scale[:, None] ** 2) - log_norm[:, None])   # (B, m, J), −inf unused
        log_f = torch.logsumexp(log_terms, -1)                               # (B, m)
        share = torch.exp(log_terms - log_f[..., None])                      # (B, m, J)
        radial = (share * (2 * power[:, None] / r2[..., None] - 1 / scale[:, None] ** 2)).sum(-1)  # (B, m)
        score_y = y * radial[..., None]                                      # (B, m, d)
        score = torch.linalg.solve_triangular(chol.transpose(-1, -2), score_y.transpose(-1, -2),
                                              upper=True).transpose(-1, -2)  # (B, m, d) L⁻ᵀ ∇_y
        return log_f - log_det[:, None], score

    return sample, log_prob_and_score


#: family name -> ``draw(batch, dim, generator)`` returning ``(sample(count) -> (B,count,d),
#: log_prob_and_score(x (B,m,d)) -> ((B,m), (B,m,d)))``
FAMILY_DRAWS = {"gmm": _gmm, "gaussian": functools.partial(_gmm, n_components=(1, 1)), "t_mixture": _t_mixture,
                "laplace": _laplace, "radial": _radial}


def make_batch(*, dim: int, batch: int, n: int, n_queries: int, off_fraction: float,
               generator: torch.Generator, dtype=torch.float32,
               families: dict[str, float] | None = None) -> Batch:
    """A batch of ``batch`` distributions, ``n`` samples each as the context and ``n_queries``
    queries, mostly from the distribution and ``off_fraction`` of them blurred by N(0, I).
    ``families`` maps names of :data:`FAMILY_DRAWS` to relative weights; each batch element draws
    its family from them. Default: Gaussian mixtures only (1–10 components), drawn exactly as
    the GMM-pretrained weights saw them."""
    families = {"gmm": 1.0} if families is None else families
    unknown = sorted(set(families) - set(FAMILY_DRAWS))
    if unknown or not families or any(not (w > 0) for w in families.values()):
        raise ValueError(f"families must map names of {sorted(FAMILY_DRAWS)} to positive weights, got {families}")
    names = list(families)
    if len(names) == 1:
        counts = [batch]
    else:
        probs = torch.tensor([families[k] for k in names], dtype=torch.float64)
        picks = torch.multinomial(probs / probs.sum(), batch, replacement=True, generator=generator)
        counts = [int((picks == i).sum()) for i in range(len(names))]
    parts = []
    for name, count in zip(names, counts):
        if count:
            sample, log_prob_and_score = FAMILY_DRAWS[name](count, dim, generator)
            context = sample(n)                                              # (b, n, d)
            queries = _blur(sample(n_queries), off_fraction, generator)      # (b, m, d)
            parts.append((context, queries, *log_prob_and_score(queries)))
    context, queries, log_density, score = (torch.cat(p) for p in zip(*parts))
    return Batch(context.to(dtype), queries.to(dtype), log_density.to(dtype), score.to(dtype))
