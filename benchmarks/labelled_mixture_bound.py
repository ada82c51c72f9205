"""How well a Gaussian-mixture fit can do on the score table's mixtures when the clustering is
given: true component labels, sample means and weights, covariances shrunk toward a pooled scale.

    python benchmarks/labelled_mixture_bound.py [--dim 10] [--sizes 256 1024] [--mixtures 16]

Per mixture of the score table (``particlescore.training.evaluate``, same seeds and queries), each
point is labelled with its most probable true component; component k gets weight n_k/n, its sample
mean, and the covariance ``(n_k S_k + ν c I)/(n_k + ν)`` (a conjugate-prior posterior mean with
prior scale ``c I``, ``c`` the point-weighted mean of ``tr S_k/d`` over the components). Prints the
relative score MSE (%) of that mixture for a grid of ν; its best row is a lower bound for any
mixture candidate that must find the clustering itself and shrinks toward an isotropic target.

Two oracle columns bound every covariance estimate that is equivariant under rotations:
* **true Σ**: the components' true covariances, with the sample means and weights (what the means
  alone cost);
* **oracle spectrum**: each component's sample eigenvectors U with the true variance along each,
  ``Σ̂ = U diag(uᵢᵀΣuᵢ) Uᵀ``. For one Gaussian, a precision estimate ``P̂ = U D Uᵀ`` has expected
  score error ``E‖(P̂ − Σ⁻¹)(y − μ)‖² = tr((P̂ − Σ⁻¹)Σ(P̂ − Σ⁻¹))``, minimised over diagonal D by
  ``Dᵢ = 1/(uᵢᵀΣuᵢ)`` (Ledoit & Wolf's oracle, for this loss). With Haar-random component rotations
  (the training family) the posterior of Σ given the component's points is rotation-equivariant,
  so the Bayes estimate of the precision, and of the score ``−E[Σ⁻¹](y − x̄)``, is diagonal in U:
  no estimator that knows the labels but not Σ beats this column.
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


def oracle_fit(x, labels, truth, spectrum_only):
    """The labelled groups of x (n,d) with the true covariance of their component (``truth`` the
    mixture, groups labelled by its active components' positions), or, with ``spectrum_only``,
    the true variance along each sample eigenvector."""
    active = torch.nonzero(truth.weights[0] > 0)[:, 0].numpy()
    groups, covs = [], []
    for k in np.unique(labels):
        g = x[labels == k]
        true_cov = truth.covariances[0, active[k]].numpy()
        if spectrum_only:
            _, vec = np.linalg.eigh(np.cov(g.T, bias=True).reshape(x.shape[1], -1))
            true_cov = (vec * np.einsum("ji,jk,ki->i", vec, true_cov, vec)) @ vec.T
        groups.append(g)
        covs.append(true_cov)
    return GaussianMixture(torch.tensor([len(g) / len(x) for g in groups]), torch.from_numpy(np.stack([g.mean(0) for g in groups])),
                           torch.from_numpy(np.stack(covs)))


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
    print("| n | " + " | ".join(f"ν = {v}" for v in PRIOR_STRENGTHS) + " | oracle spectrum | true Σ |")
    print("|---|" + "---|" * (len(PRIOR_STRENGTHS) + 2))
    for n in args.sizes:
        errors = np.zeros((args.mixtures, len(PRIOR_STRENGTHS) + 2))
        for i in range(args.mixtures):
            context, queries, _, score = evaluation_problem(args.dim, n, i)
            truth = evaluation_mixture(args.dim, i)
            labels = most_probable_component(truth, context)
            context = context.numpy()
            fits = [labelled_fit(context, labels, nu) for nu in PRIOR_STRENGTHS]
            fits += [oracle_fit(context, labels, truth, spectrum_only) for spectrum_only in (True, False)]
            for j, fit in enumerate(fits):
                est = fit.score(queries)
                errors[i, j] = 100 * float(((est - score) ** 2).sum() / (score ** 2).sum())
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in zip(errors.mean(0), errors.std(0, ddof=1) / np.sqrt(args.mixtures))]
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
