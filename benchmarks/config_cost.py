"""Cost of one cold call with some inference-time config fields changed, against the weights
file's own config, in the same process (the companion of ``config_switch.py``, which measures accuracy).

    OMP_NUM_THREADS=1 python benchmarks/config_cost.py --set mixture_birth=true [--dims 10]
        [--sizes 256 500 1024] [--repeats 3] [--network per-dim|equivariant] [--weights-dir DIR] [--out FILE]

Per cell, two contexts: the score table's first held-out mixture (``evaluation_problem``) and a
standard Gaussian sample (the Landau benchmarks' ensembles are near-Gaussian), 512 queries each.
Each estimator is called ``--repeats`` times, alternating the file's config and the edited one, and the best time
of each is kept (a cold call: a fresh search every time, no warm start). Prints milliseconds and
the ratio edited / the file's config.
"""
import argparse
import datetime
import json
import sys
import time

import torch

from particlescore.training.evaluate import evaluation_problem

from _common import add_config_edit_arguments, original_and_edited, parsed_settings


def timed_call(est, context, queries) -> float:
    """Seconds of one call ``est(context, queries)``."""
    tic = time.perf_counter()
    est(context, queries)
    return time.perf_counter() - tic


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_edit_arguments(parser, dims=[10], sizes=[256, 500, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = parsed_settings(parser, args)
    torch.set_num_threads(1)
    label = ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    command = "OMP_NUM_THREADS=1 python benchmarks/config_cost.py " + " ".join(sys.argv[1:])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    source = "shipped" if args.weights_dir is None else str(args.weights_dir)
    lines = [f"## Cold-call cost, {label} against the file's own config ({args.network} weights, {source})", "",
             f"`{command}` ({when} UTC, torch {torch.__version__}, one thread, best of {args.repeats}, alternating)", "",
             "| d | n | context | file's config ms | edited ms | edited / file's |", "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for d in args.dims:
        original, edited = original_and_edited(d, args, settings)
        for n in args.sizes:
            mixture_context, queries, _, _ = evaluation_problem(d, n, 0)
            gaussian = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
            for name, context in (("mixture 0", mixture_context), ("Gaussian", gaussian)):
                original(context, queries)                                   # numba kernels, first-call costs
                times = ([], [])
                for _ in range(args.repeats):
                    for est, timings in zip((original, edited), times):
                        timings.append(timed_call(est, context, queries))
                a, b = min(times[0]), min(times[1])
                lines.append(f"| {d} | {n} | {name} | {1e3 * a:.0f} | {1e3 * b:.0f} | {b / a:.2f} |")
                print(lines[-1], flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
