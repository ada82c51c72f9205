"""Accuracy and cost of DiScoFormer's bounded context at large n (issue 8 item 2), BKW in d = 2.

    OMP_NUM_THREADS=1 python benchmarks/bkw_context.py

Exact samples of the BKW solution (``BKWProblem(2)``, B = 1/24) at t0 + 0.5 and t0 + 2, n = 2^14 …
2^17 (seed n), scored at all n particles by one cold call of ``DiScoFormer.pretrained(2,
max_context=c)`` for c = 2048 (the default), 4096 and 8192: the kernel bank and the attention see
a seeded random subsample of c points, whitening and the mixture fit all n. Prints the relative
score MSE against the exact score and the wall time of the call (one thread; it includes the
cold split/BIC search on all n points, which a warm-started solver step amortises).
"""
import time

import torch

import particlescore as ps
from particlescore.problems import BKWProblem


def main():
    torch.set_num_threads(1)
    problem = BKWProblem(2)
    for after in (0.5, 2.0):
        exact = problem.exact_distribution(problem.t0 + after)
        for n in (2 ** 14, 2 ** 15, 2 ** 16, 2 ** 17):
            x = exact.sample(n, generator=torch.Generator().manual_seed(n))
            truth = exact.score(x)
            cells = []
            for context in (2048, 4096, 8192):
                est = ps.DiScoFormer.pretrained(dim=2, max_context=context)
                start = time.perf_counter()
                score = est(x)[1]
                wall = time.perf_counter() - start
                cells.append(f"ctx {context}: {100 * ps.relative_score_mse(score, truth):.2f} % {wall:.1f} s")
            print(f"t0+{after} n={n}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
