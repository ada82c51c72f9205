"""Cost of the solver's data-safety work (issue 12.5, 12.6) relative to a time step.

On the default case's setting (anisotropic Maxwell relaxation, d = 3, DiScoFormer with warm
start, n = 500, Heun, dt = 0.02) this times, in one process: a whole Heun step (two estimator
calls and the Landau right-hand side), the per-step blow-up check (finiteness and energy), and
the per-record estimator-state work (``state_dict()`` plus its safetensors encoding). Ratios are
against the step.

    OMP_NUM_THREADS=1 python benchmarks/solver_overhead.py [--n 500] [--repeats 20]
"""
from __future__ import annotations

import argparse
import time

import torch

import particlescore as ps
from particlescore import solver
from particlescore.trajectory import pack_state


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = ps.AnisotropicMaxwell(3)
    est = ps.DiScoFormer.pretrained(3, warm_start=True)
    x = problem.initial_state(args.n, generator=torch.Generator().manual_seed(0))
    integrator, dt = ps.Heun(), 0.02
    score_fn = lambda t, y: est(y)[1]                                        # noqa: E731
    est(x)                                                                   # warm fit exists from here on
    step = best(lambda: integrator.step(problem.physics, 0.0, x, dt, score_fn), max(3, args.repeats // 4))
    run = solver._Run(problem=problem, estimator=est, n=args.n, dim=3, dt=dt, t0=0.0, n_steps=10, seed=0,
                      integrator=integrator, record_steps=(), diagnostics=(), hooks=(), progress=False,
                      max_energy_change=solver.MAX_ENERGY_CHANGE, device=torch.device("cpu"), threads=1,
                      follower=False, time_dependent=False, stochastic=False, stateful=True, resolved={}, attrs={})
    energy = solver._energy(x)
    check = best(lambda: solver._check_step(run, 1, x, energy, ps.recording.MemoryRecorder(), None), args.repeats)
    state = best(lambda: pack_state(est.state_dict()), args.repeats)
    size = len(pack_state(est.state_dict()))
    print(f"n = {args.n}, d = 3, DiScoFormer (warm start), Heun, 1 thread; best of {args.repeats} runs")
    print(f"  Heun step (2 estimator calls + Landau):      {step * 1e3:9.3f} ms   1")
    print(f"  blow-up check per step:                      {check * 1e3:9.3f} ms   {check / step:.2e}")
    print(f"  estimator state per record ({size} bytes): {state * 1e3:9.3f} ms   {state / step:.2e}")


if __name__ == "__main__":
    main()
