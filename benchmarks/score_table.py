"""The paper's Table 2 for every shipped dimension, plus the out-of-family table (d = 2).

    python benchmarks/score_table.py [--dims 1 2 3 10] [--sizes 256 1024 4096 16384] [--mixtures 16]
                                     [--network per-dim|equivariant]

Relative score MSE (%) and log-density MSE of DiScoFormer vs Scott KDE and oracle-h KDE,
averaged over random mixtures with evaluation seeds disjoint from training
(``particlescore.training.evaluate.EVAL_SEED_BASE``), queries drawn from the mixture. Out of family:
Student-t (ν = 3, n = 256) and Laplace (n = 1024) in d = 2 with 0/2/4/8 adaptation steps.
Writes a markdown table to stdout and to ``--out``.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.discoformer import available_dims
from particlescore.distributions import Laplace, StudentT
from particlescore.training.evaluate import evaluate

from _common import discoformer_for


def score_table(dims, sizes, mixtures, network="per-dim", weights_dir=None):
    lines = ["| d | n | DiScoFormer score % | Scott KDE score % | oracle-h KDE score % | DiScoFormer log-MSE | Scott KDE log-MSE | oracle-h KDE log-MSE |",
             "|---|---|---|---|---|---|---|---|"]
    for d in dims:
        est = discoformer_for(d, network, weights_dir)
        for n in sizes:
            t0 = time.perf_counter()
            r = evaluate({"DiScoFormer": est, "Scott KDE": ps.KDE("scott")}, d, n, mixtures)
            row = [r[k]["score_rel_mse_pct"] for k in ("DiScoFormer", "Scott KDE", "oracle-h KDE")]
            row += [r[k]["log_density_mse"] for k in ("DiScoFormer", "Scott KDE", "oracle-h KDE")]
            lines.append(f"| {d} | {n} | " + " | ".join(f"{v:.2f}" for v in row[:3]) + " | "
                         + " | ".join(f"{v:.3g}" for v in row[3:]) + " |")
            print(lines[-1], f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return lines


def out_of_family(mixtures):
    lines = ["| distribution | n | Scott KDE | TTA 0 | TTA 2 | TTA 4 | TTA 8 |", "|---|---|---|---|---|---|---|"]
    cases = [("Student-t ν=3", StudentT(2, 3.0), 256), ("Laplace", Laplace(2), 1024)]
    # warm_start is off: every call adapts from the pretrained weights, so one estimator per k serves all draws
    adapted = {k: ps.DiScoFormer.pretrained(dim=2, adapt_steps=k, adapt_lr=1e-3) for k in (0, 2, 4, 8)}
    for name, dist, n in cases:
        errs = {key: [] for key in ("kde", 0, 2, 4, 8)}
        for seed in range(mixtures):
            g = torch.Generator().manual_seed(3_000_000 + seed)
            x, y = dist.sample(n, generator=g), dist.sample(512, generator=g)
            truth = dist.score(y)
            errs["kde"].append(ps.relative_score_mse(ps.KDE("scott")(x, y)[1], truth))
            for k, est in adapted.items():
                errs[k].append(ps.relative_score_mse(est(x, y)[1], truth))
        lines.append(f"| {name} | {n} | " + " | ".join(f"{np.mean(errs[k]):.4f}" for k in ("kde", 0, 2, 4, 8)) + " |")
        print(lines[-1], flush=True)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="*", default=list(available_dims()))
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 1024, 4096, 16384])
    parser.add_argument("--mixtures", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/score_table.md"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--no-out-of-family", action="store_true", help="skip the Student-t / Laplace table")
    parser.add_argument("--network", choices=("per-dim", "per-dim-gmm", "equivariant"), default="per-dim",
                        help="the per-dimension weights, or the one any-d network")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="evaluate discoformer_d{d}.safetensors from this folder instead of the shipped files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = ["## Relative score MSE (%) and log-density MSE on random Gaussian mixtures", ""]
    if args.network != "per-dim":
        text += [f"Weights: the {args.network} network.", ""]
    if args.weights_dir is not None:
        text += [f"Weights: the files in {args.weights_dir}.", ""]
    text += score_table(args.dims, args.sizes, args.mixtures, args.network, args.weights_dir)
    if not args.no_out_of_family:
        text += ["", "## Out of family, d = 2 (relative score MSE, fraction)", ""]
        text += out_of_family(args.mixtures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
