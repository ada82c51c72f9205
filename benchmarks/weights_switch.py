"""Candidate weights against the shipped ones, paired on the score table's held-out random
mixtures (same seeds as ``score_table.py``): the check before a retrained file replaces a shipped one.

    OMP_NUM_THREADS=1 python benchmarks/weights_switch.py --weights-dir DIR [--dims 2]
        [--sizes 256 1024 4096 16384] [--mixtures 16] [--baseline per-dim|per-dim-gmm] [--out FILE]

``DIR`` holds ``discoformer_d{d}.safetensors`` for each ``--dims``. The baseline is the shipped
per-dimension file (``DiScoFormer.pretrained(dim=d)``), or with ``--baseline per-dim-gmm`` the
shipped GMM-only file. Prints, per cell, the relative score MSE (%) of both and the paired
difference (candidate − baseline) with its standard error over the mixtures.
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch

from _common import discoformer_for, paired_score_row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--dims", type=int, nargs="*", default=[2])
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 1024, 4096, 16384])
    parser.add_argument("--mixtures", type=int, default=16)
    parser.add_argument("--baseline", choices=("per-dim", "per-dim-gmm"), default="per-dim")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 python benchmarks/weights_switch.py " + " ".join(sys.argv[1:])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    lines = [f"## {args.weights_dir} against the shipped {args.baseline} files ({args.mixtures} mixtures per cell)", "",
             f"`{command}` ({when} UTC, torch {torch.__version__}, one thread)", "",
             f"| d | n | shipped {args.baseline} score % | candidate score % | paired candidate − shipped (± s.e.) |",
             "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for d in args.dims:
        baseline = discoformer_for(d, args.baseline)
        candidate = discoformer_for(d, weights_dir=args.weights_dir)
        for n in args.sizes:
            row, seconds = paired_score_row(d, n, args.mixtures, baseline, candidate)
            lines.append(row)
            print(row, f"  ({seconds:.0f} s)", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
