"""Solver-scale benchmark (issue 8 item 6): per-step wall time, peak memory and score error
against n = 2^9 … 2^17 for BKW in d = 2 (Euler) and anisotropic Maxwell in d = 3 (Heun).

    OMP_NUM_THREADS=1 python benchmarks/solver_scale.py [--min-log2 9] [--max-log2 17]
        [--methods discoformer kde blob sbtm] [--time-box 60] [--steps 2] [--out-dir benchmarks/results]

Each (problem, method, n) runs in its own process (``--worker``), so its peak memory is the
process's own peak RSS (``resource.getrusage``, everything included: Python, torch, weights)
and a hard timeout can stop it. In the worker: ``n`` particles drawn from the exact initial law
(seed 0); one untimed step (numba compilation, DiScoFormer's cold mixture search, SBTM's
initial fit), then ``--steps`` timed steps of the solver's integrator (``Euler`` for BKW as in
the issue's bar, ``Heun`` for Maxwell, two estimator calls per step) with the problem's Landau
right-hand side (Maxwell molecules: the exact O(n·d²) moment form). Score error: relative MSE
``Σ‖ŝ − s‖²/Σ‖s‖²`` at the particles against the exact score, (a) of the first call at t0
(the exact initial law; cold estimator) and (b) for BKW also after the timed steps (exact
BKW score at that time; warm estimator).

DiScoFormer runs warm-started (``warm_start=True``; bounded context ``max_context``). A method
is skipped at the next n when its last step time times the growth factor expected from its
complexity (×4 for the O(n²) KDE and blob, ×2 otherwise) exceeds ``--time-box``; the table
says so. Log–log slopes of time vs n are least-squares fits over n ≥ 2^12 where measured.
Step time is reported as wall time and as the process's CPU time (``time.process_time``; one
thread, so on a machine shared with other jobs it is the better measure of the work).
Writes ``solver_scale.md``, ``solver_scale.csv`` and ``solver_scale.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

PROBLEMS = {"bkw_d2": ("BKW d=2", 2, "euler"), "maxwell_d3": ("anisotropic Maxwell d=3", 3, "heun")}
METHODS = ("discoformer", "kde", "blob", "sbtm")
GROWTH = {"discoformer": 2.0, "kde": 4.0, "blob": 4.0, "sbtm": 2.0}
DT = 0.02


def make_problem(key: str):
    from particlescore.problems import AnisotropicMaxwell, BKWProblem
    return BKWProblem(2) if key == "bkw_d2" else AnisotropicMaxwell(3)


def make_method(key: str, problem, max_context: int | None, device: str = "cpu"):
    import particlescore as ps
    from particlescore.sbtm import SBTM
    if key == "discoformer":
        return ps.DiScoFormer.pretrained(dim=problem.dim, warm_start=True, max_context=max_context).to(device)
    if key == "kde":
        return ps.KDE("scott")
    if key == "blob":
        return ps.Blob()
    if key == "sbtm":
        initial = problem.initial_distribution()
        return SBTM(initial_score=lambda x: initial.score(x), seed=0)
    raise ValueError(key)


def worker(problem_key: str, method_key: str, n: int, steps: int, max_context: int | None,
           device: str = "cpu") -> dict:
    """One measurement; returns plain data (printed as JSON by ``--worker``). On ``device="cuda"``
    the particles, the estimator and the Landau sums (torch path) live on the GPU and the peak is
    torch's peak GPU allocation."""
    import particlescore as ps
    from particlescore.solver import Euler, Heun
    torch.set_num_threads(1)
    problem = make_problem(problem_key)
    est = make_method(method_key, problem, max_context, device)
    integrator = Euler() if PROBLEMS[problem_key][2] == "euler" else Heun()
    g = torch.Generator().manual_seed(0)
    x = problem.initial_state(n, generator=g)
    exact0 = problem.initial_distribution().score(x)
    x = x.to(device)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    t = problem.t0
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def score_fn(_t, y):
        return est(y)[1]

    first = score_fn(t, x)
    err0 = float(ps.relative_score_mse(first.cpu(), exact0))
    x = integrator.step(problem.physics, t, x, DT, score_fn, score=first)   # untimed step
    t += DT
    sync()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        x = integrator.step(problem.physics, t, x, DT, score_fn)
        t += DT
    sync()
    per_step = (time.perf_counter() - t_start) / steps
    cpu_per_step = (time.process_time() - cpu_start) / steps   # one thread: robust to other jobs' load
    err_end = math.nan
    exact = problem.exact_distribution(t)
    if exact is not None:
        err_end = float(ps.relative_score_mse(score_fn(t, x).cpu(), exact.score(x.cpu())))
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if x.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"problem": problem_key, "method": method_key, "n": n, "step_s": per_step, "cpu_s": cpu_per_step,
            "peak_mib": peak, "setup_mib": rss_setup,
            "err_t0": err0, "err_end": err_end, "t_end": t}


def slope(ns, values, min_n=2 ** 12):
    pts = [(math.log(n), math.log(v)) for n, v in zip(ns, values) if n >= min_n and v and math.isfinite(v)]
    if len(pts) < 2:
        return math.nan
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


def write_report(rows: list[dict], notes: list[str], args, command: str, seconds: float) -> str:
    """Write ``solver_scale.{md,csv,png}`` for ``rows`` (the workers' results) into ``args.out_dir``."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "solver_scale.csv", "w") as fh:
        fh.write("problem,method,n,step_s,cpu_s,peak_mib,err_t0,err_end\n")
        for r in rows:
            fh.write(f"{r['problem']},{r['method']},{r['n']},{r['step_s']:.6g},{r.get('cpu_s', math.nan):.6g},{r['peak_mib']:.1f},"
                     f"{r['err_t0']:.6g},{r['err_end']:.6g}\n")
    lines = ["# Solver scale: per-step wall time, peak memory, score error vs n", "",
             f"`{command}` "
             f"(single thread per process, {args.steps} timed steps after one untimed step, dt = {DT}; "
             f"DiScoFormer warm-started, max_context = {args.max_context}, default bank_growth; device {args.device}"
             f"{' (' + torch.cuda.get_device_name() + '; peak = peak GPU allocation)' if args.device == 'cuda' else ''}; total {seconds:.0f} s; load average {' / '.join(f'{v:.1f}' for v in os.getloadavg())} at the end, on 2 cores shared with other jobs).",
             "Peak = the worker process's peak RSS (Python + torch + everything). err(t0): first call, exact "
             "initial law (SBTM is fitted to the exact initial score before it, so its err(t0) is not an "
             "estimate); err(end): BKW after the timed steps (warm).", ""]
    for pkey in args.problems:
        label, dim, integ = PROBLEMS[pkey]
        lines += [f"## {label} ({integ.capitalize()})", "",
                  "| method | n | step s (wall) | step s (CPU) | peak MiB | score err t0 % | score err end % |",
                  "|---|---|---|---|---|---|---|"]
        for method in args.methods:
            sel = [r for r in rows if r["problem"] == pkey and r["method"] == method]
            for r in sel:
                lines.append(f"| {method} | {r['n']} | {r['step_s']:.3f} | {r.get('cpu_s', math.nan):.3f} | {r['peak_mib']:.0f} | "
                             f"{100 * r['err_t0']:.3f} | {100 * r['err_end']:.3f} |")
        lines += ["", "log–log slopes of wall step time vs n (n ≥ 2^12): " + ", ".join(
            f"{m} {slope([r['n'] for r in rows if r['problem'] == pkey and r['method'] == m], [r['step_s'] for r in rows if r['problem'] == pkey and r['method'] == m]):.2f}"
            for m in args.methods),
            "log–log slopes of CPU step time vs n (n ≥ 2^12): " + ", ".join(
            f"{m} {slope([r['n'] for r in rows if r['problem'] == pkey and r['method'] == m], [r.get('cpu_s', math.nan) for r in rows if r['problem'] == pkey and r['method'] == m]):.2f}"
            for m in args.methods), ""]
    if notes:
        lines += ["## Skipped", ""] + [f"- {s}" for s in notes] + [""]
    (args.out_dir / "solver_scale.md").write_text("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(args.problems), 3, figsize=(13, 3.6 * len(args.problems)), squeeze=False)
    for i, pkey in enumerate(args.problems):
        for method in args.methods:
            sel = [r for r in rows if r["problem"] == pkey and r["method"] == method]
            if not sel:
                continue
            ns = [r["n"] for r in sel]
            axes[i, 0].loglog(ns, [r["step_s"] for r in sel], "o-", label=method)
            axes[i, 1].loglog(ns, [r["peak_mib"] for r in sel], "o-", label=method)
            axes[i, 2].loglog(ns, [100 * r["err_t0"] for r in sel], "o-", label=method)
        for j, ylabel in enumerate(["wall time per step (s)", "peak RSS (MiB)", "score error at t0 (%)"]):
            axes[i, j].set_xlabel("n")
            axes[i, j].set_ylabel(ylabel)
            axes[i, j].set_title(PROBLEMS[pkey][0])
        axes[i, 0].legend()
    fig.tight_layout()
    fig.savefig(args.out_dir / "solver_scale.png", dpi=110)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-log2", type=int, default=9)
    parser.add_argument("--max-log2", type=int, default=17)
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--time-box", type=float, default=60.0, help="seconds per step a method may take")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    parser.add_argument("--max-context", type=int, default=2048, help="DiScoFormer's bounded context")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (peak = torch's peak GPU allocation)")
    parser.add_argument("--worker", nargs=3, metavar=("PROBLEM", "METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        p, m, n = args.worker
        print("RESULT " + json.dumps(worker(p, m, int(n), args.steps, args.max_context, args.device)))
        return 0

    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    rows, notes = [], []
    t_total = time.perf_counter()
    command = " ".join(["python benchmarks/solver_scale.py"] + (argv if argv is not None else sys.argv[1:]))
    for pkey in args.problems:
        for method in args.methods:
            last = None
            for k in range(args.min_log2, args.max_log2 + 1):
                n = 2 ** k
                if last is not None and last * GROWTH[method] > args.time_box:
                    notes.append(f"{PROBLEMS[pkey][0]}, {method}: skipped n ≥ 2^{k} (last step {last:.1f} s × "
                                 f"{GROWTH[method]:.0f} > time box {args.time_box:.0f} s)")
                    break
                cmd = [sys.executable, __file__, "--worker", pkey, method, str(n), "--steps", str(args.steps),
                       "--max-context", str(args.max_context), "--device", args.device]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                         timeout=60 + (args.steps + 3) * 4 * args.time_box)
                except subprocess.TimeoutExpired:
                    notes.append(f"{PROBLEMS[pkey][0]}, {method}, n = {n}: hard timeout; larger n skipped")
                    break
                line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
                if out.returncode != 0 or not line:
                    notes.append(f"{PROBLEMS[pkey][0]}, {method}, n = {n}: failed: {out.stderr.strip()[-300:]}")
                    break
                row = json.loads(line[0][7:])
                rows.append(row)
                last = row["step_s"]
                write_report(rows, notes, args, command, time.perf_counter() - t_total)   # partial results on disk
                print(f"{pkey:11s} {method:12s} n={n:7d} step {row['step_s']:9.3f} s  cpu {row['cpu_s']:9.3f} s  peak {row['peak_mib']:7.0f} MiB  "
                      f"err(t0) {100 * row['err_t0']:7.3f} %  err(end) {100 * row['err_end']:7.3f} %", flush=True)

    print(write_report(rows, notes, args, command, time.perf_counter() - t_total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
