"""Where the score error of BKW at early times comes from (issue 8's ≤ 1.5 % bar at n = 25 600).

    OMP_NUM_THREADS=1 python benchmarks/bkw_early.py [--n 25600] [--after 0.1] [--draws 2]
        [--out benchmarks/results/bkw_early.md]

Exact samples of the BKW solution (``BKWProblem(2)``, B = 1/24) at ``t0 + after``, where
``f ∝ (P + Q|v|²) e^{−|v|²/2K}`` still has a near-zero at the origin (P is small right after t0),
so the exact score ``v(−1/K + 2Q/(P + Q|v|²))`` peaks at ``|v| ≈ √(P/Q)``. One cold call per
estimator at all n particles; the relative score error ``Σ‖ŝ − s‖² / Σ‖s‖²`` is split into the
shares of particles with ``|v|`` in each radius bin (the shares add up to the total):

* DiScoFormer with the default ``bank_growth = 0.2`` and with the kernel bank on all n points
  (``bank_growth = 1``);
* DiScoFormer with its mixture allowed 24 components instead of 10, and with 8 test-time
  adaptation steps on 1024 points, kept by a 1024-point held-out check;
* each of DiScoFormer's own candidates (kernel bank and mixture, default context);
* Scott KDE on all n points, and scikit-learn's ``GaussianMixture`` (full covariances, K ≤ 20
  by BIC; ``--no-sklearn`` skips it).

Draws use ``torch.Generator().manual_seed(77 + draw)``.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

import particlescore as ps
from particlescore.problems import BKWProblem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gmm_score, sklearn_bic_mixture, write_report  # noqa: E402
from ablation import candidate_names, discoformer_and_candidates  # noqa: E402

BINS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, float("inf"))


def shares(score: torch.Tensor, truth: torch.Tensor, radius: torch.Tensor) -> list[float]:
    """Total relative error (%) and its share from each radius bin."""
    err = ((score - truth) ** 2).sum(1)                                      # (n,)
    den = float((truth ** 2).sum())
    parts = [100 * float(err[(radius >= a) & (radius < b)].sum()) / den for a, b in zip(BINS[:-1], BINS[1:])]
    return [100 * float(err.sum()) / den] + parts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=25600)
    parser.add_argument("--after", type=float, default=0.1, help="time after t0 of the exact samples")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    exact = BKWProblem(2).exact_distribution(BKWProblem(2).t0 + args.after)
    bins = " | ".join(f"{a:g}–{b:g}" for a, b in zip(BINS[:-1], BINS[1:]))
    lines = [f"# BKW d = 2 at t0 + {args.after}, n = {args.n}: score error by radius (one cold call per draw)", "",
             f"`OMP_NUM_THREADS=1 python benchmarks/bkw_early.py --n {args.n} --after {args.after} "
             f"--draws {args.draws}`", "",
             "Relative score error (%) and the share of it from particles with |v| in each bin; the time is "
             "that of one call (one thread).", ""]
    for draw in range(args.draws):
        x = exact.sample(args.n, generator=torch.Generator().manual_seed(77 + draw))
        truth, radius = exact.score(x), x.norm(dim=1)
        counts = [int(((radius >= a) & (radius < b)).sum()) for a, b in zip(BINS[:-1], BINS[1:])]
        rows = []
        for growth in (0.2, 1.0):
            est = ps.DiScoFormer.pretrained(dim=2, bank_growth=growth)
            start = time.perf_counter()
            score = est(x)[1]
            rows.append((f"DiScoFormer, bank_growth = {growth:g}", shares(score, truth, radius),
                         time.perf_counter() - start))
        est = ps.DiScoFormer.pretrained(dim=2)
        est.net.config.mixture_components = 24
        start = time.perf_counter()
        score = est(x)[1]
        rows.append(("DiScoFormer, up to 24 mixture components", shares(score, truth, radius),
                     time.perf_counter() - start))
        est = ps.DiScoFormer.pretrained(dim=2, adapt_steps=8, adapt_holdout=1024)
        est.adapt_points = 1024
        start = time.perf_counter()
        score = est(x)[1]
        rows.append(("DiScoFormer, 8 adaptation steps, held-out check", shares(score, truth, radius),
                     time.perf_counter() - start))
        start = time.perf_counter()
        kde = ps.KDE("scott")(x)[1]
        rows.append(("Scott KDE", shares(kde, truth, radius), time.perf_counter() - start))
        if not args.no_sklearn:
            start = time.perf_counter()
            best, _ = sklearn_bic_mixture(x.numpy(), 20)
            score = torch.from_numpy(gmm_score(best, x.numpy()))
            rows.append((f"sklearn GMM (BIC: K = {best.n_components})", shares(score, truth, radius),
                         time.perf_counter() - start))
        est = ps.DiScoFormer.pretrained(dim=2)
        _, cands = discoformer_and_candidates(est, x, x)
        for name, cand in zip(candidate_names(est.net.config), cands):
            rows.append((f"candidate: {name}", shares(cand, truth, radius), None))
        lines += [f"## draw {draw}", "", f"| estimator | total | {bins} | call (s) |",
                  "|---|---|" + "---|" * (len(BINS) - 1) + "---|",
                  "| particles |  | " + " | ".join(str(c) for c in counts) + " | |"]
        for name, values, wall in rows:
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " | "
                         + ("" if wall is None else f"{wall:.1f}") + " |")
        lines.append("")
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
