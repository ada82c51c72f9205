"""Why DiScoFormer's Landau covariance drifts from the exact moment ODE, and the moment projection.

    OMP_NUM_THREADS=1 python benchmarks/moment_projection.py [--draws 6] [--t-end 4.0]

Part 1 (t = 0, anisotropic Maxwell, n = 500, ``--draws`` seeded draws of the initial law): the
rate dΣ11/dt of the particle system, divided by the exact moment ODE's rate
``4B(tr Σ̂ − dΣ̂11)`` at the particles' own Σ̂, for the exact score of the initial law,
DiScoFormer, Scott KDE, each with and without :func:`particlescore.stein.project_score`; and each
score's relative MSE against the exact score.
Part 2 (the time loop, Heun, dt = 0.01, seed 0): max_t|ΔΣ11| against the exact Σ(t) from Σ0,
max_t|ΔΣ11| and max_t,kl|ΔΣkl| against the exact curve from the particles' Σ̂(0), |Σ11(t_end) − 1| and
ms per step, for warm-started DiScoFormer with and without ``moment_projection``.
Writes ``results/moment_projection.md``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.problems import AnisotropicMaxwell
from particlescore.solver import simulate
from particlescore.stein import project_score


def rate_table(dim: int, draws: int, n: int) -> list[str]:
    problem = AnisotropicMaxwell(dim)
    initial = problem.initial_distribution()
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in range(draws):
        x = initial.sample(n, generator=torch.Generator().manual_seed(seed)).double()     # (n, d)
        centred = x - x.mean(0)
        cov = centred.T @ centred / n
        exact_rate = 4 * problem.B * (torch.trace(cov) - dim * cov[0, 0])
        true = initial.score(x)                                                            # (n, d)
        scores = {"exact score": true,
                  "DiScoFormer": torch.as_tensor(ps.DiScoFormer.pretrained(dim=dim)(x)[1]),
                  "Scott KDE": torch.as_tensor(ps.KDE()(x)[1])}
        for label, s in list(scores.items()):
            scores[label + " + projection"] = project_score(x, s)
        for label, s in scores.items():
            velocity = problem.physics(0.0, x, s)                                          # (n, d)
            rate = 2 * (velocity[:, 0] * centred[:, 0]).mean()
            mse = ((s - true) ** 2).sum(1).mean() / (true ** 2).sum(1).mean()
            rows.setdefault(label, []).append((float(rate / exact_rate), float(mse)))
    lines = [f"### d = {dim}: rate at t = 0, n = {n}, {draws} draws", "",
             "| score | rate / exact rate (mean ± sd) | relative score MSE vs exact score (mean) |", "|---|---|---|"]
    for label, values in rows.items():
        v = np.array(values)
        lines.append(f"| {label} | {v[:, 0].mean():.4f} ± {v[:, 0].std():.4f} | {100 * v[:, 1].mean():.2f} % |")
    return lines + [""]


def trajectory_table(dim: int, n: int, dt: float, t_end: float) -> list[str]:
    problem = AnisotropicMaxwell(dim)
    lines = [f"### d = {dim}: the time loop, n = {n}, Heun, dt = {dt}, t ∈ [0, {t_end}], seed 0", "",
             "| estimator | max_t \\|ΔΣ11\\| vs exact from Σ0 | max_t \\|ΔΣ11\\| vs exact from Σ̂(0) "
             "| max_t,kl \\|ΔΣkl\\| vs exact from Σ̂(0) | \\|Σ11(t_end) − 1\\| | ms / step |", "|---|---|---|---|---|---|"]
    for label, projection in (("DiScoFormer warm", False), ("DiScoFormer warm + moment projection", True)):
        est = ps.DiScoFormer.pretrained(dim=dim, warm_start=True, moment_projection=projection)
        start = time.perf_counter()
        sol = simulate(problem, est, n=n, dt=dt, t_end=t_end, save_every=10, seed=0, progress=False)
        per_step = (time.perf_counter() - start) / round(t_end / dt)
        cov = np.asarray(sol.diagnostics["covariance"])                                    # (T, d, d)
        times = np.asarray(sol.times)
        exact = np.stack([problem.exact_covariance(float(t)).numpy() for t in times])
        equilibrium = np.trace(cov[0]) / dim * np.eye(dim)
        from_hat = np.stack([equilibrium - (equilibrium - cov[0]) * np.exp(-4 * dim * problem.B * t) for t in times])
        lines.append(f"| {label} | {np.abs(cov[:, 0, 0] - exact[:, 0, 0]).max():.3e} | "
                     f"{np.abs(cov[:, 0, 0] - from_hat[:, 0, 0]).max():.3e} | {np.abs(cov - from_hat).max():.3e} | {abs(cov[-1, 0, 0] - 1.0):.3e} | {1e3 * per_step:.0f} |")
        print(lines[-1], flush=True)
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dt", type=float, default=0.01)
    parser.add_argument("--t-end", type=float, default=4.0)
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "moment_projection.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["## Moment projection: the Landau covariance rate at t = 0 and in the time loop (anisotropic Maxwell)", "",
             f"`python benchmarks/moment_projection.py --draws {args.draws} --n {args.n} --dt {args.dt} "
             f"--t-end {args.t_end} --dims {' '.join(map(str, args.dims))}` (one thread; load average at start "
             f"{os.getloadavg()[0]:.1f}: compare times within a table only).", ""]
    for dim in args.dims:
        lines += rate_table(dim, args.draws, args.n)
        print("\n".join(lines[-12:]), flush=True)
    for dim in args.dims:
        lines += trajectory_table(dim, args.n, args.dt, args.t_end)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
