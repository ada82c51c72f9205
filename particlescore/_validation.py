"""Input checks shared by every public entry point (units and validation at the edges).

Inside the library everything is a plain ``torch.Tensor`` of shape ``(n, d)``; this module
turns user input (numpy or torch) into that form, rejects what cannot be right with a
``ValueError`` that names the problem and the offending shape or index, and hands back a
function that converts results to the caller's array type and dtype.
"""
from __future__ import annotations

import math
import types
import typing
from typing import Callable

import numpy as np
import torch

__all__ = ["as_particles", "as_queries", "check_min_particles", "check_int", "check_float", "check_type",
           "seeded_generator", "seeded_numpy_generator"]


def _first_bad_index(x: torch.Tensor) -> tuple[int, ...]:
    bad = (~torch.isfinite(x)).nonzero()[0]
    return tuple(int(i) for i in bad)


def as_particles(values, name: str = "context") -> tuple[torch.Tensor, Callable]:
    """Validate an ``(n, d)`` particle array; return it as a tensor and a converter back.

    numpy in -> numpy out, torch in -> torch out; floating dtypes are kept, integer input
    becomes float64. The tensor shares memory with a torch input (no copy).
    """
    if isinstance(values, torch.Tensor):
        x = values
        if not x.is_floating_point():
            x = x.to(torch.float64)

        def to_user(t: torch.Tensor) -> torch.Tensor:
            return t
    elif isinstance(values, np.ndarray) or isinstance(values, (list, tuple)):
        arr = np.asarray(values)
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
        x = torch.from_numpy(np.ascontiguousarray(arr))

        def to_user(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor of shape (n, d), got {type(values).__name__}")
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n, d) (one row per particle), got shape {tuple(x.shape)}"
            + ("; for 1-d data pass x[:, None]" if x.ndim == 1 else "")
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero dimensions: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        idx = _first_bad_index(x)
        raise ValueError(f"{name} contains NaN or inf, first at index {idx} (shape {tuple(x.shape)})")
    return x, to_user


def as_queries(values, context: torch.Tensor) -> torch.Tensor:
    """Validate query points against the context: same dimension, same dtype/device as context."""
    y, _ = as_particles(values, "queries")
    if y.shape[1] != context.shape[1]:
        raise ValueError(
            f"queries have dimension {y.shape[1]} but the context has dimension {context.shape[1]} "
            f"(queries shape {tuple(y.shape)}, context shape {tuple(context.shape)})"
        )
    return y.to(dtype=context.dtype, device=context.device)


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int (numpy integers accepted, bools refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    return int(value)


def check_float(name: str, value, *, positive: bool = False, minimum: float | None = None) -> float:
    """``value`` as a finite float (ints and numpy reals accepted, bools refused); ``positive``:
    ``> 0``; ``minimum``: ``>= minimum``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(value) and not (positive and value <= 0) and not (minimum is not None and value < minimum)
    if not ok:
        what = "a positive finite float" if positive else "a finite float" + ("" if minimum is None else f" >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_type(value, kind, where: str):
    """``value`` if it is of the annotated ``kind`` (int, float, bool, str or a union of them)."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    for k in (allowed := [k for k in (typing.get_args(kind) if union else (kind,)) if k is not type(None)]):
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if k in (int, str, bool) and isinstance(value, k) and not (k is int and isinstance(value, bool)):
            return value
    if not (plain := [k for k in allowed if k in (int, float, str, bool)]):
        raise ValueError(f"{where} cannot be set from a configuration (type {kind})")
    raise ValueError(f"{where}: expected {' or '.join(k.__name__ for k in plain)}, got {type(value).__name__} ({value!r})")


def check_min_particles(x: torch.Tensor, minimum: int, why: str) -> None:
    """Raise if fewer than ``minimum`` particles are given (e.g. to estimate a covariance)."""
    if x.shape[0] < minimum:
        raise ValueError(f"need at least {minimum} particles {why}, got {x.shape[0]} (context shape {tuple(x.shape)})")


def _seed_sequence(keys: tuple, who: str) -> np.random.SeedSequence:
    if not keys or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 for k in keys):
        raise ValueError(f"{who} needs non-negative int keys, got {keys!r}")
    return np.random.SeedSequence([int(k) for k in keys])


def seeded_generator(*keys: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from integer ``keys`` (e.g. ``(seed, step)``) through
    ``numpy.random.SeedSequence``: the same keys replay the same draws (a resumed run sees the
    draws of an uninterrupted one), different keys give independent streams."""
    words = _seed_sequence(keys, "seeded_generator").generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 31) ^ int(words[1]))    # < 2^63


def seeded_numpy_generator(*keys: int) -> np.random.Generator:
    """The numpy counterpart of :func:`seeded_generator` (same keys, same ``SeedSequence``), for
    code that draws with numpy (the PIC's collision random batches)."""
    return np.random.default_rng(_seed_sequence(keys, "seeded_numpy_generator"))
