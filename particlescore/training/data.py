"""Training batches: fresh random Gaussian mixtures every step (DiScoFormer, Algorithm 1).

Every draw comes from a generator seeded by ``(seed, rank, step)``, so a resumed run sees
exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from particlescore._validation import seeded_generator
from particlescore.distributions import random_gmm


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


def make_batch(*, dim: int, batch: int, n: int, n_queries: int, off_fraction: float,
               generator: torch.Generator, dtype=torch.float32) -> Batch:
    """Mixtures of 1–10 components; queries mostly from the mixture, ``off_fraction`` of them
    from the mixture blurred by N(0, I) (points off the samples' support)."""
    mixture = random_gmm(batch, dim, generator=generator, dtype=torch.float64)
    context = mixture.sample(n, generator=generator)                         # (B, n, d)
    queries = mixture.sample(n_queries, generator=generator)                 # (B, m, d)
    n_off = int(round(off_fraction * n_queries))
    if n_off:
        noise = torch.randn(batch, n_off, dim, generator=generator, dtype=torch.float64)
        queries[:, :n_off] += noise
    log_density, score = mixture.log_prob_and_score(queries)
    return Batch(context.to(dtype), queries.to(dtype), log_density.to(dtype), score.to(dtype))
