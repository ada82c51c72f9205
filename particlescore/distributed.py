"""Particles sharded across processes with ``torch.distributed`` (``torchrun``).

``torchrun --nproc_per_node P -m particlescore run CONFIG.toml --out run.nc`` starts P
processes (ranks). Every rank holds the whole ensemble ``x`` (n, d) and takes the same steps;
the two O(n²) parts of a step are split by rows, rank r owning the particles
``shard_bounds(n, r, P) = [start, stop)``:

* the score: rank r asks the estimator for the queries ``x[start:stop]`` with the full context
  ``x`` (:func:`estimate`);
* the Landau pair sums: rank r computes ``dv_i/dt`` for its rows ``i`` against all ``j``
  (:class:`particlescore.physics.Landau` asks :func:`current_shard`);

and :func:`all_gather_rows` puts the rows back together, so every rank continues with the
same full arrays (bit for bit: each rank runs the same operations on the same data). Rank 0
alone writes the trajectory file. The process group uses gloo on the CPU and nccl on CUDA
(:func:`setup`, from torchrun's environment: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…).
Outside :func:`sharding` (or with one process) nothing is sharded.
"""
from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed as dist

__all__ = ["launched_world_size", "setup", "is_active", "world_size", "rank", "is_main", "barrier",
           "shard_bounds", "sharding", "current_shard", "all_gather_rows", "estimate"]

_SHARDING = False


def launched_world_size() -> int:
    """Processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from None


def setup(device: torch.device) -> bool:
    """Join torchrun's process group (gloo for ``cpu``, nccl for ``cuda``) when launched with
    more than one process; returns whether the run is distributed. Idempotent."""
    if is_active():
        return True
    if launched_world_size() <= 1:
        return False
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed: cannot run under torchrun")
    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start distributed runs with torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)      # runtime.resolve_device gave this rank its LOCAL_RANK's GPU
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    atexit.register(_teardown)
    return True


def _teardown() -> None:
    """Leave the process group before the interpreter exits (a rank that exits with live gloo
    threads aborts with "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # exiting anyway: never turn a good run into a failure here
            pass


def is_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if is_active():
        dist.barrier()


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank_`` of ``world``: contiguous blocks whose sizes
    differ by at most one (the first ``n mod world`` ranks take one more)."""
    if not 0 <= rank_ < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank_}")
    base, extra = divmod(int(n), int(world))
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


@contextlib.contextmanager
def sharding(enabled: bool = True):
    """Within the block, physics and :func:`estimate` split their rows across the ranks."""
    global _SHARDING
    before = _SHARDING
    _SHARDING = bool(enabled) and is_active()
    try:
        yield _SHARDING
    finally:
        _SHARDING = before


def current_shard(n: int) -> tuple[int, int] | None:
    """This rank's rows of an n-particle ensemble while sharding, else None."""
    if not _SHARDING:
        return None
    return shard_bounds(n, dist.get_rank(), dist.get_world_size())


def all_gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's ``local`` rows (its :func:`current_shard` of ``n``) into (n, ...).

    Shards are padded to the largest one (collectives need equal sizes) and trimmed after."""
    world = dist.get_world_size()
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    size = max(stop - start for start, stop in bounds)
    padded = local.new_zeros((size,) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[: stop - start] for piece, (start, stop) in zip(pieces, bounds)])


def estimate(estimator, x: torch.Tensor):
    """``estimator(x)`` -> (log_density (n,), score (n, d)); while sharding, each rank evaluates
    its own queries against the full context and the rows are all-gathered."""
    n = x.shape[0]
    shard = current_shard(n)
    if shard is None:
        return estimator(x)
    start, stop = shard
    log_density, score = estimator(x, x[start:stop])
    return all_gather_rows(log_density, n), all_gather_rows(score, n)
