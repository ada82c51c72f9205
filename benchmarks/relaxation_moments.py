"""Why score estimators relax the anisotropic Maxwell covariance at the wrong rate (issue 9, item 4).

    OMP_NUM_THREADS=1 python benchmarks/relaxation_moments.py [--dims 2 3] [--seeds 3] [--out-dir DIR]

``AnisotropicMaxwell(d)`` from the Gaussian start, n = 500, Heun, dt = 0.01, t ∈ [0, 4]. Two parts:

1. **Fourth moment.** The exact law does not stay Gaussian: its fourth moment
   ``M4 = E|v − v̄|⁴`` follows a closed equation (``AnisotropicMaxwell.exact_fourth_moment``,
   docs/equations.md) and exceeds that of the Gaussian with the same covariance,
   ``M4_G = (tr Σ)² + 2 tr Σ²``. For each run (estimators in ``--estimators``, ``--seeds`` seeds)
   the table gives the excess ``M4/M4_G(Σ̂) − 1`` of the particles, minus its value at t = 0 (the
   initial draw's sampling error), against the exact excess.
2. **Covariance rate on the run's own particles.** At saved times of the seed-0 DiScoFormer run,
   the rate dΣ11/dt that each score gives the particle system, relative to the exact rate
   ``4B(tr Σ̂ − dΣ̂11)`` at the particles' own Σ̂ (−0.10: relaxing 10 % too fast), on those
   particles and, for comparison, on i.i.d. Gaussian draws with the same Σ̂ (mean of 16 draws).
   Scores: the sample Gaussian ``−Σ̂⁻¹(v − v̄)`` (what DiScoFormer's mixture candidate is when BIC
   keeps one component), DiScoFormer (cold call), Scott KDE.

Writes ``relaxation_moments.md`` and ``relaxation_moments.png`` to ``--out-dir``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.problems import AnisotropicMaxwell
from particlescore.solver import simulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LABELS, make_estimator, mean_se, set_threads, warm_up, write_report  # noqa: E402
from maxwell_seeds import max_sigma11_error  # noqa: E402

TIMES = (0.5, 1.0, 2.0, 4.0)


def gaussian_fourth_moment(cov: np.ndarray) -> float:
    """``E|v − μ|⁴`` of a Gaussian with covariance ``cov``: ``(tr Σ)² + 2 tr Σ²`` (Isserlis)."""
    return float(np.trace(cov) ** 2 + 2 * np.trace(cov @ cov))


def fourth_moment_excess(x: np.ndarray) -> float:
    """``M4/M4_G(Σ̂) − 1`` of the particles ``x`` (n, d) about their mean."""
    c = x - x.mean(0)
    cov = c.T @ c / len(c)
    return float(((c * c).sum(1) ** 2).mean()) / gaussian_fourth_moment(cov) - 1.0


def relative_rate_error(problem, x: torch.Tensor, score: torch.Tensor) -> float:
    """(dΣ11/dt of the particle system with ``score`` − 4B(tr Σ̂ − dΣ̂11)) / |4B(tr Σ̂ − dΣ̂11)|."""
    d = x.shape[1]
    c = x - x.mean(0)
    cov = c.T @ c / len(x)
    exact = float(4 * problem.B * (torch.trace(cov) - d * cov[0, 0]))
    u = problem.physics(0.0, x, score)
    rate = float(((u.T @ c + c.T @ u) / len(x))[0, 0])
    return (rate - exact) / abs(exact)


def rate_scores(dim: int):
    """The scores of part 2, by label: a function ``x -> score at x``."""
    disco, kde = ps.DiScoFormer.pretrained(dim=dim), ps.KDE("scott")

    def sample_gaussian(x):
        c = x - x.mean(0)
        return -c @ torch.linalg.inv(c.T @ c / len(x))
    return {"sample Gaussian": sample_gaussian, "DiScoFormer": lambda x: disco(x)[1], "Scott KDE": lambda x: kde(x)[1]}


def run_dim(dim: int, args) -> tuple[list[str], dict]:
    problem = AnisotropicMaxwell(dim)
    warm_up(problem)
    steps = round(args.t_end / args.dt)
    save_every = round(0.5 / args.dt)
    exact = {t: problem.exact_fourth_moment(t) / gaussian_fourth_moment(problem.exact_covariance(t).numpy()) - 1
             for t in TIMES}
    excess, sigma_err, states0 = {}, {}, None
    for key in args.estimators:
        excess[key], sigma_err[key] = [], []
        for seed in range(args.seeds):
            est, reason = make_estimator(key, dim, problem, seed)
            if est is None:
                print(f"d = {dim} {key}: {reason}")
                break
            sol = simulate(problem, est, n=args.n, dt=args.dt, t_end=steps * args.dt, save_every=save_every,
                           seed=seed, progress=False)
            times = np.asarray(sol.times)
            index = {t: int(np.argmin(np.abs(times - t))) for t in TIMES}
            base = fourth_moment_excess(sol.states[0])
            excess[key].append([fourth_moment_excess(sol.states[index[t]]) - base for t in TIMES])
            sigma_err[key].append(max_sigma11_error(problem, sol))
            if key == "discoformer-warm" and seed == 0:
                states0 = (times, sol.states)
            print(f"d = {dim} {key} seed {seed}: excess change {np.round(excess[key][-1], 4)}, "
                  f"max|ΔΣ11| {sigma_err[key][-1]:.3e}", flush=True)
    lines = [f"## d = {dim}", "",
             f"### Fourth-moment excess M4/M4_G − 1, change from t = 0 (mean ± s.e. over {args.seeds} seeds)", "",
             "| run | " + " | ".join(f"t = {t:g}" for t in TIMES) + " | max_t \\|ΔΣ11\\| from Σ̂(0) |",
             "|---|" + "---|" * (len(TIMES) + 1),
             "| exact (closed form) | " + " | ".join(f"{exact[t]:+.4f}" for t in TIMES) + " | 0 |"]
    for key, rows in excess.items():
        if not rows:
            continue
        rows = np.asarray(rows)
        cells = [f"{m:+.4f} ± {s:.4f}" for m, s in (mean_se(rows[:, k]) for k in range(len(TIMES)))]
        m, s = mean_se(sigma_err[key])
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + f" | {m:.2e} ± {s:.1e} |")
    rates = {}
    if states0 is not None:
        scores = rate_scores(dim)
        times, states = states0
        lines += ["", "### Relative error of the covariance rate dΣ11/dt, on the seed-0 DiScoFormer run's particles "
                  "/ on i.i.d. Gaussian draws with the same Σ̂ (mean of 16)", "",
                  "| t | " + " | ".join(scores) + " |", "|---|" + "---|" * len(scores)]
        for t in TIMES:
            x = torch.as_tensor(states[int(np.argmin(np.abs(times - t)))], dtype=torch.float64)
            c = x - x.mean(0)
            chol = torch.linalg.cholesky(c.T @ c / len(x))
            draws = [torch.randn(len(x), dim, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + k))
                     @ chol.T for k in range(16)]
            cells = []
            for label, score in scores.items():
                own = relative_rate_error(problem, x, score(x))
                iid = float(np.mean([relative_rate_error(problem, y, score(y)) for y in draws]))
                rates.setdefault(label, []).append((own, iid))
                cells.append(f"{own:+.3f} / {iid:+.3f}")
            lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    return lines + [""], {"exact": exact, "excess": excess, "rates": rates}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (dim, res) in zip(axes[0], results.items()):
        ax.plot(TIMES, [res["exact"][t] for t in TIMES], "k-o", label="exact")
        for key, rows in res["excess"].items():
            if rows:
                rows = np.asarray(rows)
                ax.errorbar(TIMES, rows.mean(0), yerr=rows.std(0, ddof=1) / np.sqrt(len(rows)) if len(rows) > 1 else None,
                            marker=".", capsize=3, label=LABELS[key])
        ax.set(title=f"d = {dim}: M4/M4_G − 1 of the particles, change from t = 0", xlabel="t")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dt", type=float, default=0.01)
    parser.add_argument("--t-end", type=float, default=4.0)
    parser.add_argument("--estimators", nargs="+", default=["discoformer-warm", "discoformer-proj", "kde", "sbtm"],
                        choices=["discoformer-warm", "discoformer-proj", "kde", "blob", "sbtm"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if "discoformer-warm" not in args.estimators:
        parser.error("part 2 runs on the discoformer-warm run's particles: keep it in --estimators")
    set_threads(args.threads)
    lines = ["# Fourth moment and covariance rate in the anisotropic Maxwell relaxation", "",
             f"`python benchmarks/relaxation_moments.py --dims {' '.join(map(str, args.dims))} --seeds {args.seeds}` "
             f"(n = {args.n}, Heun, dt = {args.dt}, t ∈ [0, {args.t_end:g}], one thread; docstring for the protocol).", ""]
    results = {}
    for dim in args.dims:
        block, results[dim] = run_dim(dim, args)
        lines += block
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_report(lines, args.out_dir / "relaxation_moments.md")
    plot(results, args.out_dir / "relaxation_moments.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
