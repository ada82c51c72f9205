"""EllipticalKDE: its bandwidth factor, and its accuracy against Scott KDE and DiScoFormer.

    OMP_NUM_THREADS=1 python benchmarks/elliptical_kde.py [--draws 6] [--out benchmarks/results/elliptical_kde.md]

1. **Bandwidth factor** (how the default c = 1.4 was chosen, without BKW): relative score MSE (%)
   at the samples, for ``b = c·sd(r)·n^{-1/5}``, on isotropic Gaussians and Student-t laws
   (ν = 3, 5, 10; the estimate is affine equivariant, so isotropic draws stand for every elliptical
   law) in d = 2, 3, 10 at n = 500 and 4096; the mean over cells of each c's error relative to the
   best c of that cell.
2. **BKW** (isotropic, with a near-hole at the origin right after t0): exact samples of
   ``BKWProblem(d)`` at t0 + 0.075, 0.5, 2, n = 500, 4096, 25 600; relative score MSE at the
   samples and the wall time of one call (one thread) for EllipticalKDE, Scott KDE and DiScoFormer
   (cold call, the default network).
3. **Out of its family**: the ablation's cells (n = 1024, 512 queries from the law; d = 2, 3:
   Gaussian mixtures, Student-t ν = 3, Laplace products, banana), against DiScoFormer.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.distributions import Gaussian, StudentT
from particlescore.problems import BKWProblem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import mean_se, write_report  # noqa: E402
from ablation import SHAPES, draw  # noqa: E402

FACTORS = (0.7, 1.0, 1.4, 2.0, 2.8)


def error(score, truth) -> float:
    return 100 * float(ps.relative_score_mse(score, truth))


def bandwidth_scan(draws: int) -> list[str]:
    lines = ["## 1. Bandwidth factor c (relative score MSE % at the samples, mean over draws)", "",
             "| law | d | n | " + " | ".join(f"c = {c:g}" for c in FACTORS) + " |", "|---|---|---|" + "---|" * len(FACTORS)]
    relative = []
    for d in (2, 3, 10):
        laws = {"Gaussian": Gaussian(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))}
        laws.update({f"Student-t ν={nu:g}": StudentT(d, nu) for nu in (3.0, 5.0, 10.0)})
        for name, law in laws.items():
            for n in (500, 4096):
                errs = np.zeros((draws, len(FACTORS)))
                for i in range(draws):
                    x = law.sample(n, generator=torch.Generator().manual_seed(1000 * d + 10 * n + i))
                    truth = law.score(x)
                    for k, c in enumerate(FACTORS):
                        errs[i, k] = error(ps.EllipticalKDE(c)(x)[1], truth)
                means = errs.mean(0)
                relative.append(means / means.min())
                lines.append(f"| {name} | {d} | {n} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
                print(lines[-1], flush=True)
    rel = np.mean(relative, 0)
    lines += ["", "Mean over the cells of each c's error / the cell's best: "
              + ", ".join(f"c = {c:g}: {r:.3f}" for c, r in zip(FACTORS, rel)), ""]
    return lines


def bkw_table(draws: int) -> list[str]:
    lines = ["## 2. Exact BKW samples (relative score MSE % at the samples, mean over draws; seconds per call)", "",
             "| d | t − t0 | n | EllipticalKDE | Scott KDE | DiScoFormer |", "|---|---|---|---|---|---|"]
    for d in (2, 3):
        problem = BKWProblem(d)
        disco = ps.DiScoFormer.pretrained(dim=d)
        methods = {"EllipticalKDE": ps.EllipticalKDE(), "Scott KDE": ps.KDE("scott"), "DiScoFormer": disco}
        for after in (0.075, 0.5, 2.0):
            law = problem.exact_distribution(problem.t0 + after)
            for n in (500, 4096, 25600):
                cells = []
                for label, est in methods.items():
                    errs, walls = [], []
                    for i in range(draws if n < 25600 else 1):
                        x = law.sample(n, generator=torch.Generator().manual_seed(77 + i))
                        start = time.perf_counter()
                        score = est(x)[1]
                        walls.append(time.perf_counter() - start)
                        errs.append(error(score, law.score(x)))
                    cells.append(f"{np.mean(errs):.2f} ({np.mean(walls):.2f} s)")
                lines.append(f"| {d} | {after:g} | {n} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    return lines + ["", "(n = 25 600: one draw.)", ""]


def ablation_cells(draws: int) -> list[str]:
    lines = ["## 3. The ablation's cells (n = 1024, 512 queries from the law; relative score MSE %, mean ± s.e.)", "",
             "| d | shape | EllipticalKDE | DiScoFormer |", "|---|---|---|---|"]
    for d in (2, 3):
        disco = ps.DiScoFormer.pretrained(dim=d)
        for shape in SHAPES:
            ell, dis = [], []
            for i in range(draws):
                x, y, truth = draw(shape, d, 1024, 512, i)
                ell.append(error(ps.EllipticalKDE()(x, y)[1], truth))
                dis.append(error(disco(x, y)[1], truth))
            (me, se), (md, sd) = mean_se(ell), mean_se(dis)
            lines.append(f"| {d} | {shape} | {me:.2f} ± {se:.2f} | {md:.2f} ± {sd:.2f} |")
            print(lines[-1], flush=True)
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "elliptical_kde.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["# EllipticalKDE", "", f"`OMP_NUM_THREADS=1 python benchmarks/elliptical_kde.py --draws {args.draws}` "
             f"(particlescore {ps.__version__}; one thread on the shared 2-core CPU).", ""]
    lines += bandwidth_scan(args.draws) + bkw_table(args.draws) + ablation_cells(16)
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
