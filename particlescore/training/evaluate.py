"""Accuracy of score estimators on random Gaussian mixtures (the paper's Table 2 protocol).

Seeds for evaluation mixtures start at ``EVAL_SEED_BASE``, disjoint from training seeds
(training seeds are ``seed·1_000_003 + rank·7_919 + step`` with small seeds and steps).
"""
from __future__ import annotations

import torch

from particlescore.distributions import random_gmm
from particlescore.estimators import KDE, oracle_bandwidth
from particlescore.metrics import log_density_mse, relative_score_mse

EVAL_SEED_BASE = 2_000_000_000


def _evaluation_draw(dim: int, index: int):
    g = torch.Generator().manual_seed(EVAL_SEED_BASE + 1000 * dim + index)
    return random_gmm(1, dim, generator=g, dtype=torch.float64), g


def evaluation_mixture(dim: int, index: int):
    """Mixture ``index`` of the evaluation set (a batch of one ``GaussianMixture``, float64)."""
    return _evaluation_draw(dim, index)[0]


def evaluation_problem(dim: int, n: int, index: int, n_queries: int = 512):
    """Mixture ``index`` of the evaluation set: (context (n,d), queries (m,d), log f, score), float64."""
    mixture, g = _evaluation_draw(dim, index)
    context = mixture.sample(n, generator=g)[0]
    queries = mixture.sample(n_queries, generator=g)[0]
    log_f, score = mixture.log_prob_and_score(queries[None])
    return context, queries, log_f[0], score[0]


def evaluate(estimators: dict, dim: int, n: int, n_mixtures: int, *, oracle: bool = True) -> dict:
    """Mean relative score MSE (%) and log-density MSE per estimator over ``n_mixtures`` mixtures.

    ``estimators`` maps a label to an estimator ``est(context, queries) -> (log f, score)``.
    With ``oracle=True`` the best fixed isotropic-h KDE (searched against the truth) is added.
    """
    totals = {name: [0.0, 0.0] for name in estimators}
    if oracle:
        totals["oracle-h KDE"] = [0.0, 0.0]
    for i in range(n_mixtures):
        context, queries, log_f, score = evaluation_problem(dim, n, i)
        for name, est in estimators.items():
            est_log, est_score = est(context, queries)
            totals[name][0] += 100 * relative_score_mse(est_score, score) / n_mixtures
            totals[name][1] += log_density_mse(est_log, log_f) / n_mixtures
        if oracle:
            h, _, _ = oracle_bandwidth(context, queries, score)
            est_log, est_score = KDE(h)(context, queries)
            totals["oracle-h KDE"][0] += 100 * relative_score_mse(est_score, score) / n_mixtures
            totals["oracle-h KDE"][1] += log_density_mse(est_log, log_f) / n_mixtures
    return {name: {"score_rel_mse_pct": v[0], "log_density_mse": v[1]} for name, v in totals.items()}
