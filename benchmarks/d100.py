"""The paper's d = 100 experiment (DiScoFormer, arXiv 2511.05924): 2-component Gaussian mixtures
of the training family (means U[−3, 3]^d, variances U[0.2, 1]^d, random rotations), n = 2048
context points, queries from the mixture. Reported there: score MSE 0.167 (best fixed-bandwidth
KDE 1.090) and log-density MSE 20.8 (KDE 781). Issue 9's bar: score MSE ≤ 0.167 and log-density
MSE ≤ 20.8, with the best-bandwidth KDE measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/d100.py [--dim 100] [--n 2048] [--m 512] [--draws 8] [--weights FILE]
                                                [--out benchmarks/results/d100.md]

Metrics per draw, then mean ± standard error over the draws: score MSE ``mean_{i,j}(ŝ_ij − s_ij)²``
over queries and coordinates (the scale on which the paper's KDE gets 1.09: ours measures
1.0–1.05 per draw), relative score MSE ``Σ‖ŝ − s‖²/Σ‖s‖²`` (%), log-density MSE
``mean_i (log f̂_i − log f_i)²``. Methods: DiScoFormer (the shipped any-d network, no
adaptation), its mixture candidate alone (tied/unbiased fit, leave-one-out covariances, the
network's gates removed), the same fit without the tied chain, unbiased precisions and
leave-one-out covariances (the per-d networks' fit), scikit-learn ``GaussianMixture`` (K = 1…4
by BIC, full covariances), and the best isotropic fixed-bandwidth KDE (searched per draw against the true score: an oracle, as in the paper). Draw i uses
``torch.Generator().manual_seed(5_000_000 + i)``.
"""
import argparse
import math
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from _common import gmm_score, sklearn_bic_mixture, write_report
from particlescore.affine import AffineFrame
from particlescore.candidates import fit_mixture, loo_covariances, mixture_candidate
from particlescore.discoformer import file_sha256, recorded_sha256
from particlescore.distributions import random_gmm
from particlescore.estimators import oracle_bandwidth

METHODS = ("DiScoFormer", "mixture candidate", "mixture (full only, biased)", "sklearn GMM (BIC)", "best-h KDE")


def mixture_only(x: torch.Tensor, y: torch.Tensor, config, *, tied: bool, unbiased: bool, loo: bool):
    """The mixture candidate alone, fitted as the network fits it, in original coordinates."""
    frame = AffineFrame.fit(x[None], config.whiten_ridge)
    ctx_w = frame.whiten(x[None])
    mix = fit_mixture(ctx_w, config.mixture_components, config.mixture_iters, config.mixture_shrink,
                      config.mixture_ridge, tied=tied, unbiased=unbiased)
    if loo:
        mix = loo_covariances(ctx_w, mix, frame.chol, config.mixture_ridge)
    score_w, log_w, _ = mixture_candidate(mix, frame.whiten(y[None]))
    log_f, score = frame.unwhiten(log_w, score_w)
    return log_f[0], score[0]


def sklearn_gmm(x: np.ndarray, y: np.ndarray, max_k: int):
    """Best-BIC full-covariance GaussianMixture; its log-density and closed-form score at y, and K."""
    best, _ = sklearn_bic_mixture(x, max_k)
    return best.score_samples(y), gmm_score(best, y), best.n_components


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--m", type=int, default=512)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--max-k", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--weights", type=Path, default=None,
                        help="evaluate this any-d weights file instead of the shipped one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start, load_before = time.perf_counter(), os.getloadavg()
    if args.weights is None:
        est = ps.DiScoFormer.pretrained(args.dim, network="equivariant")
        weights = f"the any-d network, sha256 {recorded_sha256('equivariant')[:12]}"
    else:
        est = ps.DiScoFormer.from_file(args.weights, dim=args.dim)
        weights = f"{args.weights}, sha256 {file_sha256(args.weights)[:12]}"
    config = est.net.config
    rows = {k: {"score": [], "rel": [], "log": [], "sec": []} for k in METHODS}
    ks = []
    for i in range(args.draws):
        g = torch.Generator().manual_seed(5_000_000 + i)
        mixture = random_gmm(1, args.dim, generator=g, n_components=(2, 2), dtype=torch.float64)
        x, y = mixture.sample(args.n, generator=g)[0], mixture.sample(args.m, generator=g)[0]
        log_true, score_true = (t[0] for t in mixture.log_prob_and_score(y[None]))
        out = {}
        tic = time.perf_counter()
        out["DiScoFormer"] = est(x, y)
        out["DiScoFormer", "sec"] = time.perf_counter() - tic
        tic = time.perf_counter()
        out["mixture candidate"] = mixture_only(x, y, config, tied=config.mixture_tied, unbiased=config.mixture_unbiased,
                                                loo=config.mixture_loo_covariances)
        out["mixture candidate", "sec"] = time.perf_counter() - tic
        tic = time.perf_counter()
        out["mixture (full only, biased)"] = mixture_only(x, y, config, tied=False, unbiased=False, loo=False)
        out["mixture (full only, biased)", "sec"] = time.perf_counter() - tic
        tic = time.perf_counter()
        log_gm, score_gm, k = sklearn_gmm(x.numpy(), y.numpy(), args.max_k)
        out["sklearn GMM (BIC)"] = (torch.from_numpy(log_gm), torch.from_numpy(score_gm))
        out["sklearn GMM (BIC)", "sec"] = time.perf_counter() - tic
        ks.append(k)
        tic = time.perf_counter()
        h, _, _ = oracle_bandwidth(x, y, score_true)
        out["best-h KDE"] = ps.KDE(h)(x, y)
        out["best-h KDE", "sec"] = time.perf_counter() - tic
        for name in METHODS:
            log_f, score = (t.double() for t in out[name])
            rows[name]["score"].append(float(((score - score_true) ** 2).mean()))
            rows[name]["rel"].append(100 * ps.relative_score_mse(score, score_true))
            rows[name]["log"].append(float(((log_f - log_true) ** 2).mean()))
            rows[name]["sec"].append(out[name, "sec"])
        print(f"draw {i}: " + "  ".join(f"{k}: {rows[k]['score'][-1]:.3f}/{rows[k]['log'][-1]:.1f}" for k in METHODS)
              + f"  [sklearn K {k}]", flush=True)

    def fmt(values, digits):
        a = np.asarray(values)
        return f"{a.mean():.{digits}f} ± {a.std(ddof=1) / math.sqrt(len(a)):.{digits}f}"

    text = [f"# d = {args.dim}: DiScoFormer against the paper's experiment", "",
            "Command: `OMP_NUM_THREADS=1 python benchmarks/d100.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`",
            "", f"Date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, Python "
            f"{platform.python_version()}, load {load_before[0]:.2f} at start; {time.perf_counter() - start:.0f} s wall; "
            f"weights: {weights}.", "",
            f"2-component mixtures, n = {args.n}, m = {args.m} queries, mean ± s.e. over {args.draws} draws "
            f"(protocol: `benchmarks/d100.py`). Paper (arXiv 2511.05924): score MSE 0.167 vs best-h KDE 1.090; "
            "log-density MSE 20.8 vs 781.", "",
            "| method | score MSE | relative score MSE (%) | log-density MSE | s per call |", "|---|---|---|---|---|"]
    for name in METHODS:
        r = rows[name]
        text.append(f"| {name} | {fmt(r['score'], 3)} | {fmt(r['rel'], 2)} | {fmt(r['log'], 1)} | {np.mean(r['sec']):.1f} |")
    score_ok = np.mean(rows["DiScoFormer"]["score"]) <= 0.167
    log_ok = np.mean(rows["DiScoFormer"]["log"]) <= 20.8
    text += ["", f"Bar (score MSE ≤ 0.167): {'met' if score_ok else '**not met**'}; "
             f"bar (log-density MSE ≤ 20.8): {'met' if log_ok else '**not met**'}. sklearn BIC picked K = {ks}."]
    write_report(text, args.out)


if __name__ == "__main__":
    main()
