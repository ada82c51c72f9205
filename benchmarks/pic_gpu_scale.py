"""Collision step at 10^6 particles on 100 cells with DiScoFormer on a GPU (issue 11's GPU row).

    python benchmarks/pic_gpu_scale.py [--n 1000000] [--cells 100] [--steps 3] [--device cuda]

Velocities ``N(0, diag(1.3², 0.6²))`` in d_v = 2, cells of equal expected size (uniform x), Maxwell
molecules (B = 1/24), Euler, dt = 0.1, warm-started per-cell mixtures. DiScoFormer's batched
``evaluate_cells`` runs on ``--device``; the per-cell Landau pair sums run in the numba kernels on
the host's cores (``particlescore.cell_kernels``). Prints the wall time of each step (the first
searches every cell's mixture), per-cell momentum drift and the host's core count.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import particlescore as ps
from particlescore.collisions import LandauCollisions, cell_moments


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    cell = np.sort(rng.integers(0, args.cells, args.n))
    v = rng.normal(size=(args.n, 2)) * [1.3, 0.6]
    est = ps.DiScoFormer.pretrained(dim=2).to(args.device)
    op = LandauCollisions(est, gamma=0.0, B=1 / 24, warm_start=True)
    m0, _, _ = cell_moments(v, cell, args.cells)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.n} particles, {args.cells} cells, device {args.device} ({name}), host cores {os.cpu_count()}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    for k in range(args.steps):
        start = time.perf_counter()
        v = op.step(v, cell, 0.1)
        print(f"step {k}: {time.perf_counter() - start:.2f} s{' (searches every cell)' if k == 0 else ''}", flush=True)
    m1, _, _ = cell_moments(v, cell, args.cells)
    print(f"max per-cell momentum drift {np.abs(m1 - m0).max():.2e}")


if __name__ == "__main__":
    main()
