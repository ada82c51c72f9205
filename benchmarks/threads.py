"""ps.simulate vs the CLI on the default case, back to back (issue 12.9).

Runs the packaged default case (anisotropic Maxwell, d = 3, DiScoFormer, n = 500, 200 Heun
steps) in alternating rounds, back to back:

1. ``particlescore run --out ...`` in a subprocess (the CLI, default threads);
2. ``ps.simulate(...)`` in this process with default threads (what a Python user gets);

then once, on a shorter horizon, ``ps.simulate(..., threads=N)`` with N = every available core
(torch's own default, i.e. what ``ps.simulate`` ran with before it chose its threads). Prints the
simulation wall times (the CLI's own "wall time" line, which like the others excludes
interpreter start-up), the medians over rounds, ms per step, and the ratios to the CLI.
``--per-call-only``: DiScoFormer calls at n = 500 and 2048 with 1 thread vs every core (the
measurement behind ``particlescore.runtime.PARALLEL_MIN_PARTICLES``). Usage::

    python benchmarks/threads.py [--t-end 4.0] [--rounds 2] [--out benchmarks/results/threads.txt]
    python benchmarks/threads.py --per-call-only --out benchmarks/results/threads_per_call.txt
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

import particlescore as ps
from particlescore import config as cfgmod
from particlescore import runtime


def run_cli(out: str, t_end: float) -> tuple[float, float]:
    """(simulation wall time reported by the CLI, whole subprocess wall time)."""
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "particlescore", "run", "--out", out, "--no-progress",
                           "--t-end", str(t_end)], capture_output=True, text=True)
    total = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"the CLI run failed ({done.returncode}):\n{done.stderr}")
    match = re.search(r"wall time ([0-9.]+) s", done.stdout)
    return float(match.group(1)), total


def run_api(out: str, t_end: float, threads=None) -> float:
    cfg = cfgmod.default_config()
    problem = cfgmod.build_problem(cfg)
    estimator = cfgmod.build_estimator(cfg, problem)
    tic = time.perf_counter()
    ps.simulate(problem, estimator, n=cfg.run.n, dt=cfg.run.dt, t_end=t_end, save_every=cfg.run.save_every,
                seed=cfg.run.seed, out=out, integrator=cfgmod.build_integrator(cfg), progress=False,
                threads=threads)
    return time.perf_counter() - tic


def per_call_table(sizes=(500, 2048), reps: int = 5) -> str:
    """Warm-started DiScoFormer calls (d = 3) with 1 thread vs every core, by n: where the
    default's PARALLEL_MIN_PARTICLES comes from (mean of ``reps`` calls after one untimed call)."""
    import torch

    cores = runtime.available_cores()
    lines = [f"DiScoFormer call (d = 3, warm start), ms per call; 1-min load average {os.getloadavg()[0]:.1f}",
             f"{'n':>6s} {'1 thread':>9s} {f'{cores} threads':>10s} {'ratio':>6s}"]
    for n in sizes:
        x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        est = ps.DiScoFormer.pretrained(dim=3, warm_start=True)
        times = []
        for threads in (1, cores):
            with runtime.thread_limit(threads):
                est(x)
                tic = time.perf_counter()
                for _ in range(reps):
                    est(x)
                times.append(1e3 * (time.perf_counter() - tic) / reps)
        lines.append(f"{n:6d} {times[0]:9.1f} {times[1]:10.1f} {times[1] / times[0]:6.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t-end", type=float, default=cfgmod.default_config().run.t_end)
    parser.add_argument("--rounds", type=int, default=2, help="alternating CLI / API rounds")
    parser.add_argument("--t-end-all-cores", type=float, default=1.0,
                        help="t_end of the (slow on a busy machine) all-cores run")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--per-call-only", action="store_true", help="only the per-call 1-vs-all-cores table")
    args = parser.parse_args()
    if args.per_call_only:
        text = per_call_table()
        print(text)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text + "\n")
        return
    cores = runtime.available_cores()
    cfg = cfgmod.default_config()
    n, t0 = cfg.run.n, cfgmod.build_problem(cfg).t0
    steps = round((args.t_end - t0) / cfg.run.dt)
    steps_all = round((args.t_end_all_cores - t0) / cfg.run.dt)
    cli_walls, api_walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            cli, cli_total = run_cli(os.path.join(tmp, f"cli{r}.nc"), args.t_end)
            cli_walls.append(cli)
            api_walls.append(run_api(os.path.join(tmp, f"api{r}.nc"), args.t_end))
            print(f"round {r}: CLI {cli:.1f} s (subprocess {cli_total:.1f} s), ps.simulate {api_walls[-1]:.1f} s",
                  flush=True)
        api_all = run_api(os.path.join(tmp, "api_all.nc"), args.t_end_all_cores, threads=cores)
    default = runtime.default_threads(n)
    cli, api = float(np.median(cli_walls)), float(np.median(api_walls))
    ms = lambda wall, k: 1e3 * wall / k  # noqa: E731
    lines = [
        f"default case (n = {n}, {steps} Heun steps), {cores} available cores, OMP_NUM_THREADS = "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, 1-min load average at the end {os.getloadavg()[0]:.1f}; "
        f"{args.rounds} alternating rounds CLI, API (median)",
        f"{'run':40s} {'threads':>7s} {'wall s':>8s} {'ms/step':>8s} {'/ CLI':>6s}",
        f"{'particlescore run (CLI, default threads)':40s} {default:7d} {cli:8.1f} {ms(cli, steps):8.1f} {1.0:6.2f}"
        f"   rounds: {', '.join(f'{w:.1f}' for w in cli_walls)}",
        f"{'ps.simulate (default threads)':40s} {default:7d} {api:8.1f} {ms(api, steps):8.1f} "
        f"{api / cli:6.2f}   rounds: {', '.join(f'{w:.1f}' for w in api_walls)}",
        f"{'ps.simulate (threads = all cores)':40s} {cores:7d} {api_all:8.1f} {ms(api_all, steps_all):8.1f} "
        f"{ms(api_all, steps_all) / ms(cli, steps):6.2f}   ({steps_all} steps; per-step ratio)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
