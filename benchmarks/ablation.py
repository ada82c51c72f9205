"""Ablation of the shipped DiScoFormer against its own candidates, scikit-learn's GaussianMixture
with BIC, and Scott KDE, on the training family and on out-of-family shapes (issue 9, item 5).

    python benchmarks/ablation.py [--dims 1 2 3 10] [--n 1024] [--m 512] [--draws 6]
                                  [--network per-dim|equivariant] [--out benchmarks/results/ablation.md]

For every shipped d and every shape, ``--draws`` seeded draws of n context points and m queries
from the same distribution; relative score MSE (%) ``Σ‖ŝ − s‖² / Σ‖s‖²`` at the queries, mean ±
standard error over the draws, for

* **DiScoFormer**: the shipped weights (``--network``: the per-dimension files, or the one
  any-d network), no test-time adaptation, cold mixture fit (the estimator's default call);
* **best candidate**: of the network's K candidates (KDE and local-Gaussian estimates at five
  bandwidths each, and the in-context EM mixture), each un-whitened to the original coordinates,
  the one with the lowest mean error *in that cell*, chosen in hindsight against the true score.
  That choice is an oracle selection over K = 11 estimators, so its mean is biased low;
* **mixture candidate**: the in-context EM mixture alone (the network's last candidate);
* **sklearn GMM**: ``sklearn.mixture.GaussianMixture(covariance_type="full", random_state=0)``
  for K = 1 … 10, the K with the lowest BIC; its score ``∇ log p(y) = −Σ_k r_k(y) Σ_k⁻¹(y − μ_k)``
  in closed form (checked against finite differences of ``score_samples`` on every cell's first draw);
* **Scott KDE**: ``particlescore.KDE("scott")`` (kernel covariance n^{-2/(d+4)} Σ̂).

Shapes: *GMM*: the held-out evaluation mixtures of the training family
(``particlescore.training.evaluate.evaluation_problem``, seeds ``EVAL_SEED_BASE + 1000·d + draw``,
a different mixture per draw); *Student-t* ν = 3, identity shape; *Laplace*, unit scale, product
form; *banana*: the twisted Gaussian of Haario, Saksman & Tamminen (1999), "moderately twisted"
(a = 10, b = 0.03): z ~ N(0, diag(a², 1, …, 1)), x₂ = z₂ + b(z₁² − a²), other coordinates
unchanged (needs d ≥ 2, so not in d = 1). Out-of-family draws use
``torch.Generator().manual_seed(4_000_000 + 10_000·shape + 100·d + draw)``.

Per cell, "never worse beyond the standard error": the paired difference DiScoFormer − comparator
over the same draws has mean ≤ its standard error. Table averages over d = 2, 3, 10 (all four
shapes): ratio of the averaged errors, and the mean of the per-cell ratios.
"""
import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from _common import discoformer_for, gmm_score, mean_se, sklearn_bic_mixture, write_report
from particlescore.discoformer import available_dims
from particlescore.distributions import Distribution, Laplace, StudentT
from particlescore.training.evaluate import evaluation_problem


class Banana(Distribution):
    """Twisted Gaussian (Haario, Saksman & Tamminen 1999): ``x₁ ~ N(0, a²)``,
    ``x₂ = z₂ + b(x₁² − a²)``, ``x_i = z_i`` (i ≥ 3), z standard normal; the map has unit
    Jacobian, so with ``u = x₂ − b(x₁² − a²)``:
    ``log f = log N(x₁; 0, a²) + log N(u; 0, 1) + Σ_{i≥3} log N(x_i; 0, 1)``,
    ``s₁ = −x₁/a² + 2b x₁ u``, ``s₂ = −u``, ``s_i = −x_i``."""

    def __init__(self, dim: int, a: float = 10.0, b: float = 0.03):
        if dim < 2:
            raise ValueError("the banana needs d >= 2")
        self.dim, self.a, self.b = dim, a, b

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = z.clone()
        x[:, 0] = self.a * z[:, 0]
        x[:, 1] = z[:, 1] + self.b * (x[:, 0] ** 2 - self.a ** 2)
        return x

    def score(self, x: torch.Tensor) -> torch.Tensor:
        u = x[:, 1] - self.b * (x[:, 0] ** 2 - self.a ** 2)
        s = -x.clone()
        s[:, 0] = -x[:, 0] / self.a ** 2 + 2 * self.b * x[:, 0] * u
        s[:, 1] = -u
        return s


SHAPES = ("GMM", "Student-t ν=3", "Laplace", "banana")
METHODS = ("DiScoFormer", "best candidate", "mixture candidate", "sklearn GMM", "Scott KDE")


def draw(shape: str, d: int, n: int, m: int, i: int):
    """(context (n,d), queries (m,d), true score at the queries (m,d)), float64."""
    if shape == "GMM":
        x, y, _, s = evaluation_problem(d, n, i, m)
        return x, y, s
    dist = {"Student-t ν=3": lambda: StudentT(d, 3.0), "Laplace": lambda: Laplace(d),
            "banana": lambda: Banana(d)}[shape]()
    g = torch.Generator().manual_seed(4_000_000 + 10_000 * SHAPES.index(shape) + 100 * d + i)
    x = dist.sample(n, generator=g)
    y = dist.sample(m, generator=g)
    return x, y, dist.score(y)


def candidate_names(config) -> list[str]:
    names = [f"KDE c={c:g}" for c in config.kde_bandwidths] + [f"local-Gaussian c={c:g}" for c in config.local_bandwidths]
    return names + (["mixture"] if config.mixture_components else []) + (["elliptical"] if config.elliptical_candidate else [])


def discoformer_and_candidates(est, x: torch.Tensor, y: torch.Tensor):
    """The estimator's score at y (m,d) and every candidate's score un-whitened (K,m,d), from one
    encoding of the context (the same steps as ``est(x, y)`` without adaptation)."""
    with torch.no_grad():
        enc = est._prepare(x, y.shape[0])
        qry = y.to(torch.float32)[None]                                        # (1, m, d)
        _, score = est.model.predict(enc, qry)                                 # (1, m, d)
        cand = est.model.candidates(enc, enc.frame.whiten(qry))
        K = cand.score.shape[-2]
        per = [enc.frame.unwhiten(cand.log_density[..., k], cand.score[..., k, :])[1][0] for k in range(K)]
    return score[0].double(), torch.stack(per).double()


def sklearn_gmm_score(x: np.ndarray, y: np.ndarray, max_k: int, check: bool):
    """Best-BIC full-covariance GaussianMixture (K = 1..max_k) fitted to x; its score at y, and K."""
    best, unconverged = sklearn_bic_mixture(x, max_k)
    score = gmm_score(best, y)                                                 # (m, d)
    if check:  # central differences of log p: O(h²) error, h = 1e-5 on O(1) data
        h = 1e-5
        fd = np.stack([(best.score_samples(y + h * e) - best.score_samples(y - h * e)) / (2 * h)
                       for e in np.eye(y.shape[1])], -1)
        err = np.abs(fd - score).max() / max(1.0, np.abs(score).max())
        if err > 1e-4:
            raise AssertionError(f"closed-form GMM score differs from finite differences by {err:.2e}")
    return score, best.n_components, unconverged


def run_cell(est, shape: str, d: int, n: int, m: int, draws: int, max_k: int):
    names = candidate_names(est.net.config)
    errs = {key: np.zeros(draws) for key in ("DiScoFormer", "sklearn GMM", "Scott KDE")}
    cand_errs = np.zeros((len(names), draws))
    ks, unconverged = [], 0
    for i in range(draws):
        x, y, truth = draw(shape, d, n, m, i)
        score, cands = discoformer_and_candidates(est, x, y)
        if est.adapt_steps:  # the head adapts inside the call; the candidates do not depend on it
            score = est(x, y)[1]
        elif i == 0:  # the split encode/predict path is the estimator's own call
            ref = est(x, y)[1]
            if not torch.allclose(ref, score, rtol=1e-5, atol=1e-6):
                raise AssertionError(f"DiScoFormer path mismatch: {(ref - score).abs().max():.2e}")
        errs["DiScoFormer"][i] = 100 * ps.relative_score_mse(score, truth)
        for k in range(len(names)):
            cand_errs[k, i] = 100 * ps.relative_score_mse(cands[k], truth)
        gm_score, k_bic, unc = sklearn_gmm_score(x.numpy(), y.numpy(), max_k, check=(i == 0))
        ks.append(k_bic)
        unconverged += unc
        errs["sklearn GMM"][i] = 100 * ps.relative_score_mse(torch.from_numpy(gm_score), truth)
        errs["Scott KDE"][i] = 100 * ps.relative_score_mse(ps.KDE("scott")(x, y)[1], truth)
    best = int(np.argmin(cand_errs.mean(1)))
    errs["best candidate"] = cand_errs[best]
    errs["mixture candidate"] = cand_errs[names.index("mixture")]
    return {"errs": errs, "best_name": names[best], "bic_k": ks, "unconverged": unconverged}


def fmt(a: np.ndarray) -> str:
    mu, se = mean_se(a)
    return f"{mu:.2f} ± {se:.2f}"


def verdict(model: np.ndarray, other: np.ndarray) -> tuple[str, float, float]:
    """Paired difference model − other: 'pass' when its mean ≤ its standard error."""
    mu, se = mean_se(model - other)
    return ("pass" if mu <= se else "**FAIL**"), mu, se


def report(results: dict, args, header: list[str]) -> list[str]:
    out = list(header)
    out += ["## README table: relative score MSE (%), n = {}, m = {} queries from the distribution, "
            "mean ± s.e. over {} draws".format(args.n, args.m, args.draws), "",
            "| d | shape | DiScoFormer | best candidate (hindsight) | sklearn GMM (BIC) | Scott KDE |",
            "|---|---|---|---|---|---|"]
    for (d, shape), r in results.items():
        e = r["errs"]
        out.append(f"| {d} | {shape} | " + " | ".join(fmt(e[k]) for k in ("DiScoFormer", "best candidate", "sklearn GMM",
                                                                           "Scott KDE")) + " |")
    out += ["", "## Full table (relative score MSE %, mean ± s.e.)", "",
            "| d | shape | DiScoFormer | best candidate | which | mixture candidate | sklearn GMM | BIC K (per draw) | Scott KDE |",
            "|---|---|---|---|---|---|---|---|---|"]
    for (d, shape), r in results.items():
        e = r["errs"]
        out.append(f"| {d} | {shape} | {fmt(e['DiScoFormer'])} | {fmt(e['best candidate'])} | {r['best_name']} | "
                   f"{fmt(e['mixture candidate'])} | {fmt(e['sklearn GMM'])} | {','.join(map(str, r['bic_k']))} | "
                   f"{fmt(e['Scott KDE'])} |")
    out += ["", "## Bar 1: never worse beyond the standard error (paired difference DiScoFormer − comparator, "
            "percentage points, mean ± s.e.; FAIL when mean > s.e.)", "",
            "| d | shape | vs best candidate | | vs sklearn GMM | | vs mixture candidate | |",
            "|---|---|---|---|---|---|---|---|"]
    fails = {"best candidate": 0, "sklearn GMM": 0, "mixture candidate": 0}
    for (d, shape), r in results.items():
        cells = []
        for key in ("best candidate", "sklearn GMM", "mixture candidate"):
            v, mu, se = verdict(r["errs"]["DiScoFormer"], r["errs"][key])
            fails[key] += v != "pass"
            cells += [f"{mu:+.2f} ± {se:.2f}", v]
        out.append(f"| {d} | {shape} | " + " | ".join(cells) + " |")
    out += ["", f"Cells failing: vs best candidate {fails['best candidate']} / {len(results)}, "
            f"vs sklearn GMM {fails['sklearn GMM']} / {len(results)} "
            f"(vs the mixture candidate alone, for reference: {fails['mixture candidate']} / {len(results)})."]
    table = [(d, s) for (d, s) in results if d in (2, 3, 10)]
    if table:
        out += ["", f"## Bar 2: table averages over d = 2, 3, 10 × {{GMM, Student-t, Laplace, banana}} "
                f"({len(table)} cells; bar: DiScoFormer ≥ 15 % lower, ratio ≤ 0.85)", "",
                "| comparator | mean error DiScoFormer | mean error comparator | ratio of means | mean of per-cell ratios | bar (≤ 0.85) |",
                "|---|---|---|---|---|---|"]
        model = np.array([results[c]["errs"]["DiScoFormer"].mean() for c in table])
        for key in ("best candidate", "sklearn GMM", "mixture candidate", "Scott KDE"):
            other = np.array([results[c]["errs"][key].mean() for c in table])
            ratio, per_cell = model.mean() / other.mean(), float(np.mean(model / other))
            met = "met" if max(ratio, per_cell) <= 0.85 else "**not met**"
            out.append(f"| {key} | {model.mean():.2f} | {other.mean():.2f} | {ratio:.3f} | {per_cell:.3f} | {met} |")
    unc = sum(r["unconverged"] for r in results.values())
    out += ["", f"sklearn fits that stopped at max_iter = 100 without converging: {unc} of "
            f"{sum(len(r['bic_k']) for r in results.values()) * args.max_k}."]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="*", default=list(available_dims()))
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--m", type=int, default=512)
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--max-k", type=int, default=10, help="largest sklearn mixture tried by BIC")
    parser.add_argument("--network", choices=("per-dim", "per-dim-gmm", "equivariant"), default="per-dim")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="evaluate discoformer_d{d}.safetensors from this folder instead of the shipped files")
    parser.add_argument("--adapt-steps", type=int, default=0, help="test-time adaptation steps per call")
    parser.add_argument("--adapt-holdout", type=int, default=0, help="held-out particles choosing the head")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    load_before = os.getloadavg()
    results, weights = {}, []
    for d in args.dims:
        est = discoformer_for(d, args.network, args.weights_dir, adapt_steps=args.adapt_steps,
                              adapt_holdout=args.adapt_holdout)
        weights.append(f"d={d} {est.source} (sha256 {est.sha256[:12]})")
        for shape in args.shapes:
            if shape == "banana" and d < 2:
                continue
            t0 = time.perf_counter()
            r = results[(d, shape)] = run_cell(est, shape, d, args.n, args.m, args.draws, args.max_k)
            e = r["errs"]
            print(f"d={d:2d} {shape:14s} " + "  ".join(f"{k}: {fmt(e[k])}" for k in METHODS)
                  + f"  [best = {r['best_name']}, BIC K {r['bic_k']}]  ({time.perf_counter() - t0:.0f} s)", flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import sklearn
    header = ["# Ablation: DiScoFormer vs its best candidate, scikit-learn GaussianMixture (BIC) and Scott KDE", "",
              "Command: `OMP_NUM_THREADS=1 python benchmarks/ablation.py "
              + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`", "",
              f"Date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, torch {torch.__version__}, "
              f"scikit-learn {sklearn.__version__}, Python {platform.python_version()}; load average "
              f"{load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end (2 cores); "
              f"{time.perf_counter() - start:.0f} s wall.", "",
              "Weights: " + ", ".join(weights)
              + (f" (files in {args.weights_dir})." if args.weights_dir is not None else "."), "",
              "Protocol: see the docstring of `benchmarks/ablation.py`. The *best candidate* is chosen per cell "
              "in hindsight, against the true score, among the network's 11 candidates (oracle selection: its mean "
              "is biased low). DiScoFormer runs with its defaults" + (
                  f" except {args.adapt_steps} test-time adaptation steps per call (cold, not warm-started), "
                  f"held-out check on {args.adapt_holdout} particles." if args.adapt_steps else
                  " (no test-time adaptation)."), ""]
    write_report(report(results, args, header), args.out)


if __name__ == "__main__":
    main()
