"""How well a Gaussian-mixture fit can do on the score table's mixtures when the clustering is
given: true component labels, sample means and weights, covariances shrunk toward a pooled scale.

    python benchmarks/labelled_mixture_bound.py [--dim 10] [--sizes 256 1024] [--mixtures 16]

Per mixture of the score table (``particlescore.training.evaluate``, same seeds and queries), each
point is labelled with its most probable true component; component k gets weight n_k/n, its sample
mean, and the covariance ``(n_k S_k + ν c I)/(n_k + ν)`` (a conjugate-prior posterior mean with
prior scale ``c I``, ``c`` the point-weighted mean of ``tr S_k/d`` over the components). Prints the
relative score MSE (%) of that mixture for a grid of ν; its best row is a lower bound for any
mixture candidate that must find the clustering itself and shrinks toward an isotropic target.
"""
import argparse
import math

import numpy as np
import torch

from particlescore.distributions import GaussianMixture
from particlescore.training.evaluate import evaluation_problem, evaluation_mixture

PRIOR_STRENGTHS = (5, 10, 20, 40, 80, 160)


def most_probable_component(mixture, x):
    """Index of the component with the largest ``w_k N(x; μ_k, Σ_k)`` for each point of x (n,d)."""
    active = torch.nonzero(mixture.weights[0] > 0)[:, 0]
    log_p = torch.stack([math.log(float(mixture.weights[0, k])) + GaussianMixture(
        torch.ones(1, dtype=x.dtype), mixture.means[0, k:k + 1], mixture.covariances[0, k:k + 1]).log_prob(x)
        for k in active])                                                    # (K, n)
    return log_p.argmax(0).numpy()


def labelled_fit(x, labels, prior_strength):
    """The mixture of the labelled groups of x (n,d): weights, means and shrunk covariances."""
    d = x.shape[1]
    groups = [x[labels == k] for k in np.unique(labels)]
    scatters = [np.cov(g.T, bias=True).reshape(d, d) if len(g) > 1 else np.zeros((d, d)) for g in groups]
    scale = sum(len(g) * np.trace(S) / d for g, S in zip(groups, scatters)) / len(x)
    covs = np.stack([(len(g) * S + prior_strength * scale * np.eye(d)) / (len(g) + prior_strength)
                     for g, S in zip(groups, scatters)])
    weights = np.array([len(g) / len(x) for g in groups])
    return GaussianMixture(torch.from_numpy(weights), torch.from_numpy(np.stack([g.mean(0) for g in groups])),
                           torch.from_numpy(covs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--mixtures", type=int, default=16)
    args = parser.parse_args()
    print(f"## Labelled mixture fit, d = {args.dim}: relative score MSE % (mean ± s.e. over {args.mixtures} mixtures)\n")
    print("| n | " + " | ".join(f"ν = {v}" for v in PRIOR_STRENGTHS) + " |")
    print("|---|" + "---|" * len(PRIOR_STRENGTHS))
    for n in args.sizes:
        errors = np.zeros((args.mixtures, len(PRIOR_STRENGTHS)))
        for i in range(args.mixtures):
            context, queries, _, score = evaluation_problem(args.dim, n, i)
            labels = most_probable_component(evaluation_mixture(args.dim, i), context)
            context = context.numpy()
            for j, nu in enumerate(PRIOR_STRENGTHS):
                est = labelled_fit(context, labels, nu).score(queries)
                errors[i, j] = 100 * float(((est - score) ** 2).sum() / (score ** 2).sum())
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in zip(errors.mean(0), errors.std(0, ddof=1) / np.sqrt(args.mixtures))]
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
