"""Anisotropic Maxwell relaxation over several seeds: the shipped DiScoFormer against a candidate
weights file (and Scott KDE), paired seed by seed. Used to decide whether a fine-tuned file ships.

    OMP_NUM_THREADS=1 python benchmarks/maxwell_seeds.py --dim 2 --weights-dir runs/ft5_d2 [--seeds 6]

``AnisotropicMaxwell(d)`` (docs/equations.md), n = 500, Heun, dt = 0.01, t ∈ [0, 4], every
DiScoFormer warm-started (the solver's mode), no adaptation, no moment projection. Metric: max_t
|ΔΣ11| against the exact moment ODE started from the sample covariance Σ̂(0),
``Σ(t) = Σ_eq − (Σ_eq − Σ̂(0)) e^{−4dBt}``, ``Σ_eq = tr Σ̂(0)/d · I`` (energy is conserved), so the
initial sampling error does not count (as in ``landau_covariance.py``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.problems import AnisotropicMaxwell
from particlescore.solver import simulate


def max_sigma11_error(problem, sol) -> float:
    cov = np.asarray(sol.diagnostics["covariance"])                          # (T, d, d)
    d = cov.shape[-1]
    eq = np.trace(cov[0]) / d * np.eye(d)
    exact = np.stack([eq - (eq - cov[0]) * np.exp(-4.0 * d * problem.B * float(t)) for t in sol.times])
    return float(np.abs(cov[:, 0, 0] - exact[:, 0, 0]).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--weights-dir", type=Path, required=True, help="holds discoformer_d{dim}.safetensors")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problem = AnisotropicMaxwell(args.dim)
    candidate = args.weights_dir / f"discoformer_d{args.dim}.safetensors"
    makers = {"shipped": lambda: ps.DiScoFormer.pretrained(dim=args.dim, warm_start=True),
              "candidate": lambda: ps.DiScoFormer.from_file(candidate, dim=args.dim, warm_start=True),
              "Scott KDE": lambda: ps.KDE("scott")}
    rows = []
    print(f"max_t |ΔΣ11| from Σ̂(0), d = {args.dim}, n = {args.n}; candidate {candidate}")
    for seed in range(args.seeds):
        row = {}
        for label, make in makers.items():
            sol = simulate(problem, make(), n=args.n, dt=0.01, t_end=4.0, save_every=10, seed=seed, progress=False)
            row[label] = max_sigma11_error(problem, sol)
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(f"{k} {v:.3e}" for k, v in row.items()), flush=True)
    diff = np.array([r["candidate"] - r["shipped"] for r in rows])
    means = {k: np.mean([r[k] for r in rows]) for k in makers}
    print("mean: " + "  ".join(f"{k} {v:.3e}" for k, v in means.items()))
    print(f"candidate − shipped: {diff.mean():+.3e} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.1e} "
          f"(candidate worse in {int((diff > 0).sum())} of {len(diff)} seeds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
