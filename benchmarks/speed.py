"""Forward time and peak memory vs n for DiScoFormer, KDE and blob (d = 3), in one run, and
the model's achieved FLOP/s as a fraction of this machine's dense matmul FLOP/s.

    python benchmarks/speed.py [--min-log2 8] [--max-log2 15] [--large-log2 16 17] [--dim 3]

Table 1: queries = context (n×n pair work, as in a solver step) for n = 2^min … 2^max.
Table 2: large contexts (n = 2^16, 2^17) with 1024 queries, DiScoFormer and KDE (the blob
score needs the mollified sum at every particle, an n² pass whatever the queries, so it is
measured in table 1 only). Memory: peak RSS growth of the process during the call
(``resource.getrusage``), the same probe for all. The model's FLOPs are counted from its
shapes (matmuls, attention, kernel-bank pair terms and the EM mixture fit).
"""
import argparse
import resource
import time

import numpy as np
import torch

import particlescore as ps
from particlescore.discoformer import available_dims


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    before = peak_rss_mib()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, max(0.0, peak_rss_mib() - before)


def matmul_flops(size=2048, repeats=5):
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - t0)


def model_flops(config, n, m):
    """Multiply-adds ×2 of the network for n context points and m queries."""
    W, r, d, L = config.width, config.mlp_ratio, config.dim, config.n_layers
    dense = 2 * (4 * W * W + 2 * r * W * W)            # q, kv, proj, MLP per token
    ctx = L * (n * dense + 4 * n * n * W)
    qry = L * (m * dense + 4 * m * n * W)
    bank = len(config.kde_bandwidths) * 2 * m * n * (2 * d + 1) + len(config.local_bandwidths) * 2 * m * n * (d * d + 2 * d + 1)
    # EM mixture fit (float64): per iteration and component, a triangular solve and a covariance
    # update over the n points (≈ 3d² + 4d multiply-adds each), for K = 2 … K_max after each split
    k_max = min(config.mixture_components, n // (2 * d)) if config.mixture_components else 0
    em = sum(config.mixture_iters * k * n * (3 * d * d + 4 * d) * 2 for k in range(2, k_max + 1))
    em += 2 * m * max(k_max, 1) * (d * d + 3 * d) if k_max else 0
    return ctx + qry + bank + em


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-log2", type=int, default=8)
    parser.add_argument("--max-log2", type=int, default=15)
    parser.add_argument("--large-log2", type=int, nargs="*", default=[16, 17])
    parser.add_argument("--large-queries", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=3)
    args = parser.parse_args()
    if args.dim not in available_dims():
        raise SystemExit(f"no shipped weights for d={args.dim}")
    model = ps.DiScoFormer.pretrained(dim=args.dim)
    peak = matmul_flops()
    print(f"dense float32 matmul on this machine: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    rng = np.random.default_rng(0)
    ps.Blob()(rng.normal(size=(64, args.dim)))  # numba compilation outside the timings
    print(f"{'n':>7} | {'DiScoFormer s':>13} {'+MiB':>7} {'GFLOP/s':>8} {'of peak':>7} | {'KDE s':>8} {'+MiB':>7} | "
          f"{'blob s':>8} {'+MiB':>7} | {'model/KDE':>9} {'blob/KDE':>8}")
    for k in range(args.min_log2, args.max_log2 + 1):
        n = 2 ** k
        x = torch.from_numpy(rng.normal(size=(n, args.dim)))
        t_model, m_model = timed(lambda: model(x))
        t_kde, m_kde = timed(lambda: ps.KDE()(x))
        t_blob, m_blob = timed(lambda: ps.Blob()(x))
        rate = model_flops(model.net.config, n, n) / t_model
        print(f"{n:>7} | {t_model:13.3f} {m_model:7.0f} {rate / 1e9:8.1f} {rate / peak:7.1%} | {t_kde:8.3f} {m_kde:7.0f} | "
              f"{t_blob:8.3f} {m_blob:7.0f} | {t_model / t_kde:9.2f} {t_blob / t_kde:8.2f}", flush=True)
    m = args.large_queries
    print(f"\nlarge contexts, {m} queries")
    print(f"{'n':>7} | {'DiScoFormer s':>13} {'+MiB':>7} {'GFLOP/s':>8} {'of peak':>7} | {'KDE s':>8} {'+MiB':>7} | {'model/KDE':>9}")
    for k in args.large_log2:
        n = 2 ** k
        x = torch.from_numpy(rng.normal(size=(n, args.dim)))
        y = x[:m]
        t_model, m_model = timed(lambda: model(x, y))
        t_kde, m_kde = timed(lambda: ps.KDE()(x, y))
        rate = model_flops(model.net.config, n, m) / t_model
        print(f"{n:>7} | {t_model:13.3f} {m_model:7.0f} {rate / 1e9:8.1f} {rate / peak:7.1%} | {t_kde:8.3f} {m_kde:7.0f} | "
              f"{t_model / t_kde:9.2f}", flush=True)


if __name__ == "__main__":
    main()
