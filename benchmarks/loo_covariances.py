"""Leave-one-out mixture covariances on and off, per shipped network (the switch is a config flag,
``mixture_loo_covariances``; ``particlescore.candidates.loo_covariances``).

    OMP_NUM_THREADS=1 python benchmarks/loo_covariances.py [--dims 1 2 3 10] [--sizes 256 1024 4096 16384]
                                                          [--mixtures 16] [--network per-dim|equivariant]

Relative score MSE (%) and log-density MSE of the same weights with the flag off and on, on the
score table's held-out random mixtures (``particlescore.training.evaluate``, same seeds, so the
column for the shipped setting reproduces ``score_table.py``). Writes a markdown table to stdout
and to ``--out``.
"""
import argparse
import dataclasses
import time
from pathlib import Path

import torch

import particlescore as ps
from particlescore.training.evaluate import evaluate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="*", default=[1, 2, 3, 10])
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 1024, 4096, 16384])
    parser.add_argument("--mixtures", type=int, default=16)
    parser.add_argument("--network", choices=("per-dim", "equivariant"), default="per-dim")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loo_covariances.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [f"## Leave-one-out mixture covariances off / on ({args.network} weights, {args.mixtures} mixtures per cell)",
             "", "| d | n | score % off | score % on | log-MSE off | log-MSE on | shipped |", "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for d in args.dims:
        for n in args.sizes:
            runs = {}
            for flag in (False, True):
                est = ps.DiScoFormer.pretrained(d, network=args.network)
                shipped = est.net.config.mixture_loo_covariances
                est.net.config = dataclasses.replace(est.net.config, mixture_loo_covariances=flag)
                runs[flag] = est
            tic = time.perf_counter()
            r = evaluate({"off": runs[False], "on": runs[True]}, d, n, args.mixtures, oracle=False)
            lines.append(f"| {d} | {n} | {r['off']['score_rel_mse_pct']:.2f} | {r['on']['score_rel_mse_pct']:.2f} | "
                         f"{r['off']['log_density_mse']:.4g} | {r['on']['log_density_mse']:.4g} | {'on' if shipped else 'off'} |")
            print(lines[-1], f"  ({time.perf_counter() - tic:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
