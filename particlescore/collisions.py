"""A score-based Landau collision operator acting cell by cell, for anyone's particle-in-cell loop.

In a spatially inhomogeneous particle code, collisions act on the velocities of the particles
in each spatial cell separately. Within a cell of ``n_c`` particles the homogeneous particle
Landau equation (Carrillo, Hu, Wang & Wu, J. Comput. Phys. X 2020; the score-based form of
Ilin, Hu & Wang, "A score-based particle method for homogeneous Landau equation", 2024)

    dv_i/dt = U_i = −(B/n_c) Σ_{j in cell(i)} |z|^γ (|z|² I − z zᵀ)(s_i − s_j),   z = v_i − v_j,

moves every particle, with ``s_i ≈ ∇_v log f_c(v_i)`` the score of that cell's velocity
distribution from any :class:`~particlescore.estimators.ScoreEstimator`. Estimators that
evaluate many contexts in one call (:class:`BatchedScoreEstimator`, e.g. DiScoFormer's
``evaluate_cells``) get all cells at once; the others are called once per cell.

Usage (plain numpy or torch in and out, no particlescore solver needed)::

    op = LandauCollisions(ps.DiScoFormer.pretrained(dim=2), gamma=0.0, B=1/24)
    v = op.step(v, cell, dt)        # v (N, d), cell (N,) int ids -> (N, d), same type/dtype

Properties (tested in tests/test_collisions.py):

* **Momentum** of every cell is conserved to round-off: the pair term is odd in ``(i, j)``.
* **Energy** ``Σ|v|²`` of every cell is conserved by the continuous dynamics: ``Σ_i v_i·U_i = 0``
  exactly (``A(z)z = 0`` and the pair antisymmetry). The time stepping therefore changes it only
  by its truncation defect: ``integrator="euler"`` (``v + dt·U(v)``) by ``+dt²Σ|U(v)|²``, i.e.
  ``O(dt²)`` per step; ``integrator="heun"`` (explicit trapezoid: ``v* = v + dt·U(v)``,
  ``v + dt/2·(U(v) + U(v*))``, the score re-estimated at ``v*``) by
  ``+(dt²/4)Σ|U(v*) − U(v)|² = O(dt⁴)`` per step. Both only ever add energy.
* **Small cells**: a cell holding ``n_c ≤ d`` particles (including an empty cell) cannot be
  whitened (its sample covariance is singular), so no score estimator can be applied; such
  cells are skipped and their particles' velocities returned unchanged. ``last_skipped_cells``
  lists them after each call.
* **d = 1**: ``A(z) = |z|² − z² = 0`` in one velocity dimension, so the Landau operator
  vanishes identically; a ValueError says so.
* Bad input (NaN/inf velocities, cell ids of the wrong shape, type or sign, a non-positive
  ``dt``) raises ValueError before anything is computed; inputs are never modified.

Random batch method (``random_batch=p``, Jin, Li & Liu, J. Comput. Phys. 2020; Carrillo, Jin
& Tang 2022): each step, each cell's particles are shuffled into batches of ``p`` that interact
only among themselves (O(N·p) pair terms instead of O(Σ n_c²)); momentum is still conserved per
batch. The shuffle comes from ``generator`` (a ``numpy.random.Generator``) passed to
:meth:`step`, else from the operator's own generator seeded with ``seed``.

Warm-started cells (``warm_start=True``, for batched estimators whose ``evaluate_cells`` takes a
``state``, e.g. DiScoFormer): the operator keeps each cell's last mixture fit between calls
(keyed by cell id) and the estimator refines it by a few EM steps instead of a fresh split/BIC
search (:meth:`particlescore.discoformer.DiScoFormer.evaluate_cells`). The state is the
operator's: :meth:`LandauCollisions.state_dict` / :meth:`LandauCollisions.load_state_dict` save
and restore it (the PIC stores it with every particle record, so a resumed run is bitwise the
uninterrupted one), :meth:`LandauCollisions.reset` forgets it. Results then depend on the call
history, as for the solver's warm start.

Moment projection (``moment_projection=True``): each cell's scores are corrected by
:func:`particlescore.stein.project_score` at the cell's own particles before the pair sums, so
that they obey Stein's identity on the cell's empirical measure for the fields that drive its
second moments (docs/moment_projection.md). For Maxwell molecules (γ = 0) every cell's covariance
then follows the exact moment ODE ``dΣ/dt = 4B(tr Σ·I − d·Σ)`` whatever the estimator; without it,
a smooth score misses that rate by the cell's sampling noise (O(n_c^{-1/2})). For γ ≠ 0 the same
identities still hold after the correction, but they no longer close the moment equations.
"""
from __future__ import annotations

import inspect
import math
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from . import cell_kernels
from .estimators import ScoreEstimator
from .stein import project_score

__all__ = ["LandauCollisions", "BatchedScoreEstimator", "INTEGRATORS", "cell_moments"]

INTEGRATORS = ("euler", "heun")


@runtime_checkable
class BatchedScoreEstimator(Protocol):
    """A score estimator that evaluates many independent contexts in one call:
    ``evaluate_cells(contexts (C, n_max, d), counts (C,)) -> (log_f (C, n_max), score (C, n_max, d))``,
    cell ``c`` being ``contexts[c, :counts[c]]`` (the rest padding); see
    :meth:`particlescore.discoformer.DiScoFormer.evaluate_cells`."""

    def evaluate_cells(self, contexts, counts): ...


# --------------------------------------------------------------------------- input handling
def _velocities(v) -> tuple[np.ndarray, callable]:
    """(N, d) float numpy/torch -> float64 numpy and a converter back to the caller's type/dtype."""
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point():
            raise ValueError(f"v must be a floating-point tensor, got {v.dtype}")
        dtype, device = v.dtype, v.device
        arr = v.detach().cpu().to(torch.float64).numpy()

        def back(out: np.ndarray):
            return torch.from_numpy(out).to(device=device, dtype=dtype)
    elif isinstance(v, np.ndarray):
        if v.dtype.kind != "f":
            raise ValueError(f"v must be a floating-point array, got dtype {v.dtype}")
        dtype = v.dtype
        arr = v.astype(np.float64)

        def back(out: np.ndarray):
            return out.astype(dtype, copy=False)
    else:
        raise ValueError(f"v must be a numpy array or torch tensor of shape (N, d), got {type(v).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"v must have shape (N, d), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64), back


def _check_finite(v: np.ndarray) -> None:
    if not np.isfinite(v).all():
        row = int(np.flatnonzero(~np.isfinite(v).all(1))[0])
        raise ValueError(f"v contains NaN or inf (first at particle {row}); nothing was changed")


def _cell_ids(cell, n: int) -> np.ndarray:
    if isinstance(cell, torch.Tensor):
        cell = cell.detach().cpu().numpy()
    if not isinstance(cell, np.ndarray):
        raise ValueError(f"cell must be a numpy array or torch tensor of integer ids, got {type(cell).__name__}")
    if cell.dtype.kind not in "iu":
        raise ValueError(f"cell ids must be integers, got dtype {cell.dtype}")
    if cell.shape != (n,):
        raise ValueError(f"cell must have shape ({n},) (one id per particle of v), got {cell.shape}")
    if n and cell.min() < 0:
        raise ValueError(f"cell ids must be non-negative, got {int(cell.min())}")
    return cell.astype(np.int64, copy=False)


def _check_dt(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.floating)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite float, got {dt!r}")
    return float(dt)


def cell_moments(v, cell, n_cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell ``counts (C,)``, ``mean (C, d)`` and covariance ``(C, d, d)`` (1/n_c; NaN for
    empty cells) of velocities ``v`` (N, d) with cell ids ``cell`` (N,) in ``[0, n_cells)``."""
    v = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
    cell = np.asarray(cell.detach().cpu() if isinstance(cell, torch.Tensor) else cell)
    d = v.shape[1]
    counts = np.bincount(cell, minlength=n_cells)[:n_cells]
    with np.errstate(invalid="ignore", divide="ignore"):
        sums = np.zeros((n_cells, d))
        np.add.at(sums, cell, v)
        mean = sums / counts[:, None]
        centred = v - mean[cell]
        outer = np.zeros((n_cells, d, d))
        np.add.at(outer, cell, centred[:, :, None] * centred[:, None, :])
        cov = outer / counts[:, None, None]
    return counts, mean, cov


# --------------------------------------------------------------------------- operator
class LandauCollisions:
    """Cell-wise Landau collision operator (module docstring).

    ``estimator``: any ScoreEstimator; ``gamma``: the kernel exponent (0 Maxwell molecules,
    −3 Coulomb; for ``gamma < 0`` the weight is ``(|z|² + δ_c²)^{γ/2}`` with ``δ_c =
    regularization``, or ``1e-3`` times the cell's RMS velocity spread per coordinate when None);
    ``B``: the collision constant (1/24 the usual normalisation; the collision frequency of a
    Maxwell plasma scales with it: a cell's covariance relaxes at rate ``4dB``);
    ``random_batch``: None for all pairs in a cell, or the batch size ``p ≥ 2``;
    ``integrator``: ``"euler"`` or ``"heun"``; ``batched``: None to use the estimator's batched
    call when it has one (:class:`BatchedScoreEstimator`), False to loop over cells; ``seed``:
    seeds the operator's own generator for random batches; ``warm_start``: carry each cell's
    mixture fit from call to call (module docstring; needs a batched estimator whose
    ``evaluate_cells`` takes ``state``); ``moment_projection``: correct each cell's scores by
    :func:`particlescore.stein.project_score` (module docstring).

    Note on stateful estimators: an estimator constructed with ``warm_start=True`` carries state
    from one call to the next, which in the per-cell loop would pass from one cell to another;
    give the operator an estimator without warm start and use the operator's ``warm_start``.
    """

    def __init__(self, estimator, gamma: float = 0.0, B: float = 1.0 / 24.0, random_batch: int | None = None, *,
                 regularization: float | None = None, integrator: str = "euler", batched: bool | None = None,
                 seed: int = 0, warm_start: bool = False, moment_projection: bool = False):
        if not callable(estimator):
            raise ValueError(f"estimator must be a score estimator est(context) -> (log_f, score), "
                             f"got {type(estimator).__name__}")
        for name, value in (("gamma", gamma), ("B", B)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite float, got {value!r}")
        if B < 0:
            raise ValueError(f"B must be non-negative, got {B!r}")
        if random_batch is not None and (isinstance(random_batch, bool) or not isinstance(random_batch, int)
                                         or random_batch < 2):
            raise ValueError(f"random_batch must be None or an int >= 2, got {random_batch!r}")
        if regularization is not None and (isinstance(regularization, bool)
                                           or not isinstance(regularization, (int, float))
                                           or not math.isfinite(regularization) or regularization < 0):
            raise ValueError(f"regularization must be None or a non-negative float, got {regularization!r}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
        if batched not in (None, True, False):
            raise ValueError(f"batched must be None, True or False, got {batched!r}")
        can_batch = isinstance(estimator, BatchedScoreEstimator)
        if batched and not can_batch:
            raise ValueError(f"batched=True needs an estimator with evaluate_cells(contexts, counts); "
                             f"{type(estimator).__name__} has none")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not isinstance(warm_start, bool):
            raise ValueError(f"warm_start must be True or False, got {warm_start!r}")
        if warm_start and not (can_batch and batched is not False
                               and "state" in inspect.signature(estimator.evaluate_cells).parameters):
            raise ValueError(f"warm_start=True needs the batched call of an estimator whose evaluate_cells takes a "
                             f"state (e.g. DiScoFormer); {type(estimator).__name__} with batched={batched} has none")
        if not isinstance(moment_projection, bool):
            raise ValueError(f"moment_projection must be True or False, got {moment_projection!r}")
        self.estimator = estimator
        self.moment_projection = moment_projection
        self.gamma, self.B = float(gamma), float(B)
        self.random_batch = random_batch
        self.regularization = None if regularization is None else float(regularization)
        self.integrator = integrator
        self.batched = can_batch if batched is None else batched
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self.warm_start = warm_start
        self._cell_state: dict | None = {} if warm_start else None   # evaluate_cells' per-cell fits
        #: cell ids left unchanged by the last call because they held n_c ≤ d particles
        self.last_skipped_cells: np.ndarray = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ public API
    def step(self, v, cell, dt: float, *, generator: np.random.Generator | None = None):
        """New velocities after a collision step of length ``dt``: ``v (N, d)`` numpy or torch,
        ``cell (N,)`` integer ids -> ``(N, d)`` of v's type and dtype (v is not modified)."""
        arr, back = _velocities(v)
        cell = _cell_ids(cell, arr.shape[0])
        dt = _check_dt(dt)
        self._check_dim(arr.shape[1])
        _check_finite(arr)
        return back(self._step(arr, cell, dt, generator))

    def velocity(self, v, cell, *, generator: np.random.Generator | None = None):
        """The collision velocity field ``U`` (N, d) of the module docstring at ``v``."""
        arr, back = _velocities(v)
        cell = _cell_ids(cell, arr.shape[0])
        self._check_dim(arr.shape[1])
        _check_finite(arr)
        layout = self._layout(cell, arr.shape[1])
        out = np.zeros_like(arr)
        if len(layout["perm"]):
            order = self._batches(layout, generator)
            out[layout["perm"]] = self._velocity_sorted(np.ascontiguousarray(arr[layout["perm"]]), layout, order)
        return back(out)

    def step_padded(self, v, counts, dt: float, *, generator: np.random.Generator | None = None):
        """Padded layout: ``v (C, n_max, d)`` with cell ``c`` in rows ``v[c, :counts[c]]`` ->
        the same shape, padding rows returned unchanged."""
        is_torch = isinstance(v, torch.Tensor)
        if not isinstance(v, (np.ndarray, torch.Tensor)) or v.ndim != 3:
            raise ValueError(f"v must be a (C, n_max, d) numpy array or torch tensor, got "
                             f"{getattr(v, 'shape', type(v).__name__)}")
        C, n_max, d = v.shape
        k = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
        if k.shape != (C,) or k.dtype.kind not in "iu":
            raise ValueError(f"counts must be an integer array of shape ({C},), got {k.shape} of {k.dtype}")
        if C and (k.min() < 0 or k.max() > n_max):
            raise ValueError(f"counts must lie in [0, n_max = {n_max}], got {k.tolist()[:8]}")
        mask = np.arange(n_max)[None, :] < k[:, None]                       # (C, n_max)
        flat = v[torch.from_numpy(mask)] if is_torch else v[mask]            # (N, d), cell-major
        cell = np.repeat(np.arange(C, dtype=np.int64), k)
        new = self.step(flat, cell, dt, generator=generator)
        out = v.clone() if is_torch else v.copy()
        if is_torch:
            out[torch.from_numpy(mask)] = new
        else:
            out[mask] = new
        return out

    def describe(self) -> dict:
        """Plain-data description (recorded in PIC output files)."""
        est = self.estimator
        return {"operator": "LandauCollisions", "gamma": self.gamma, "B": self.B,
                "random_batch": self.random_batch, "regularization": self.regularization,
                "integrator": self.integrator, "batched": self.batched, "warm_start": self.warm_start,
                "moment_projection": self.moment_projection,
                "estimator": est.describe() if isinstance(est, ScoreEstimator) else type(est).__name__}

    def __repr__(self) -> str:
        return (f"LandauCollisions({type(self.estimator).__name__}, gamma={self.gamma}, B={self.B}, "
                f"random_batch={self.random_batch}, integrator={self.integrator!r}, batched={self.batched}, "
                f"warm_start={self.warm_start}, moment_projection={self.moment_projection})")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the operator carries between calls, as CPU tensors: ``cells.<key>`` (the
        per-cell warm-start fits; empty without ``warm_start`` or before the first call).
        :meth:`load_state_dict` of it makes the next call bitwise equal to an uninterrupted run."""
        return {f"cells.{k}": v.detach().cpu().clone().contiguous() for k, v in (self._cell_state or {}).items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (ValueError if it does not belong to this operator)."""
        if not isinstance(state, dict) or any(not (isinstance(k, str) and k.startswith("cells.")
                                                   and isinstance(v, torch.Tensor)) for k, v in state.items()):
            raise ValueError("not a LandauCollisions state: expected a dict of 'cells.<key>' tensors")
        if state and not self.warm_start:
            raise ValueError("this state holds warm-start cell fits, but the operator has warm_start=False")
        if self.warm_start:
            self._cell_state = {k[len("cells."):]: v.clone() for k, v in state.items()}

    def reset(self) -> None:
        """Forget the warm-start cell fits (the next call searches every cell afresh)."""
        if self.warm_start:
            self._cell_state = {}

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_dim(d: int) -> None:
        if d < 2:
            raise ValueError(f"the Landau collision operator needs d_v >= 2 velocity dimensions, got d = {d}: "
                             f"in 1V the projection A(z) = |z|^2 - z^2 is 0, so the operator vanishes identically")

    def _layout(self, cell: np.ndarray, d: int) -> dict:
        """Sort the particles of active cells (n_c > d) by cell, stably: ``perm`` (N_active,) rows
        of v, ``counts`` and ``offsets`` (C+1,) of the active cells, ``cell_of`` (N_active,) of the
        sorted rows. Cells with n_c ≤ d are skipped (recorded in ``last_skipped_cells``)."""
        ids, inverse, counts = np.unique(cell, return_inverse=True, return_counts=True)
        active = counts > d
        self.last_skipped_cells = ids[~active]
        rank = np.full(len(ids), -1, dtype=np.int64)
        rank[active] = np.arange(int(active.sum()))
        particle_rank = rank[inverse.reshape(-1)]                            # (N,) -1 for skipped cells
        keep = np.flatnonzero(particle_rank >= 0)
        perm = keep[np.argsort(particle_rank[keep], kind="stable")]
        cell_counts = counts[active]
        return {"perm": perm, "counts": cell_counts, "ids": ids[active].astype(np.int64),
                "offsets": np.concatenate([[0], np.cumsum(cell_counts)]).astype(np.int64),
                "cell_of": np.repeat(np.arange(len(cell_counts), dtype=np.int64), cell_counts)}

    def _step(self, v: np.ndarray, cell: np.ndarray, dt: float, generator) -> np.ndarray:
        layout = self._layout(cell, v.shape[1])
        perm = layout["perm"]
        out = v.copy()
        if len(perm) == 0 or self.B == 0.0:
            return out
        order = self._batches(layout, generator)
        v0 = np.ascontiguousarray(v[perm])
        u0 = self._velocity_sorted(v0, layout, order)
        if self.integrator == "euler":
            out[perm] = v0 + dt * u0
        else:
            v1 = v0 + dt * u0
            u1 = self._velocity_sorted(v1, layout, order)
            out[perm] = v0 + (0.5 * dt) * (u0 + u1)
        return out

    def _batches(self, layout: dict, generator) -> np.ndarray | None:
        """This step's within-cell shuffle for the random batch method (None without it)."""
        if self.random_batch is None:
            return None
        rng = self._rng if generator is None else generator
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"generator must be a numpy.random.Generator, got {type(rng).__name__}")
        keys = rng.random(len(layout["cell_of"]))
        # sort by (cell, random key): a uniform random permutation inside every cell
        return np.lexsort((keys, layout["cell_of"])).astype(np.int64)

    def _scores(self, v: np.ndarray, layout: dict) -> np.ndarray:
        """Scores (N_active, d) of each cell's own velocity distribution at its particles,
        projected per cell when ``moment_projection``."""
        s = self._estimated_scores(v, layout)
        if self.moment_projection and np.isfinite(s).all():
            offsets = layout["offsets"]
            for lo, hi in zip(offsets[:-1], offsets[1:]):
                s[lo:hi] = project_score(torch.from_numpy(v[lo:hi]), torch.from_numpy(s[lo:hi])).numpy()
        return s

    def _estimated_scores(self, v: np.ndarray, layout: dict) -> np.ndarray:
        """The estimator's scores (N_active, d) of each cell's velocity distribution at its particles."""
        offsets, counts = layout["offsets"], layout["counts"]
        C, d = len(counts), v.shape[1]
        if self.batched:
            n_max = int(counts.max())
            contexts = np.zeros((C, n_max, d))
            mask = np.arange(n_max)[None, :] < counts[:, None]
            contexts[mask] = v
            # padding rows repeat the cell's first particle: finite, ignored by the estimator
            contexts[~mask] = np.repeat(v[offsets[:-1]], n_max - counts, axis=0)
            if self._cell_state is None:
                _, score = self.estimator.evaluate_cells(contexts, counts.astype(np.int64))
            else:
                _, score = self.estimator.evaluate_cells(contexts, counts.astype(np.int64), state=self._cell_state,
                                                         cells=layout["ids"])
            score = np.asarray(score.detach().cpu() if isinstance(score, torch.Tensor) else score, dtype=np.float64)
            return np.ascontiguousarray(score[mask])
        out = np.empty_like(v)
        for c in range(C):
            lo, hi = offsets[c], offsets[c + 1]
            _, score = self.estimator(v[lo:hi])
            out[lo:hi] = np.asarray(score.detach().cpu() if isinstance(score, torch.Tensor) else score,
                                    dtype=np.float64)
        return out

    def _deltas(self, v: np.ndarray, layout: dict) -> np.ndarray:
        C, d = len(layout["counts"]), v.shape[1]
        if self.gamma >= 0:
            return np.zeros(C)
        if self.regularization is not None:
            return np.full(C, self.regularization)
        cell_of, counts = layout["cell_of"], layout["counts"]
        sums = np.zeros((C, d))
        np.add.at(sums, cell_of, v)
        centred = v - (sums / counts[:, None])[cell_of]
        spread = np.sqrt(np.bincount(cell_of, (centred * centred).sum(1), minlength=C) / (counts * d))
        return 1e-3 * np.where(spread > 0, spread, 1.0)

    def _velocity_sorted(self, v: np.ndarray, layout: dict, order: np.ndarray | None) -> np.ndarray:
        """U (N_active, d) for velocities sorted by cell."""
        s = self._scores(v, layout)
        if not np.isfinite(s).all():
            raise ValueError(f"the score estimator {type(self.estimator).__name__} returned NaN or inf scores; "
                             f"nothing was changed")
        offsets, cell_of = layout["offsets"], layout["cell_of"]
        if order is not None:
            return cell_kernels.cell_landau_velocity_random_batch(
                v, s, order, offsets, cell_of, self.random_batch, self.gamma, self.B, self._deltas(v, layout))
        if self.gamma == 0.0:
            return cell_kernels.cell_landau_velocity_maxwell(v, s, offsets, self.B)
        return cell_kernels.cell_landau_velocity(v, s, offsets, cell_of, self.gamma, self.B, self._deltas(v, layout))
