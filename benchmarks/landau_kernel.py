"""Landau particle velocity: numba kernel vs the plain torch broadcasting version.

    python benchmarks/landau_kernel.py [--min-log2 10] [--max-log2 16] [--dim 3] [--gamma 0]
                                       [--torch-limit-gib 8] [--batch 64]

For n = 2^min … 2^max particles in dimension d it times one evaluation of
``dv_i/dt = −(B/n) Σ_j |z|^γ A(z)(s_i − s_j)`` with

* ``numba``: :func:`particlescore.landau_kernels.landau_velocity` (O(n) memory, all cores),
* ``torch``: :func:`particlescore.physics.landau_torch_reference` (n×n×d temporaries), skipped
  when its estimated peak memory ``6·n²·d·8`` bytes exceeds ``--torch-limit-gib``,
* ``numba RBM``: the random batch kernel with batches of ``--batch`` (O(n·p) work),
* ``moments`` (γ = 0 only): :func:`particlescore.landau_kernels.landau_velocity_maxwell`, the
  exact O(n·d²) moment expansion that :class:`particlescore.physics.Landau` uses for γ = 0,

and prints seconds per evaluation and the torch/numba ratio. Times are the best of up to 3
repeats (fewer when one evaluation takes over 2 s). The kernels are compiled before timing.
"""
from __future__ import annotations

import argparse
import os

import numba
import numpy as np
import torch

from particlescore import landau_kernels
from particlescore.physics import landau_torch_reference

from _common import best_time


def torch_peak_bytes(n: int, d: int) -> int:
    """Rough peak of the broadcasting version: ~6 live (n, n, d) float64 temporaries."""
    return 6 * n * n * d * 8


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-log2", type=int, default=10)
    parser.add_argument("--max-log2", type=int, default=16)
    parser.add_argument("--dim", type=int, default=3)
    parser.add_argument("--gamma", type=float, default=0.0)
    parser.add_argument("--torch-limit-gib", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=64, help="random batch size p for the RBM column")
    args = parser.parse_args(argv)

    d, gamma, B = args.dim, args.gamma, 1.0 / 24.0
    delta = 1e-3 if gamma < 0 else 0.0
    limit = args.torch_limit_gib * 2 ** 30
    print(f"Landau velocity, d = {d}, gamma = {gamma}, float64; numba threads = {numba.get_num_threads()}, "
          f"torch threads = {torch.get_num_threads()}, cpu count = {os.cpu_count()}")
    rng = np.random.default_rng(0)
    # compile
    v0, s0 = rng.standard_normal((64, d)), rng.standard_normal((64, d))
    landau_kernels.landau_velocity(v0, s0, gamma, B, delta)
    landau_kernels.landau_velocity_random_batch(v0, s0, rng.permutation(64), 8, gamma, B, delta)

    header = (f"{'n':>7} {'numba [s]':>11} {'torch [s]':>11} {'torch/numba':>12} {'max|diff|':>10} "
              f"{'RBM p=' + str(args.batch) + ' [s]':>14} {'moments [s]':>12}")
    print(header)
    print("-" * len(header))
    announced = False
    for k in range(args.min_log2, args.max_log2 + 1):
        n = 2 ** k
        v, s = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        t_numba = best_time(lambda: landau_kernels.landau_velocity(v, s, gamma, B, delta))
        perm = rng.permutation(n)
        t_rbm = best_time(lambda: landau_kernels.landau_velocity_random_batch(v, s, perm, args.batch, gamma, B, delta))
        if gamma == 0.0:
            t_moments = best_time(lambda: landau_kernels.landau_velocity_maxwell(v, s, B))
            moments_col = f"{t_moments:12.4g}"
        else:
            moments_col = f"{'-':>12}"
        peak = torch_peak_bytes(n, d)
        if peak <= limit:
            vt, st = torch.from_numpy(v), torch.from_numpy(s)
            t_torch = best_time(lambda: landau_torch_reference(vt, st, gamma, B, delta))
            diff = float(np.abs(landau_torch_reference(vt, st, gamma, B, delta).numpy()
                                - landau_kernels.landau_velocity(v, s, gamma, B, delta)).max())
            torch_cols = f"{t_torch:11.4g} {t_torch / t_numba:12.3g} {diff:10.2g}"
        else:
            torch_cols = f"{'skipped':>11} {'-':>12} {'-':>10}"
        print(f"{n:7d} {t_numba:11.4g} {torch_cols} {t_rbm:14.4g} {moments_col}", flush=True)
        if peak > limit and not announced:
            announced = True
            print(f"        (torch skipped from n = {n} on: estimated peak {peak / 2 ** 30:.1f} GiB "
                  f"> {args.torch_limit_gib:g} GiB)", flush=True)


if __name__ == "__main__":
    main()
