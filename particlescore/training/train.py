"""Train DiScoFormer weights on random Gaussian mixtures (and, with ``--families``, on Student-t
mixtures and Laplace laws; ``training/data.py``).

    python -m particlescore.training --dim 2 --steps 3000 --out particlescore/weights/discoformer_d2.safetensors
    torchrun --nproc_per_node 2 -m particlescore.training --dim 2 ...   # DDP (gloo on CPU, nccl on GPU)
    python -m particlescore.training --dim 0 --train-dims 1 2 3 4 5 6 8 10 16 32 --max-dim 100 ...
        # the rotation-equivariant network for every d (model.EquivariantDiScoFormerNet): each step's
        # batch has one d, drawn uniformly from --train-dims by the step's seeded generator
    python -m particlescore.training --dim 3 --finetune-from particlescore/weights/discoformer_d3_gmm.safetensors
        --families gmm:2 t_mixture:1 laplace:1 --lr 3e-4 ...   # (one line) continue shipped weights on more families

Loss per mixture: ``α·Huber(log f̂ − log f) + (1−α)·Σ‖ŝ − s‖²/Σ‖s‖²`` (the relative score error,
the benchmark metric, so every mixture counts equally), averaged over the batch. AdamW with
linear warm-up and cosine decay, gradient clipping. Checkpoints (state dicts only, loaded with
``weights_only=True``) every ``--checkpoint-every`` steps and at ``--max-minutes``; ``--resume``
continues from the newest checkpoint with the same batches an uninterrupted run would see.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from particlescore import __version__
from particlescore.discoformer import DiScoFormer, bounded_subsamples, file_sha256, load_weights, save_weights
from particlescore.estimators import KDE
from particlescore.affine import WhitenedModel
from particlescore.model import DiScoFormerConfig, DiScoFormerNet, build_network

from .data import FAMILY_DRAWS, context_size, make_batch, step_generator
from .evaluate import evaluate


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m particlescore.training", description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, required=True, help="d, or 0 for the equivariant any-d network")
    p.add_argument("--train-dims", type=int, nargs="*", default=None, help="--dim 0: the dims drawn per step")
    p.add_argument("--max-dim", type=int, default=100, help="--dim 0: the largest d the weights will serve")
    p.add_argument("--eval-dims", type=int, nargs="*", default=None, help="--dim 0: dims of the final evaluation")
    p.add_argument("--steps", type=int, default=3000, help="total optimiser steps (sets the schedule)")
    p.add_argument("--batch", type=int, default=16, help="mixtures per step (per process)")
    p.add_argument("--n-min", type=int, default=256)
    p.add_argument("--n-max", type=int, default=2048)
    p.add_argument("--queries", type=int, default=128)
    p.add_argument("--off-fraction", type=float, default=0.125)
    p.add_argument("--alpha", type=float, default=0.1, help="weight of the log-density loss")
    p.add_argument("--score-loss", choices=SCORE_LOSSES, default="relative",
                   help="per-mixture score term: the relative MSE, or its log (every mixture weighted by its relative "
                        "improvement, so low-error mixtures are not drowned by heavy-tailed ones)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: leave default)")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints and log (default runs/train_d{dim})")
    p.add_argument("--out", type=Path, default=None, help="final weights file (.safetensors)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-mixtures", type=int, default=16)
    p.add_argument("--eval-sizes", type=int, nargs="*", default=[256, 1024, 4096])
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--mixture-components", type=int, default=0,
                   help="add the in-context EM mixture candidate with up to this many components")
    p.add_argument("--mixture-tied", action="store_true",
                   help="let the mixture fit use one shared covariance where full ones are unaffordable")
    p.add_argument("--mixture-unbiased", action="store_true", help="unbiased precisions N/(N − d − 2) in the mixture")
    p.add_argument("--mixture-loo-covariances", action="store_true",
                   help="re-estimate the mixture's covariances by leave-one-out shrinkage (candidates.loo_covariances)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from these weights (same config without the mixture candidate)")
    p.add_argument("--mixture-bias", type=float, default=12.0,
                   help="initial gate of the added candidate (--init-from)")
    p.add_argument("--add-elliptical", action="store_true",
                   help="with --init-from: the network of those weights plus the elliptical KDE candidate")
    p.add_argument("--add-shape-features", action="store_true",
                   help="with --init-from: the network of those weights plus the context's sphericity statistics "
                        "as query features (their input weights start at zero)")
    p.add_argument("--log-n-all-points", action="store_true",
                   help="the network's log n counts every context point, also where the attention sees a subsample "
                        "(sets the config flag; with --finetune-from or --init-from)")
    p.add_argument("--solver-regime-above", type=int, default=0,
                   help="steps with more context points than this see them as a solver call does: attention and "
                        "kernel bank on the estimator's seeded subsamples for m = n queries (0: never)")
    p.add_argument("--search-patience", type=int, default=0,
                   help="stop the mixture's split/BIC search once BIC has not improved for this many K "
                        "(0: full search, as a cold call)")
    p.add_argument("--finetune-from", type=Path, default=None,
                   help="continue training these weights (their config; the size and mixture options are ignored)")
    p.add_argument("--train-only", nargs="+", default=None, metavar="PREFIX",
                   help="train only the parameters whose names start with one of these (e.g. ln_out head); "
                        "the rest stay frozen")
    p.add_argument("--families", nargs="+", default=["gmm:1"], metavar="NAME:WEIGHT",
                   help=f"training families and their relative weights, from {sorted(FAMILY_DRAWS)} (training/data.py)")
    args = p.parse_args(argv)
    if args.dim == 0:
        if not args.train_dims or min(args.train_dims) < 1 or max(args.train_dims) > args.max_dim:
            p.error("--dim 0 needs --train-dims, each in 1 … --max-dim")
        args.eval_dims = args.eval_dims or sorted(set(args.train_dims))
    elif args.dim < 0 or args.train_dims:
        p.error("--dim must be positive (or 0 with --train-dims)")
    if args.finetune_from is not None and args.init_from is not None:
        p.error("--finetune-from and --init-from exclude each other")
    families = {}
    for token in args.families:
        name, _, weight = token.partition(":")
        try:
            families[name] = float(weight or 1.0)
        except ValueError:
            p.error(f"--families: {token!r} is not NAME:WEIGHT")
        if name not in FAMILY_DRAWS or not families[name] > 0:
            p.error(f"--families: {token!r} needs a name of {sorted(FAMILY_DRAWS)} and a positive weight")
    args.families = families
    return args


def step_dim(step: int, args) -> int:
    """The batch's dimension at ``step`` (the same on every rank; reproduced on resume)."""
    if args.dim:
        return args.dim
    g = step_generator(args.seed, 20_000, step)
    return args.train_dims[int(torch.randint(len(args.train_dims), (), generator=g))]


def transplant(old: DiScoFormerNet, new: DiScoFormerNet, mixture_bias: float) -> None:
    """Start ``new`` from trained ``old`` weights when ``new`` only adds the mixture candidate (or
    the elliptical one): matching tensors are copied, the new descriptor inputs start at zero, and
    the new candidate's score and log-density gates start at ``mixture_bias``. When ``new`` only
    adds the shape features, everything is copied and their input weights start at zero, so the
    new network computes exactly what the old one did."""
    k_old, k_new = old.n_candidates, new.n_candidates
    added = [bool(new.config.mixture_components) and not old.config.mixture_components,
             new.config.elliptical_candidate and not old.config.elliptical_candidate,
             new.config.shape_features and not old.config.shape_features]   # mixture, elliptical, shape
    adds_candidate = added[0] or added[1]
    if (old.config.dim != new.config.dim or old.config.width != new.config.width or sum(added) != 1
            or k_new != k_old + adds_candidate):
        raise SystemExit("--init-from: the new config must equal the old one plus the mixture candidate "
                         "(or plus the elliptical candidate, or plus the shape features)")
    old_state, new_state = old.state_dict(), new.state_dict()
    for name, value in old_state.items():
        if name not in new_state:
            raise SystemExit(f"--init-from: parameter {name} has no counterpart")
        if name == "embed_qry.weight":   # the new inputs are the last columns
            new_state[name].zero_()
            new_state[name][:, :value.shape[1]] = value
        elif name.startswith("head.") and adds_candidate:
            rows = new_state[name]
            rows.zero_()
            for part in ("score_gates", "log_gates"):
                new_rows, old_rows = getattr(new.layout, part), getattr(old.layout, part)
                rows[new_rows.start:new_rows.start + k_old] = value[old_rows]  # the old candidates' gates
                if name == "head.bias":  # the new candidate is the last one
                    rows[new_rows.start + k_old] = mixture_bias
            for part in ("score_residual", "log_residual"):
                rows[getattr(new.layout, part)] = value[getattr(old.layout, part)]
        else:
            new_state[name].copy_(value)
    new.load_state_dict(new_state)


def learning_rate(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


#: batch_loss's per-mixture score terms, by ``--score-loss`` name
SCORE_LOSSES = ("relative", "log-relative")


def batch_loss(net, batch, alpha: float, score_loss: str = "relative", **encode):
    """``alpha · Huber(log f) + (1 − alpha) · S`` averaged over the batch, with S per mixture the relative
    score MSE ``‖ŝ − s‖² / ‖s‖²`` or (``score_loss="log-relative"``) its log. The log's gradient is
    the relative MSE's divided by its own value: a mixture at 1 % error pulls as hard as one at 20 %,
    where the plain mean lets the heavy-tailed families (errors of 10–40 %) set the direction."""
    log_f, score = net(batch.context, batch.queries, **encode)                # (B, m), (B, m, d)
    rel_score = ((score - batch.score) ** 2).sum((1, 2)) / (batch.score ** 2).sum((1, 2))  # (B,)
    log_err = F.huber_loss(log_f, batch.log_density, reduction="none", delta=1.0).mean(1)  # (B,)
    if score_loss == "log-relative":
        score_term = torch.log(rel_score.clamp_min(1e-8))                    # (B,) clamp: a perfect fit stays finite
    elif score_loss == "relative":
        score_term = rel_score                                               # (B,)
    else:
        raise ValueError(f"score_loss must be one of {SCORE_LOSSES}, got {score_loss!r}")
    return (alpha * log_err + (1 - alpha) * score_term).mean(), rel_score.mean().detach(), log_err.mean().detach()


def trainable_parameters(net: torch.nn.Module, prefixes: list[str] | None) -> list[torch.nn.Parameter]:
    """Every parameter (``prefixes`` None), or those whose names start with one of ``prefixes``;
    the others get ``requires_grad = False``. A prefix matching no parameter is an error."""
    if prefixes is None:
        return list(net.parameters())
    names = [name for name, _ in net.named_parameters()]
    unmatched = [p for p in prefixes if not any(name.startswith(p) for name in names)]
    if unmatched:
        raise SystemExit(f"--train-only: {unmatched} match no parameter; the names start with "
                         f"{sorted({name.split('.')[0] for name in names})}")
    chosen = []
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith(tuple(prefixes)))
        if param.requires_grad:
            chosen.append(param)
    return chosen


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = f"d{args.dim}" if args.dim else "equivariant"
    run_dir = args.run_dir or Path("runs") / f"train_{tag}"
    out = args.out or run_dir / f"discoformer_{tag}.safetensors"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    config = DiScoFormerConfig(dim=args.dim, width=args.width, n_layers=args.layers, n_heads=args.heads,
                               mixture_components=args.mixture_components, mixture_tied=args.mixture_tied,
                               mixture_unbiased=args.mixture_unbiased, mixture_loo_covariances=args.mixture_loo_covariances,
                               max_dim=0 if args.dim else args.max_dim)
    if args.add_elliptical:
        if args.init_from is None:
            raise SystemExit("--add-elliptical needs --init-from (the weights it extends)")
        config = DiScoFormerConfig.from_dict({**load_weights(args.init_from)[0].config.to_dict(),
                                              "elliptical_candidate": True})
    if args.add_shape_features:
        if args.init_from is None or args.add_elliptical:
            raise SystemExit("--add-shape-features needs --init-from weights that have the elliptical candidate")
        config = DiScoFormerConfig.from_dict({**load_weights(args.init_from)[0].config.to_dict(),
                                              "shape_features": True})
    if args.finetune_from is not None:
        start_net, start_meta = load_weights(args.finetune_from)
        if start_net.config.dim != args.dim:
            raise SystemExit(f"--finetune-from: those weights are for dim {start_net.config.dim}, not --dim {args.dim}")
        config = start_net.config
    if args.log_n_all_points:
        config = DiScoFormerConfig.from_dict({**config.to_dict(), "log_n_all_points": True})
    net = build_network(config)
    if args.finetune_from is not None and not args.resume:
        net.load_state_dict(start_net.state_dict())
    if args.init_from is not None and not args.resume:
        transplant(load_weights(args.init_from)[0], net, args.mixture_bias)
    net = net.to(device)
    params = trainable_parameters(net, args.train_only)                  # before DDP sees which need grads
    wrapped = WhitenedModel(net)                                         # whitening in, un-whitening out
    model = torch.nn.parallel.DistributedDataParallel(wrapped) if distributed else wrapped
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start_step, wall_before = 0, 0.0
    ckpt_path = run_dir / "checkpoint.pt"
    if args.resume:
        if not ckpt_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state["config"] != config.to_dict():
            raise SystemExit(f"--resume: checkpoint config {state['config']} differs from {config.to_dict()}")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, wall_before = state["step"], state["wall_seconds"]

    log = open(run_dir / "train.log", "a") if rank == 0 else None
    if log:
        log.write(json.dumps({"event": "start", "argv": sys.argv, "args": {k: str(v) for k, v in vars(args).items()},
                              "start_step": start_step, "world_size": world}) + "\n")
    bar = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=args.steps, initial=start_step, desc=f"train {tag}")

    def checkpoint(step, wall):
        if rank == 0:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "config": config.to_dict(), "wall_seconds": wall}, tmp)
            os.replace(tmp, ckpt_path)

    t_start = time.time()
    step = start_step
    net.train()
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        n = context_size(step, args.seed, args.n_min, args.n_max)
        dim = step_dim(step, args)
        batch = make_batch(dim=dim, batch=args.batch, n=n, n_queries=args.queries, off_fraction=args.off_fraction,
                           generator=step_generator(args.seed, rank, step),
                           families=args.families)
        batch.context, batch.queries = batch.context.to(device), batch.queries.to(device)
        batch.log_density, batch.score = batch.log_density.to(device), batch.score.to(device)
        encode = {}
        if args.search_patience and config.mixture_components:
            encode["fitter"] = lambda ctx_w, frame: wrapped.search_mixture(ctx_w, patience=args.search_patience)
        if args.solver_regime_above and n > args.solver_regime_above:   # as DiScoFormer._prepare for m = n
            encode["subsample"], encode["bank_subsample"] = bounded_subsamples(
                n, n, step_generator(args.seed, 30_000, step))
        loss, rel_score, log_err = batch_loss(model, batch, args.alpha, args.score_loss, **encode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        optimizer.step()
        step += 1
        wall = wall_before + time.time() - t_start
        if log:
            log.write(json.dumps({"step": step, "n": n, "d": dim, "loss": loss.item(), "score_rel": rel_score.item(),
                                  "log_huber": log_err.item(), "grad_norm": float(grad_norm),
                                  "lr": learning_rate(step - 1, args), "wall": round(wall, 1)}) + "\n")
            log.flush()
        if bar:
            bar.update(1)
            bar.set_postfix(n=n, score_rel=f"{rel_score.item():.3f}", log=f"{log_err.item():.3f}")
        if step % args.checkpoint_every == 0:
            checkpoint(step, wall)
        if args.max_minutes is not None and wall - wall_before > 60 * args.max_minutes:
            break
    wall = wall_before + time.time() - t_start
    checkpoint(step, wall)
    if bar:
        bar.close()
    if distributed:
        dist.destroy_process_group()
    if rank != 0:
        return 0

    net.eval()
    dims = [args.dim] if args.dim else args.eval_dims
    results = {(str(n) if args.dim else f"d={d} n={n}"):
               evaluate({"DiScoFormer": DiScoFormer(net.cpu(), dim=d), "Scott KDE": KDE("scott")}, d, n,
                        args.eval_mixtures, oracle=False)
               for d in dims for n in args.eval_sizes}
    card = {"command": " ".join(["python -m particlescore.training"] + (argv if argv is not None else sys.argv[1:])),
            "git_commit": git_commit(), "particlescore_version": __version__, "seed": args.seed,
            "steps_done": step, "steps_planned": args.steps, "world_size": world, "wall_seconds": round(wall, 1),
            "finished": step >= args.steps, "config": config.to_dict(),
            "evaluation": results}
    if args.families != {"gmm": 1.0}:
        card["families"] = args.families
    if args.finetune_from is not None:
        card["finetuned_from"] = {"path": str(args.finetune_from), "sha256": file_sha256(args.finetune_from),
                                  "card": json.loads(start_meta.get("card", "{}"))}
    if args.init_from is not None:  # a two-stage build: record what stage 1 was
        card["init_from"] = {"path": str(args.init_from), "sha256": file_sha256(args.init_from),
                             "card": json.loads(load_weights(args.init_from)[1].get("card", "{}"))}
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = save_weights(net, out, extra={"card": card})
    card["sha256"] = sha
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    if log:
        log.write(json.dumps({"event": "done", "card": card}) + "\n")
        log.close()
    print(json.dumps(card["evaluation"], indent=1))
    return 0
