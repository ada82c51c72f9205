"""First call with and without numba's on-disk cache (issue 12.10).

Starts two fresh Python processes in a row with the same empty ``NUMBA_CACHE_DIR``; each
imports particlescore and times its first evaluation of the numba-backed estimator and physics
(Blob score and Coulomb Landau velocity, n = 200, d = 3). The first process compiles and writes
the cache, the second loads it. Prints both times, their ratio, and numba's cache hit / miss
counts. Usage: ``python benchmarks/numba_cache.py [--out FILE]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PROBE = """
import json, time
import numpy as np
import particlescore as ps
from particlescore import kernels, landau_kernels
x = np.random.default_rng(0).standard_normal((200, 3))
tic = time.perf_counter()
_, s = ps.Blob()(x)
ps.Landau(gamma=-3.0)(0.0, x, s)
wall = time.perf_counter() - tic
dispatchers = [kernels.mollified_sums, kernels.blob_score_sums, landau_kernels.landau_velocity]
print(json.dumps({"wall": wall,
                  "hits": sum(sum(d.stats.cache_hits.values()) for d in dispatchers),
                  "misses": sum(sum(d.stats.cache_misses.values()) for d in dispatchers)}))
"""


def probe(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first = probe(cache)
        second = probe(cache)
    text = "\n".join([
        f"first Blob + Coulomb Landau call (n = 200, d = 3) in a fresh process, OMP_NUM_THREADS = "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"empty cache   : {first['wall']:7.2f} s  (numba cache hits {first['hits']}, misses {first['misses']})",
        f"cache on disk : {second['wall']:7.2f} s  (numba cache hits {second['hits']}, misses {second['misses']})",
        f"ratio         : {first['wall'] / second['wall']:7.1f}x",
    ])
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
