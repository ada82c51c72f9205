"""The same weights with some inference-time config fields changed, against the shipped config,
on the score table's held-out random mixtures (same seeds as ``score_table.py``).

    OMP_NUM_THREADS=1 python benchmarks/config_switch.py --set mixture_tied=true --set mixture_tied_clustering=true
        [--dims 2 3 10] [--sizes 256 1024 4096 16384] [--mixtures 16] [--network per-dim|equivariant]
        [--weights-dir DIR] [--out FILE]

Only the fields that ``particlescore.training.edit_config`` may change are accepted (the mixture
search and covariance options of ``DiScoFormerConfig``: they act after the network's inputs are fixed). Prints, per cell, the relative score MSE (%) of
both, and the paired difference (edited − shipped) with its standard error over the mixtures.
"""
import argparse
import datetime
import json
import sys

import torch

from _common import add_config_edit_arguments, original_and_edited, paired_score_row, parsed_settings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_edit_arguments(parser, dims=[2, 3, 10], sizes=[256, 1024, 4096, 16384])
    parser.add_argument("--mixtures", type=int, default=16)
    args = parser.parse_args()
    settings = parsed_settings(parser, args)
    torch.set_num_threads(1)
    label = ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    command = "OMP_NUM_THREADS=1 python benchmarks/config_switch.py " + " ".join(sys.argv[1:])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    lines = [f"## {label} against the shipped config ({args.network} weights, {args.mixtures} mixtures per cell)", "",
             f"`{command}` ({when} UTC, torch {torch.__version__}, one thread)", "",
             "| d | n | shipped score % | edited score % | paired edited − shipped (± s.e.) |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for d in args.dims:
        shipped, edited = original_and_edited(d, args, settings)
        for n in args.sizes:
            row, seconds = paired_score_row(d, n, args.mixtures, shipped, edited)
            lines.append(row)
            print(row, f"  ({seconds:.0f} s)", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
