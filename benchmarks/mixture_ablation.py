"""What the transformer adds to its in-context mixture candidate.

    python benchmarks/mixture_ablation.py [--dims 1 2 3 10] [--n 1024] [--mixtures 16]

For each shipped d: relative score MSE (%) of the shipped DiScoFormer, of the same network
with its gates fixed on the EM mixture candidate and no residuals (the mixture fit alone), and
of Scott KDE, on the evaluation mixtures of ``particlescore.training.evaluate`` (mean ± standard error).
"""
import argparse

import numpy as np
import torch

import particlescore as ps
from particlescore.discoformer import DiScoFormer, available_dims, load_weights, weights_path
from particlescore.training.evaluate import evaluation_problem


def mixture_only(dim: int) -> DiScoFormer:
    net, _ = load_weights(weights_path(dim))
    if not net.config.mixture_components:
        raise SystemExit(f"the d={dim} weights have no mixture candidate")
    k = net.n_candidates
    with torch.no_grad():  # the mixture is the last candidate; gate weight 1 − O(e^-60)
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[k - 1] = net.head.bias[2 * k - 1] = 60.0
    return DiScoFormer(net)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="*", default=list(available_dims()))
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--mixtures", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"relative score MSE (%), n = {args.n}, {args.mixtures} evaluation mixtures, mean ± s.e.")
    print("| d | DiScoFormer | mixture candidate alone | Scott KDE |")
    print("|---|---|---|---|")
    for d in args.dims:
        estimators = [ps.DiScoFormer.pretrained(dim=d), mixture_only(d), ps.KDE("scott")]
        errs = np.zeros((len(estimators), args.mixtures))
        for i in range(args.mixtures):
            x, y, _, score = evaluation_problem(d, args.n, i)
            for j, est in enumerate(estimators):
                errs[j, i] = 100 * ps.relative_score_mse(est(x, y)[1], score)
        cells = [f"{e.mean():.2f} ± {e.std(ddof=1) / np.sqrt(args.mixtures):.2f}" for e in errs]
        print(f"| {d} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
