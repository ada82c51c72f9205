"""Trajectory storage (issue 12.13): bytes and write time per saved record for float64 (the
lossless default), float64 + zlib, float32, float32 + zlib.

The records are real solver output (anisotropic Maxwell relaxation, KDE, Heun); each storage
setting writes the same records through ``TrajectoryWriter``, so the ratios are measured in one
process against the float64 baseline. Bytes per record = (file size with all records − file
size with the first record) / (records − 1), which removes the fixed header cost.

    OMP_NUM_THREADS=1 python benchmarks/trajectory_storage.py [--n 4096] [--records 8]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import particlescore as ps
from particlescore.trajectory import TrajectoryWriter

SETTINGS = {"float64": dict(), "float64+zlib": dict(compress=True), "float32": dict(precision="float32"),
            "float32+zlib": dict(precision="float32", compress=True)}


class Keep:
    """A recorder that keeps every record (with scores and log-densities)."""

    def __init__(self):
        self.records = []

    def append(self, record):
        self.records.append(record)

    def close(self):
        pass


def write(path, records, options, upto):
    writer = TrajectoryWriter.create(path, state_name="velocity", n_particles=records[0].state.shape[0],
                                     dim=records[0].state.shape[1], attrs={}, **options)
    tic = time.perf_counter()
    with writer:
        for r in records[:upto]:
            writer.append(step=r.step, time=r.time, state=r.state, score=r.score, log_density=r.log_density,
                          diagnostics=r.diagnostics, estimator_state=r.estimator_state)
    return (time.perf_counter() - tic) / upto, os.path.getsize(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--records", type=int, default=8)
    args = parser.parse_args()
    keep = Keep()
    problem = ps.AnisotropicMaxwell(3)
    ps.simulate(problem, ps.KDE(), n=args.n, dt=0.1, t_end=0.1 * (args.records - 1), progress=False,
                recorders=[keep])
    records = keep.records
    print(f"n = {args.n}, d = 3, {len(records)} records of anisotropic Maxwell relaxation (KDE, Heun, dt = 0.1)")
    print(f"{'storage':>14} {'bytes/record':>13} {'ratio':>6} {'write s/record':>15} {'ratio':>6}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in SETTINGS.items():
            _, first = write(os.path.join(tmp, f"{name}-1.nc"), records, options, 1)
            seconds, full = write(os.path.join(tmp, f"{name}.nc"), records, options, len(records))
            per_record = (full - first) / (len(records) - 1)
            base = base or (per_record, seconds)
            print(f"{name:>14} {per_record:13.0f} {per_record / base[0]:6.3f} {seconds:15.4f} {seconds / base[1]:6.2f}")


if __name__ == "__main__":
    main()
