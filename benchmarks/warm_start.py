"""Warm-started vs cold DiScoFormer in the time loop, against KDE and SBTM (issue 8 item 1 and
the n = 500, d = 3 Heun bar).

    OMP_NUM_THREADS=1 python benchmarks/warm_start.py [--n 500] [--dt 0.01] [--t-end 4.0]

Anisotropic Maxwell relaxation in d = 3 (exact Σ(t)), Heun, seed 0, all estimators in this one
process: DiScoFormer warm-started (``warm_start=True``), DiScoFormer cold (every call a fresh
split/BIC search), Scott KDE, and SBTM (fitted first to the exact initial score). Prints the
covariance errors max_t|ΔΣ11|, final |ΔΣ11|, max_t,kl|ΔΣkl| against the exact Σ(t), the wall
time per step, and the per-step time ratios against KDE and SBTM. Writes ``warm_start.md``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.problems import AnisotropicMaxwell
from particlescore.sbtm import SBTM
from particlescore.solver import simulate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dt", type=float, default=0.01)
    parser.add_argument("--t-end", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "warm_start.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problem = AnisotropicMaxwell(3)
    initial = problem.initial_distribution()
    methods = {
        "DiScoFormer warm": lambda: ps.DiScoFormer.pretrained(dim=3, warm_start=True),
        "DiScoFormer cold": lambda: ps.DiScoFormer.pretrained(dim=3),
        "Scott KDE": lambda: ps.KDE("scott"),
        "SBTM": lambda: SBTM(initial_score=lambda x: initial.score(x), seed=0),
    }
    problem.physics(0.0, torch.randn(16, 3, dtype=torch.float64), torch.zeros(16, 3, dtype=torch.float64))  # numba
    steps = round(args.t_end / args.dt)
    rows = {}
    for label, make in methods.items():
        est = make()
        t0 = time.perf_counter()
        sol = simulate(problem, est, n=args.n, dt=args.dt, t_end=args.t_end, save_every=10, seed=0, progress=False)
        per_step = (time.perf_counter() - t0) / steps
        cov = np.asarray(sol.diagnostics["covariance"])
        exact = np.stack([problem.exact_covariance(float(t)).numpy() for t in sol.times])
        d11 = np.abs(cov[:, 0, 0] - exact[:, 0, 0])
        rows[label] = (d11.max(), d11[-1], np.abs(cov - exact).max(), per_step)
        print(f"{label:18s} max|dS11| {d11.max():.3e} final {d11[-1]:.3e} max_kl {rows[label][2]:.3e} "
              f"{1e3 * per_step:8.1f} ms/step", flush=True)
    kde, sbtm = rows["Scott KDE"][3], rows["SBTM"][3]
    lines = [f"## Warm-started DiScoFormer: anisotropic Maxwell d = 3, n = {args.n}, Heun, dt = {args.dt}, "
             f"t ∈ [0, {args.t_end}], seed 0", "",
             f"`python benchmarks/warm_start.py --n {args.n} --dt {args.dt} --t-end {args.t_end}` (one process, "
             f"one thread; the machine's other load is not controlled: compare ratios, not absolute times).", "",
             "| estimator | max_t \\|ΔΣ11\\| | final \\|ΔΣ11\\| | max_t,kl \\|ΔΣkl\\| | ms / step | × KDE | SBTM / this |",
             "|---|---|---|---|---|---|---|"]
    for label, (m11, f11, mkl, step) in rows.items():
        lines.append(f"| {label} | {m11:.3e} | {f11:.3e} | {mkl:.3e} | {1e3 * step:.1f} | {step / kde:.1f} | "
                     f"{sbtm / step:.2f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
