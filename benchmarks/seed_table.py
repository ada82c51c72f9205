"""One benchmark metric over several seeds: per-seed values, mean ± standard error, and paired
differences against a reference row (the same particles in every row of one seed).

    python benchmarks/seed_table.py DIR [DIR ...] [--metric score_err_avg_pct] [--reference discoformer-warm]
        [--out benchmarks/results/bkw_seeds.md]

Each DIR is one seed: the ``bkw.csv`` (or ``landau_covariance.csv``) files found in it or below it
(``benchmarks/bkw.py`` / ``benchmarks/landau_covariance.py`` runs with that ``--seed``, possibly
several with different ``--estimators``) are merged; rows are matched by their ``key`` column. A key missing from some seed is shown with the seeds it has and left out of the
paired column.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

CSV_NAMES = ("bkw.csv", "landau_covariance.csv")


def read_runs(directory: Path, metric: str) -> tuple[dict[str, float], dict[str, str]]:
    """{key: metric} and {key: estimator label} from every known csv in or below ``directory``."""
    paths = sorted(p for name in CSV_NAMES for p in directory.rglob(name))
    if not paths:
        raise FileNotFoundError(f"none of {CSV_NAMES} in or below {directory}")
    values, labels = {}, {}
    for path in paths:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        if rows and metric not in rows[0]:
            raise ValueError(f"{path} has no column {metric!r}; columns: {sorted(rows[0])}")
        for r in rows:
            if r["key"] in values:
                raise ValueError(f"{directory}: estimator {r['key']!r} appears in more than one csv")
            values[r["key"]], labels[r["key"]] = float(r[metric]), r["estimator"]
    return values, labels


def mean_se(values: list[float]) -> str:
    mu = sum(values) / len(values)
    if len(values) < 2:
        return f"{mu:.3f}"
    var = sum((v - mu) ** 2 for v in values) / (len(values) - 1)
    return f"{mu:.3f} ± {math.sqrt(var / len(values)):.3f}"


def table(directories: list[Path], metric: str, reference: str | None) -> str:
    runs = [read_runs(d, metric) for d in directories]
    labels: dict[str, str] = {}
    for _, names in runs:
        labels.update(names)
    header = "| estimator | " + " | ".join(d.name for d in directories) + " | mean ± s.e. |"
    if reference:
        header += f" paired − {reference} |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for key, label in labels.items():
        cells = [f"{values[key]:.3f}" if key in values else "—" for values, _ in runs]
        present = [values[key] for values, _ in runs if key in values]
        line = f"| {label} | " + " | ".join(cells) + f" | {mean_se(present)} |"
        if reference:
            pairs = [values[key] - values[reference] for values, _ in runs if key in values and reference in values]
            line += f" {mean_se(pairs)} |" if pairs else " — |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--metric", default="score_err_avg_pct")
    parser.add_argument("--reference", default=None, help="key of the row the paired differences are taken against")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    text = table(args.dirs, args.metric, args.reference)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
