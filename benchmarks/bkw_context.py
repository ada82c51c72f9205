"""Accuracy and cost of DiScoFormer's bounded context at large n (issue 8 item 2), BKW in d = 2.

    OMP_NUM_THREADS=1 python benchmarks/bkw_context.py [--seeds 3] [--out benchmarks/results/bkw_context.md]

Exact samples of the BKW solution (``BKWProblem(2)``, B = 1/24) at t0 + 0.5 and t0 + 2, n = 2^14 …
2^17 (seeds ``1000·s + n``), scored at all n particles by one cold call of
``DiScoFormer.pretrained(2)`` with the default ``bank_growth = 0.2`` (the attention sees a seeded
random subsample of 2048 points, the kernel bank ``2048·(n/2048)^0.2`` of them, nested) and with
``bank_growth = 0`` (the bank on the attention's 2048 points, the default before). Whitening and
the mixture fit use all n points in both. Prints the relative score MSE against the exact score
(mean ± standard error over the seeds) and the mean wall time of the call (one thread; it
includes the cold split/BIC search on all n points, which a warm-started solver step amortises).
Writes ``bkw_context.md`` and the accuracy/cost curve ``bkw_context.png`` (error against call time,
one point per n) beside it.
"""
import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.problems import BKWProblem


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bkw_context.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problem = BKWProblem(2)
    growths = (0.2, 0.0)
    rows, curve = [], {}
    for after in (0.5, 2.0):
        exact = problem.exact_distribution(problem.t0 + after)
        for n in (2 ** 14, 2 ** 15, 2 ** 16, 2 ** 17):
            errors = {g: [] for g in growths}
            walls = {g: [] for g in growths}
            for seed in range(args.seeds):
                x = exact.sample(n, generator=torch.Generator().manual_seed(1000 * seed + n))
                truth = exact.score(x)
                for g in growths:
                    est = ps.DiScoFormer.pretrained(dim=2, bank_growth=g)
                    start = time.perf_counter()
                    score = est(x)[1]
                    walls[g].append(time.perf_counter() - start)
                    errors[g].append(100 * float(ps.relative_score_mse(score, truth)))
            bank = ps.DiScoFormer.pretrained(dim=2).bank_context_size(n, n)
            cells = []
            for g in growths:
                e = np.array(errors[g])
                cells.append(f"{e.mean():.2f} ± {e.std(ddof=1) / math.sqrt(len(e)):.2f} % ({np.mean(walls[g]):.1f} s)")
                curve.setdefault((after, g), []).append((n, float(np.mean(walls[g])), float(e.mean())))
            rows.append(f"| t0 + {after} | {n} | {bank} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    text = ["# Bounded context at large n: BKW d = 2, exact samples, one cold call", "",
            f"`OMP_NUM_THREADS=1 python benchmarks/bkw_context.py --seeds {args.seeds}` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, particlescore {ps.__version__}, "
            f"torch {torch.__version__}; one thread on a 2-core machine shared with other jobs: compare times "
            "within a row).", "",
            f"Relative score MSE against the exact score at all n particles, mean ± standard error over "
            f"{args.seeds} draws, and the mean wall time of the call (it includes the cold split/BIC search "
            "on all n points). The attention sees 2048 points in both columns.", "",
            "| time | n | bank points (default) | default, bank_growth = 0.2 "
            "| bank_growth = 0 (bank on the attention's 2048) |",
            "|---|---|---|---|---|", *rows, ""]
    args.out.write_text("\n".join(text) + "\n")
    plot(curve, args.out.with_suffix(".png"))


def plot(curve: dict, path: Path) -> None:
    """Score error against call time, one panel per time, one line per ``bank_growth``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    times = sorted({after for after, _ in curve})
    fig, axes = plt.subplots(1, len(times), figsize=(5.5 * len(times), 4), squeeze=False)
    for ax, after in zip(axes[0], times):
        for (t, g), points in sorted(curve.items()):
            if t != after:
                continue
            ns, walls, errors = zip(*points)
            ax.loglog(walls, errors, "o-", label=f"bank_growth = {g}")
            for n, w, e in points:
                ax.annotate(f"2^{int(round(math.log2(n)))}", (w, e), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.set_xlabel("wall time of one cold call (s)")
        ax.set_ylabel("relative score MSE (%)")
        ax.set_title(f"BKW d = 2, exact samples at t0 + {after}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
