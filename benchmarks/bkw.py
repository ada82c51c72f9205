"""BKW exact solution of the Maxwell-molecule Landau equation: score error over time per estimator.

    python benchmarks/bkw.py [--dims 2 3] [--n 500] [--dt 0.01] [--duration 5] [--seed 0]
        [--estimators discoformer-0 discoformer-warm discoformer-tta discoformer-tta-holdout kde blob sbtm exact]
        [--out-dir benchmarks/results]

Problem (docs/equations.md, BKW solution): ``BKWProblem(d)`` with ``B = 1/24``, started at
``t0 = log((d+2)/2)/(2B(d−1))`` from exact samples of ``f(t0)`` and run to ``t0 + duration``
with the solver's default integrator (Heun). The exact score is known at every time, so the
solver records the relative score error ``Σ_i‖ŝ_i − s(t, v_i)‖² / Σ_i‖s(t, v_i)‖²`` at the
particles at each saved time (``score_error``). All estimators start from the same particles
(same ``--seed``).

Estimators: DiScoFormer cold without adaptation, warm-started without adaptation
(``discoformer-warm``), and warm-started with 2 adaptation steps per call, plain or with the
held-out check (skipped with a printed note when no weights are shipped for a dimension); Scott
KDE, the blob method, SBTM fitted first to the exact score at ``t0``, and Exact (the exact score
itself: a sanity row whose error must be 0).

Reported per (d, estimator): time-averaged (trapezoid over the saved times) and final relative
score error in %, the error at ``t0``, the max covariance error against the exact covariance
``I``, the relative energy drift and the wall time per step. Writes ``bkw.md``, ``bkw.csv``,
``bkw_score_error.csv`` (error curves) and ``bkw.png`` (error vs time, one panel per d).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

import numpy as np

from particlescore.problems import BKWProblem
from particlescore.solver import simulate

from _common import (LABELS, add_run_arguments, fmt, make_estimator, save_every_for, set_threads, step_time,
                     warm_up, write_csv)


def time_average(times: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid average of ``values`` over ``times`` (finite entries only)."""
    ok = np.isfinite(values)
    t, v = times[ok], values[ok]
    if len(t) < 2:
        return float(v[0]) if len(v) else math.nan
    return float(np.sum(0.5 * (v[1:] + v[:-1]) * np.diff(t)) / (t[-1] - t[0]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--duration", type=float, default=5.0, help="time run after t0 (t_end = t0 + duration)")
    parser.add_argument("--estimators", nargs="+", choices=list(LABELS),
                        default=["discoformer-0", "discoformer-tta", "kde", "blob", "sbtm", "exact"])
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    rows, curves, notes = [], {}, []
    for d in args.dims:
        problem = BKWProblem(d)
        t_end = problem.t0 + args.duration
        n_steps = int(round(args.duration / args.dt))
        warm_up(problem)
        for key in args.estimators:
            est, why = make_estimator(key, d, problem, args.seed, network=args.network, weights_dir=args.weights_dir)
            if est is None:
                note = f"d={d} {LABELS[key]}: {why}"
                print(note, flush=True)
                notes.append(note)
                continue
            tic = time.perf_counter()
            try:
                sol = simulate(problem, est, n=args.n, dt=args.dt, t_end=t_end,
                               save_every=save_every_for(n_steps, args.save_points), seed=args.seed,
                               out=None, progress=False)
            except Exception as err:  # keep the other rows; say what broke
                traceback.print_exc()
                note = f"d={d} {LABELS[key]}: failed: {type(err).__name__}: {err}"
                print(note, flush=True)
                notes.append(note)
                continue
            wall = time.perf_counter() - tic
            err = sol.diagnostics["score_error"]                               # (T,) fraction
            cov = sol.diagnostics["covariance"]
            energy = sol.diagnostics["energy"]
            row = {"d": d, "key": key, "estimator": LABELS[key], "t0": problem.t0, "t_end": float(sol.times[-1]),
                   "score_err_avg_pct": 100.0 * time_average(sol.times, err),
                   "score_err_final_pct": 100.0 * float(err[-1]),
                   "score_err_t0_pct": 100.0 * float(err[0]),
                   "cov_err_max": float(np.max(np.abs(cov - np.eye(d)[None]))),
                   "energy_drift_rel": float(np.max(np.abs(energy - energy[0])) / abs(energy[0])),
                   "step_s": step_time(sol), "steps": int(sol.steps[-1]), "run_s": wall}
            rows.append(row)
            curves[(d, key)] = (sol.times - problem.t0, 100.0 * err)
            print(f"d={d} {LABELS[key]:<26} score err avg={row['score_err_avg_pct']:.3f}% "
                  f"final={row['score_err_final_pct']:.3f}% t0={row['score_err_t0_pct']:.3f}% "
                  f"cov={row['cov_err_max']:.2e} E={row['energy_drift_rel']:.1e} "
                  f"step={row['step_s'] * 1e3:.1f} ms run={wall:.1f} s", flush=True)

    table = markdown(rows, args)
    if notes:
        table += ["", "Notes:", ""] + [f"* {n}" for n in notes]
    (args.out_dir / "bkw.md").write_text("\n".join(table) + "\n")
    write_csv(args.out_dir / "bkw.csv", rows, CSV_KEYS)
    lines = ["d,estimator,t_minus_t0,score_error_pct"]
    for (d, key), (t, e) in curves.items():
        lines += [f"{d},{key},{ti:.6g},{ei:.8g}" for ti, ei in zip(t, e)]
    (args.out_dir / "bkw_score_error.csv").write_text("\n".join(lines) + "\n")
    if curves:
        plot(args.out_dir / "bkw.png", curves, args.dims)
    print("\n".join(table))
    return rows


def markdown(rows, args):
    lines = [f"## BKW solution (Landau, Maxwell molecules, B = 1/24): n = {args.n}, dt = {args.dt}, "
             f"t ∈ [t0, t0 + {args.duration}], seed = {args.seed}, Heun; DiScoFormer weights: " + (f"the files in {args.weights_dir}" if args.weights_dir else f"network = {args.network} (DiScoFormer.pretrained)"), "",
             "Relative score error Σ‖ŝ−s‖²/Σ‖s‖² (%) at the particles against the exact BKW score; "
             "time average = trapezoid over the saved times. Covariance error: max_t,kl |Σ̂kl − δkl| "
             "(includes the initial sampling error). Energy drift max_t|E(t)−E(0)|/E(0).", "",
             "| d | t0 | estimator | score err, time avg (%) | score err, final (%) | score err at t0 (%) "
             "| max cov err | energy drift (rel) | wall / step (ms) | run (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['t0']:.3f} | {r['estimator']} | {fmt(r['score_err_avg_pct'], '.3f')} "
                     f"| {fmt(r['score_err_final_pct'], '.3f')} | {fmt(r['score_err_t0_pct'], '.3f')} "
                     f"| {fmt(r['cov_err_max'], '.2e')} | {fmt(r['energy_drift_rel'], '.1e')} "
                     f"| {fmt(r['step_s'] * 1e3, '.1f')} | {fmt(r['run_s'], '.1f')} |")
    return lines


CSV_KEYS = ["d", "key", "estimator", "t0", "t_end", "score_err_avg_pct", "score_err_final_pct", "score_err_t0_pct",
            "cov_err_max", "energy_drift_rel", "step_s", "steps", "run_s"]


def plot(path, curves, dims):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [d for d in dims if any(k[0] == d for k in curves)]
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4.2), squeeze=False)
    for ax, d in zip(axes[0], dims):
        hidden = []
        for (dd, key), (t, e) in curves.items():
            if dd != d:
                continue
            if not np.any(e > 0):          # the Exact row (0 error) has no place on a log axis
                hidden.append(f"{LABELS[key]}: 0")
                continue
            ax.plot(t, e, marker=".", ms=3, lw=1.2, label=LABELS[key])
        ax.set_yscale("log")
        ax.set_title(f"d = {d}" + (f"  ({'; '.join(hidden)})" if hidden else ""))
        ax.set_xlabel("t − t0")
        ax.set_ylabel("relative score error (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("BKW solution: relative score error at the particles")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
