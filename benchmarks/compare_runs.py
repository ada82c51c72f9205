"""Compare two trajectory files variable by variable (issue 10: "the default ``particlescore run``
output is identical before and after").

Prints, for every data variable the two files share, its shape, the largest absolute difference
and whether the values are bitwise equal; then the variables only one file has and the global
attributes that differ (provenance attributes such as ``history`` and ``config`` are expected to
differ between versions). Usage::

    python benchmarks/compare_runs.py BEFORE.nc AFTER.nc
"""
from __future__ import annotations

import argparse

import numpy as np
import xarray as xr


def compare(before: str, after: str) -> str:
    a, b = xr.open_dataset(before), xr.open_dataset(after)
    lines = [f"{'variable':22s} {'shape':16s} {'max |after - before|':>21s}  bitwise"]
    for name in sorted(set(a.variables) & set(b.variables)):
        x, y = a[name].values, b[name].values
        if x.shape != y.shape:
            lines.append(f"{name:22s} shapes differ: {x.shape} vs {y.shape}")
            continue
        diff = float(np.nanmax(np.abs(x.astype(float) - y.astype(float)))) if x.size else 0.0
        lines.append(f"{name:22s} {str(x.shape):16s} {diff:21.3e}  {np.array_equal(x, y, equal_nan=True)}")
    lines.append(f"only in {before}: {sorted(set(a.variables) - set(b.variables))}; "
                 f"only in {after}: {sorted(set(b.variables) - set(a.variables))}")
    differing = sorted(k for k in set(a.attrs) | set(b.attrs) if str(a.attrs.get(k)) != str(b.attrs.get(k)))
    lines.append(f"global attributes that differ: {differing}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    print(compare(args.before, args.after))


if __name__ == "__main__":
    main()
