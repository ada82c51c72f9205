"""One benchmark metric over several seeds: per-seed values, mean ± standard error, and paired
differences against a reference row (the same particles in every row of one seed).

    python benchmarks/seed_table.py DIR [DIR ...] [--metric score_err_avg_pct] [--reference KEY]
        [--dim D] [--format .3f] [--out TABLE.md]

Each DIR is one seed: the ``bkw.csv`` (or ``landau_covariance.csv``) files found in it or below it
(``benchmarks/bkw.py`` / ``benchmarks/landau_covariance.py`` runs with that ``--seed``, possibly
several with different ``--estimators``) are merged; rows are matched by their ``key`` column. A
key missing from some seed is shown with the seeds it has and left out of the paired column.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from _common import mean_se, write_report

CSV_NAMES = ("bkw.csv", "landau_covariance.csv")


def read_runs(directory: Path, metric: str, dim: int | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """{key: metric} and {key: estimator label} from every known csv in or below ``directory``,
    keeping the rows of dimension ``dim`` (None: every row, which must then share one d)."""
    paths = sorted(p for name in CSV_NAMES for p in directory.rglob(name))
    if not paths:
        raise FileNotFoundError(f"none of {CSV_NAMES} in or below {directory}")
    values, labels = {}, {}
    for path in paths:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        if rows and metric not in rows[0]:
            raise ValueError(f"{path} has no column {metric!r}; columns: {sorted(rows[0])}")
        if dim is not None:
            rows = [r for r in rows if int(r["d"]) == dim]
        elif len({r["d"] for r in rows}) > 1:
            raise ValueError(f"{path} holds several dimensions {sorted({r['d'] for r in rows})}: pass --dim")
        for r in rows:
            if r["key"] in values:
                raise ValueError(f"{directory}: estimator {r['key']!r} appears in more than one csv")
            values[r["key"]], labels[r["key"]] = float(r[metric]), r["estimator"]
    return values, labels


def mean_pm_se(values: list[float], spec: str = ".3f") -> str:
    """``mean ± s.e.`` (the mean alone for one value)."""
    mu, se = mean_se(values)
    return format(mu, spec) if len(values) < 2 else f"{format(mu, spec)} ± {format(se, spec)}"


def table(directories: list[Path], metric: str, reference: str | None, dim: int | None = None,
          spec: str = ".3f") -> str:
    runs = [read_runs(d, metric, dim) for d in directories]
    labels: dict[str, str] = {}
    for _, names in runs:
        labels.update(names)
    header = "| estimator | " + " | ".join(d.name for d in directories) + " | mean ± s.e. |"
    if reference:
        header += f" paired − {reference} |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for key, label in labels.items():
        cells = [format(values[key], spec) if key in values else "—" for values, _ in runs]
        present = [values[key] for values, _ in runs if key in values]
        line = f"| {label} | " + " | ".join(cells) + f" | {mean_pm_se(present, spec)} |"
        if reference:
            pairs = [values[key] - values[reference] for values, _ in runs if key in values and reference in values]
            line += f" {mean_pm_se(pairs, spec)} |" if pairs else " — |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--metric", default="score_err_avg_pct")
    parser.add_argument("--reference", default=None, help="key of the row the paired differences are taken against")
    parser.add_argument("--dim", type=int, default=None, help="keep the rows of this d (csv files with several)")
    parser.add_argument("--format", default=".3f", help="format spec of the numbers (e.g. .3e)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    write_report([table(args.dirs, args.metric, args.reference, args.dim, args.format).rstrip("\n")], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
