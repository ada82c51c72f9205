"""How well a Gaussian-mixture fit can do on the score table's mixtures when the clustering is
given: true component labels, sample means and weights, covariances shrunk toward a pooled scale.

    python benchmarks/labelled_mixture_bound.py [--dim 10] [--sizes 256 1024] [--mixtures 16]

Per mixture of the score table (``particlescore.training.evaluate``, same seeds and queries), each
point is labelled with its most probable true component; component k gets weight n_k/n, its sample
mean, and the covariance ``(n_k S_k + ν c I)/(n_k + ν)`` (a conjugate-prior posterior mean with
prior scale ``c I``, ``c`` the point-weighted mean of ``tr S_k/d`` over the components). Prints the
relative score MSE (%) of that mixture for a grid of ν; its best row is a lower bound for any
mixture candidate that must find the clustering itself and shrinks toward an isotropic target.

Two columns estimate the covariances from the labelled groups without knowing the truth:
* **leave-one-out**: the mixture candidate's own estimator (``candidates.loo_covariances``: the
  scatter shrunk toward ``(tr S/d) I`` with the intensity that maximises the leave-one-out
  likelihood), so the gap between it and the fitted candidate is what the clustering costs;
* **nonlinear (LW 2020)**: Ledoit & Wolf's analytical nonlinear shrinkage (Ann. Statist. 48,
  2020), which estimates the oracle spectrum below from the sample eigenvalues alone.
Groups with at most 2d points (too few for either) get the ν = 20 covariance in both.

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

from particlescore.candidates import _loo_shrunk_covariance
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


def analytical_nonlinear_shrinkage(S, n):
    """Ledoit & Wolf (2020), "Analytical nonlinear shrinkage of large-dimensional covariance
    matrices", Ann. Statist. 48(5), eq. (4.9)-(4.10) for p <= n: the sample covariance S (p,p) of
    n demeaned observations with each eigenvalue λᵢ replaced by
    ``λᵢ / ((π c λᵢ f̃(λᵢ))² + (1 − c − π c λᵢ Hf̃(λᵢ))²)``, c = p/n, f̃ the Epanechnikov-kernel
    density of the sample eigenvalues (local bandwidth λⱼ n^(−1/3)) and Hf̃ its Hilbert transform."""
    p = S.shape[0]
    lam, vec = np.linalg.eigh(S)
    lam = np.maximum(lam, 1e-12 * lam.max())
    c = p / n
    width = n ** (-1 / 3) * lam[None, :]                                     # (1, p) h_j
    x = (lam[:, None] - lam[None, :]) / width                                # (p, p)
    density = (3 / 4 / np.sqrt(5)) * np.mean(np.maximum(1 - x ** 2 / 5, 0) / width, 1)  # (p,)
    with np.errstate(divide="ignore", invalid="ignore"):
        hilbert = (-3 / 10 / np.pi) * x + (3 / 4 / np.sqrt(5) / np.pi) * (1 - x ** 2 / 5) * np.log(
            np.abs((np.sqrt(5) - x) / (np.sqrt(5) + x)))                     # (p, p)
    edge = np.isclose(np.abs(x), np.sqrt(5))
    hilbert[edge] = ((-3 / 10 / np.pi) * x)[edge]
    transform = np.mean(hilbert / width, 1)                                  # (p,)
    shrunk = lam / ((np.pi * c * lam * density) ** 2 + (1 - c - np.pi * c * lam * transform) ** 2)
    return (vec * shrunk) @ vec.T


def estimated_fit(x, labels, method):
    """The labelled groups of x (n,d) with covariances estimated from the group alone: ``"loo"``
    the candidate's leave-one-out linear shrinkage, ``"nonlinear"`` :func:`analytical_nonlinear_shrinkage`."""
    d = x.shape[1]
    fallback = labelled_fit(x, labels, 20)
    groups = [x[labels == k] for k in np.unique(labels)]
    covs = []
    for k, g in enumerate(groups):
        if len(g) <= 2 * d:
            covs.append(fallback.covariances[k].numpy())
            continue
        diff = g - g.mean(0)                                                 # (n_k, d)
        scatter = diff.T @ diff / len(g)                                     # (d, d)
        if method == "nonlinear":
            covs.append(analytical_nonlinear_shrinkage(scatter * len(g) / (len(g) - 1), len(g) - 1))
            continue
        diff_t = torch.from_numpy(diff)[None, None]                          # (1, 1, n_k, d)
        target = np.trace(scatter) / d * np.eye(d)
        covs.append(_loo_shrunk_covariance(diff_t, torch.ones(1, 1, len(g), dtype=diff_t.dtype),
                                           torch.from_numpy(scatter)[None, None],
                                           torch.from_numpy(target)[None, None])[0, 0].numpy())
    return GaussianMixture(fallback.weights, fallback.means, torch.from_numpy(np.stack(covs)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--mixtures", type=int, default=16)
    args = parser.parse_args()
    print(f"## Labelled mixture fit, d = {args.dim}: relative score MSE % (mean ± s.e. over {args.mixtures} mixtures)\n")
    print("| n | " + " | ".join(f"ν = {v}" for v in PRIOR_STRENGTHS)
          + " | leave-one-out | nonlinear (LW 2020) | oracle spectrum | true Σ |")
    print("|---|" + "---|" * (len(PRIOR_STRENGTHS) + 4))
    for n in args.sizes:
        errors = np.zeros((args.mixtures, len(PRIOR_STRENGTHS) + 4))
        for i in range(args.mixtures):
            context, queries, _, score = evaluation_problem(args.dim, n, i)
            truth = evaluation_mixture(args.dim, i)
            labels = most_probable_component(truth, context)
            context = context.numpy()
            fits = [labelled_fit(context, labels, nu) for nu in PRIOR_STRENGTHS]
            fits += [estimated_fit(context, labels, method) for method in ("loo", "nonlinear")]
            fits += [oracle_fit(context, labels, truth, spectrum_only) for spectrum_only in (True, False)]
            for j, fit in enumerate(fits):
                est = fit.score(queries)
                errors[i, j] = 100 * float(((est - score) ** 2).sum() / (score ** 2).sum())
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in zip(errors.mean(0), errors.std(0, ddof=1) / np.sqrt(args.mixtures))]
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
