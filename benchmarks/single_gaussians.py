"""Single Gaussians, the near-equilibrium ensembles of a collisional run: relative score MSE at
the particles of the shipped DiScoFormer against candidate weights files, paired draw by draw.

    OMP_NUM_THREADS=1 python benchmarks/single_gaussians.py --dim 2 FILE.safetensors [FILE ...]

Per n in (150, 312, 600), 48 draws of n points from N(0, AAᵀ), A = I + 0.5·G (G standard normal,
seed 900 000 + 100 n + i); the estimator's score at the particles against the exact −(AAᵀ)⁻¹x.
Prints the mean and the paired difference to the shipped file (mean ± standard error).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import particlescore as ps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--draws", type=int, default=48)
    parser.add_argument("files", nargs="*", help="candidate weights files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    d = args.dim
    ests = {"shipped": ps.DiScoFormer.pretrained(dim=d)}
    ests |= {f: ps.DiScoFormer.from_file(f, dim=d) for f in args.files}
    for n in (150, 312, 600):
        errs = {k: [] for k in ests}
        for i in range(args.draws):
            g = torch.Generator().manual_seed(900_000 + 100 * n + i)
            A = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5 + torch.eye(d, dtype=torch.float64)
            x = torch.randn(n, d, generator=g, dtype=torch.float64) @ A.T
            truth = -torch.linalg.solve(A @ A.T, x.T).T
            for k, est in ests.items():
                errs[k].append(100 * ps.relative_score_mse(est(x)[1], truth))
        base = np.array(errs["shipped"])
        cells = []
        for k, v in errs.items():
            diff = np.array(v) - base
            cells.append(f"{k}: {np.mean(v):.2f} % ({diff.mean():+.2f} ± {diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0:.2f})")
        print(f"n = {n}: " + "; ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
