"""Time and peak memory of the KDE and blob score estimators vs n (d = 3), in one run.

    python benchmarks/estimators.py [--max-log2 16]

Peak memory is the process's peak RSS growth during the call (``resource.getrusage``), so
both estimators are measured the same way; the ratio column is blob time / KDE time.
"""
import argparse
import resource
import time

import numpy as np

import particlescore as ps


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(est, x):
    before = peak_rss_mib()
    t0 = time.perf_counter()
    est(x)
    return time.perf_counter() - t0, max(0.0, peak_rss_mib() - before)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-log2", type=int, default=10)
    parser.add_argument("--max-log2", type=int, default=16)
    parser.add_argument("--dim", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ps.Blob()(rng.normal(size=(64, args.dim)))  # compile the numba kernels outside the timings
    print(f"{'n':>7} {'KDE s':>9} {'KDE +MiB':>9} {'blob s':>9} {'blob +MiB':>9} {'blob/KDE':>9}")
    for k in range(args.min_log2, args.max_log2 + 1):
        x = rng.normal(size=(2 ** k, args.dim))
        t_kde, m_kde = measure(ps.KDE(), x)
        t_blob, m_blob = measure(ps.Blob(), x)
        print(f"{2 ** k:>7} {t_kde:9.3f} {m_kde:9.1f} {t_blob:9.3f} {m_blob:9.1f} {t_blob / t_kde:9.2f}", flush=True)


if __name__ == "__main__":
    main()
