"""Anisotropic Maxwell relaxation (homogeneous Landau, γ = 0): covariance trajectory per estimator.

    python benchmarks/landau_covariance.py [--dims 3 10] [--n 500] [--dt 0.01] [--t-end 4]
        [--seed 0] [--estimators discoformer-0 discoformer-tta discoformer-proj kde blob sbtm]
        [--out-dir benchmarks/results]

Problem (docs/equations.md, anisotropic Maxwell relaxation): initial particles ``N(0, diag(1.8, 0.2, 1, …))``, Maxwell-molecule Landau
with ``B = 1/24``; the exact covariance is ``Σ(t) = Σ∞ − (Σ∞ − Σ0) e^{−4dBt}``,
``Σ∞ = tr(Σ0)/d·I`` for any initial law, so the particle covariance can be checked at every
time. All estimators start from the same particles (same ``--seed``) and use the solver's
default integrator (Heun, two score evaluations per step).

Estimators: DiScoFormer with 0 test-time adaptation steps, DiScoFormer with 2 warm-started
adaptation steps per call, warm-started DiScoFormer with the moment projection
(docs/moment_projection.md), Scott KDE, the blob method, and SBTM fitted first to the exact
initial score ``−Σ0⁻¹v``. DiScoFormer uses ``DiScoFormer.pretrained(dim=d)``: the per-d weights
where they exist, else the any-d network; its rows are skipped (with a printed note) for a d it
does not serve (d > 100).

The particles' covariance at t = 0 differs from ``Σ0`` by sampling error (std of Σ̂11 ≈
``1.8·sqrt(2/n)`` ≈ 0.11 for n = 500), which often dominates ``|Σ11 − Σ11,exact|``. Because the
moment ODE ``dΣ/dt = 4B(tr Σ·I − d·Σ)`` is linear and holds for any initial law, the table also
gives the error against the exact curve started from the particles' own covariance ``Σ̂(0)``
(``Σ̂∞ = tr Σ̂(0)/d·I``): that isolates what the score estimator and time stepping add.

Reported per (d, estimator): ``max_t |Σ11(t) − Σ11,exact(t)|``, ``max_t max_kl |Σkl − Σkl,exact|``,
the same two against the sample-started exact curve,
momentum drift ``max_t ‖mean(t) − mean(0)‖∞`` (and ``max_t ‖mean(t)‖∞``), relative energy drift
``max_t |E(t) − E(0)|/E(0)``, mean wall time per step and the whole run's wall time.
Writes ``landau_covariance.md`` (table), ``landau_covariance.csv`` (same numbers),
``landau_covariance_sigma11.csv`` (Σ11(t) curves) and ``landau_covariance.png`` (one panel per d).
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

import numpy as np

from particlescore.problems import AnisotropicMaxwell
from particlescore.solver import simulate

from _common import (LABELS, add_run_arguments, fmt, make_estimator, save_every_for, set_threads, step_time,
                     warm_up, write_csv)

def sample_started_exact(problem, cov0: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Exact ``Σ(t)`` (T, d, d) of the Landau flow started from a law with covariance ``cov0``."""
    d = cov0.shape[0]
    inf = np.trace(cov0) / d * np.eye(d)
    decay = np.exp(-4.0 * d * problem.B * (np.asarray(times) - problem.t0))
    return inf[None] - (inf - cov0)[None] * decay[:, None, None]


def run_one(problem, estimator, *, n, dt, t_end, seed, save_points):
    """Run one simulation (no netCDF output); return the solution and the total wall time."""
    n_steps = int(round((t_end - problem.t0) / dt))
    tic = time.perf_counter()
    sol = simulate(problem, estimator, n=n, dt=dt, t_end=t_end, save_every=save_every_for(n_steps, save_points),
                   seed=seed, out=None, progress=False)
    return sol, time.perf_counter() - tic, n_steps


def conservation(sol) -> dict:
    mean = sol.diagnostics["mean"]                                          # (T, d)
    energy = sol.diagnostics["energy"]                                      # (T,)
    return {
        "momentum_drift": float(np.max(np.abs(mean - mean[0]))),
        "max_abs_mean": float(np.max(np.abs(mean))),
        "energy_drift_rel": float(np.max(np.abs(energy - energy[0])) / abs(energy[0])),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--t-end", type=float, default=4.0)
    parser.add_argument("--estimators", nargs="+", default=["discoformer-0", "discoformer-tta", "discoformer-proj", "kde", "blob", "sbtm"],
                        choices=[k for k in LABELS if k != "exact"])
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    rows, curves, notes = [], {}, []
    for d in args.dims:
        problem = AnisotropicMaxwell(d)
        warm_up(problem)
        for key in args.estimators:
            est, why = make_estimator(key, d, problem, args.seed, network=args.network, weights_dir=args.weights_dir)
            if est is None:
                note = f"d={d} {LABELS[key]}: {why}"
                print(note, flush=True)
                notes.append(note)
                continue
            try:
                sol, wall, n_steps = run_one(problem, est, n=args.n, dt=args.dt, t_end=args.t_end,
                                             seed=args.seed, save_points=args.save_points)
            except Exception as err:  # keep the other rows; say what broke
                traceback.print_exc()
                note = f"d={d} {LABELS[key]}: failed: {type(err).__name__}: {err}"
                print(note, flush=True)
                notes.append(note)
                continue
            cov = sol.diagnostics["covariance"]                                  # (T, d, d)
            exact = np.stack([problem.exact_covariance(t).numpy() for t in sol.times])
            err11 = np.abs(cov[:, 0, 0] - exact[:, 0, 0])
            from_sample = sample_started_exact(problem, cov[0], sol.times)
            err11_s = np.abs(cov[:, 0, 0] - from_sample[:, 0, 0])
            row = {"d": d, "estimator": LABELS[key], "key": key,
                   "sigma11_err_max": float(np.max(err11)),
                   "sigma11_err_final": float(err11[-1]),
                   "cov_err_max": float(np.max(np.abs(cov - exact))),
                   "sigma11_err_max_sample": float(np.max(err11_s)),
                   "cov_err_max_sample": float(np.max(np.abs(cov - from_sample))),
                   **conservation(sol),
                   "step_s": step_time(sol), "steps": n_steps, "run_s": wall,
                   "finite": bool(np.all(np.isfinite(cov)))}
            rows.append(row)
            curves[(d, key)] = (sol.times, cov[:, 0, 0], exact[:, 0, 0], from_sample[:, 0, 0])
            print(f"d={d:>2} {LABELS[key]:<26} max|ΔΣ11|={row['sigma11_err_max']:.3e} "
                  f"max|ΔΣ|={row['cov_err_max']:.3e} (from Σ̂(0): {row['sigma11_err_max_sample']:.3e}, "
                  f"{row['cov_err_max_sample']:.3e}) mom={row['momentum_drift']:.1e} "
                  f"E={row['energy_drift_rel']:.1e} step={row['step_s'] * 1e3:.1f} ms run={wall:.1f} s", flush=True)

    table = markdown(rows, args)
    if notes:
        table += ["", "Notes:", ""] + [f"* {n}" for n in notes]
    (args.out_dir / "landau_covariance.md").write_text("\n".join(table) + "\n")
    write_csv(args.out_dir / "landau_covariance.csv", rows, CSV_KEYS)
    write_curves(args.out_dir / "landau_covariance_sigma11.csv", curves)
    if curves:
        plot(args.out_dir / "landau_covariance.png", curves, args.dims)
    print("\n".join(table))
    return rows


def markdown(rows, args):
    head = [f"## Anisotropic Maxwell relaxation: n = {args.n}, dt = {args.dt}, t ∈ [0, {args.t_end}], "
            f"seed = {args.seed}, Heun; DiScoFormer weights: " + (f"the files in {args.weights_dir}" if args.weights_dir else f"network = {args.network} (DiScoFormer.pretrained)"), "",
            "Errors of the particle covariance: against the exact Σ(t) from Σ0 (includes the initial "
            "sampling error, identical for all rows), and against the exact curve started from the "
            "particles' Σ̂(0) (estimator + time-stepping error only). Momentum drift "
            "max_t‖m(t)−m(0)‖∞; max_t‖m(t)‖∞ is dominated by the sample mean at t = 0. "
            "Energy drift max_t|E(t)−E(0)|/E(0).", "",
            "| d | estimator | max_t \\|ΔΣ11\\| | final \\|ΔΣ11\\| | max_t,kl \\|ΔΣkl\\| "
            "| max_t \\|ΔΣ11\\| from Σ̂(0) | max_t,kl \\|ΔΣkl\\| from Σ̂(0) "
            "| momentum drift | max_t‖m‖∞ | energy drift (rel) | wall / step (ms) | run (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head.append(f"| {r['d']} | {r['estimator']} | {fmt(r['sigma11_err_max'])} | {fmt(r['sigma11_err_final'])} "
                    f"| {fmt(r['cov_err_max'])} | {fmt(r['sigma11_err_max_sample'])} | {fmt(r['cov_err_max_sample'])} "
                    f"| {fmt(r['momentum_drift'], '.1e')} | {fmt(r['max_abs_mean'], '.1e')} "
                    f"| {fmt(r['energy_drift_rel'], '.1e')} | {fmt(r['step_s'] * 1e3, '.1f')} | {fmt(r['run_s'], '.1f')} |")
    return head


CSV_KEYS = ["d", "key", "estimator", "sigma11_err_max", "sigma11_err_final", "cov_err_max",
            "sigma11_err_max_sample", "cov_err_max_sample", "momentum_drift",
            "max_abs_mean", "energy_drift_rel", "step_s", "steps", "run_s", "finite"]


def write_curves(path, curves):
    lines = ["d,estimator,t,sigma11,sigma11_exact,sigma11_exact_from_sample"]
    for (d, key), (t, s, e, es) in curves.items():
        lines += [f"{d},{key},{ti:.6g},{si:.8g},{ei:.8g},{esi:.8g}" for ti, si, ei, esi in zip(t, s, e, es)]
    path.write_text("\n".join(lines) + "\n")


def plot(path, curves, dims):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [d for d in dims if any(k[0] == d for k in curves)]
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4.2), squeeze=False)
    for ax, d in zip(axes[0], dims):
        exact_drawn = False
        for (dd, key), (t, s, e, es) in curves.items():
            if dd != d:
                continue
            if not exact_drawn:
                problem = AnisotropicMaxwell(d)
                tt = np.linspace(t[0], t[-1], 200)
                ax.plot(tt, [float(problem.exact_covariance(ti)[0, 0]) for ti in tt], "k--", lw=2, label="exact (from Σ0)")
                ax.plot(t, es, ":", color="0.45", lw=2, label="exact from particles' Σ̂(0)")
                exact_drawn = True
            ax.plot(t, s, marker=".", ms=3, lw=1.2, label=LABELS[key])
        ax.set_title(f"d = {d}")
        ax.set_xlabel("t")
        ax.set_ylabel("Σ11(t)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Anisotropic Maxwell relaxation (Landau, γ = 0): Σ11(t)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
