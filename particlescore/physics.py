"""Right-hand sides of the particle equations: ``physics(t, x, score) -> dx/dt`` (docs/equations.md).

Each physics object maps the particle states ``x`` (n, d) and their scores ``s ≈ ∇ log f(x)``
(n, d) at time ``t`` to the particle velocities ``dx/dt`` (n, d). numpy in -> numpy out,
torch in -> torch out (float64 inside; the input dtype is kept on output).

Physics with per-step randomness (the random batch method) draw it in :meth:`at_step` from
an explicit ``torch.Generator`` and return the right-hand side to use for that whole step
(both stages of a two-stage integrator use the same batches).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from . import distributed, landau_kernels, registry

__all__ = ["Landau", "FokkerPlanck", "landau_torch_reference", "landau_velocity_torch",
           "landau_velocity_torch_random_batch"]


def _pair(x, score):
    """Validate ``(x, score)``; return float64 torch tensors and a converter back to the input type."""
    if isinstance(x, np.ndarray):
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        st = torch.from_numpy(np.ascontiguousarray(np.asarray(score), dtype=np.float64))
        dtype = x.dtype

        def back(t):
            return t.numpy().astype(dtype, copy=False)
    elif isinstance(x, torch.Tensor):
        if not isinstance(score, torch.Tensor):
            score = torch.as_tensor(np.asarray(score))
        xt = x.detach().to(torch.float64)
        st = score.detach().to(device=x.device, dtype=torch.float64)
        dtype, device = x.dtype, x.device

        def back(t):
            return t.to(device=device, dtype=dtype)
    else:
        raise ValueError(f"x must be a numpy array or torch tensor of shape (n, d), got {type(x).__name__}")
    if xt.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(xt.shape)}")
    if st.shape != xt.shape:
        raise ValueError(f"score must have the shape of x {tuple(xt.shape)}, got {tuple(st.shape)}")
    return xt, st, back


def _numpy64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)


class Landau:
    """Homogeneous Landau equation, particle form (Carrillo, Hu, Wang & Wu, J. Comput. Phys. X 2020):

    ``dv_i/dt = −(B/n) Σ_j |z|^γ (|z|² I − z zᵀ)(s_i − s_j)``, ``z = v_i − v_j``.

    ``gamma = 0``: Maxwell molecules; ``gamma = −3``: Coulomb. For ``gamma < 0`` the weight
    is regularised as ``(|z|² + δ²)^{γ/2}`` with ``δ = regularization``; ``None`` picks
    ``δ = 1e-3·σ`` with ``σ = sqrt(tr Σ̂/d)`` the RMS spread of the current ensemble per
    coordinate (so ``δ ≈ 1e-3`` for unit-temperature data). For ``gamma ≥ 0`` no
    regularisation is applied (``δ`` ignored). The usual constant is ``B = 1/24``.

    ``random_batch_size = p``: random batch method — each step the particles are split into
    random batches of ``p`` that interact only among themselves (O(n·p) per evaluation;
    momentum still conserved); draw the batches with :meth:`at_step`. Runs in numba
    (:mod:`particlescore.landau_kernels`), O(n) memory: O(n²·d) pair sums in general, and for
    Maxwell molecules (``gamma = 0``, full interactions) the exact O(n·d²) moment expansion
    :func:`~particlescore.landau_kernels.landau_velocity_maxwell`.
    """

    def __init__(self, gamma: float = 0.0, B: float = 1.0 / 24.0, regularization: float | None = None,
                 random_batch_size: int | None = None):
        for name, value in (("gamma", gamma), ("B", B)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite float, got {value!r}")
        if not B > 0:
            raise ValueError(f"B must be positive, got {B!r}")
        if regularization is not None:
            if isinstance(regularization, bool) or not isinstance(regularization, (int, float)) \
                    or not math.isfinite(regularization) or regularization < 0:
                raise ValueError(f"regularization must be a non-negative float or None, got {regularization!r}")
            regularization = float(regularization)
        if random_batch_size is not None:
            if isinstance(random_batch_size, bool) or not isinstance(random_batch_size, int) or random_batch_size < 2:
                raise ValueError(f"random_batch_size must be an int >= 2 or None, got {random_batch_size!r}")
        self.gamma = float(gamma)
        self.B = float(B)
        self.regularization = regularization
        self.random_batch_size = random_batch_size
        #: this step's batch permutation (set by :meth:`at_step`), None for full interactions
        self.permutation: np.ndarray | None = None
        self._generator: torch.Generator | None = None

    @property
    def stochastic(self) -> bool:
        """True when each step needs random draws (random batch method)."""
        return self.random_batch_size is not None

    def at_step(self, generator: torch.Generator) -> "Landau":
        """The right-hand side for one time step: a copy holding this step's random batches.

        The permutation is ``torch.randperm(n, generator=generator)``, drawn at the first
        evaluation (when ``n`` is known) and kept for the rest of the step. Without random
        batches, returns ``self``.
        """
        if not self.stochastic:
            return self
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        step = Landau(self.gamma, self.B, self.regularization, self.random_batch_size)
        step._generator = generator
        return step

    def delta(self, v: torch.Tensor) -> float:
        """The regularisation ``δ`` used for ensemble ``v`` (0 for ``gamma ≥ 0``)."""
        if self.gamma >= 0:
            return 0.0
        if self.regularization is not None:
            return self.regularization
        n, d = v.shape
        centred = v - v.mean(0)
        spread = math.sqrt(float((centred * centred).sum()) / (n * d))
        return 1e-3 * (spread if spread > 0 else 1.0)

    def __call__(self, t, x, score):
        v, s, back = _pair(x, score)
        n, d = v.shape
        if d < 2:
            raise ValueError(f"the Landau equation needs dimension d >= 2, got x of shape {tuple(v.shape)}")
        delta = self.delta(v)
        shard = distributed.current_shard(n) if self.random_batch_size is None else None
        if shard is not None:  # torchrun: this rank's rows against all particles, then all-gather
            start, stop = shard
            out = landau_velocity_torch(v, s, self.gamma, self.B, delta, rows=(start, stop))
            return back(distributed.all_gather_rows(out, n))
        if v.device.type != "cpu":
            if self.random_batch_size is None:
                return back(landau_velocity_torch(v, s, self.gamma, self.B, delta))
            return back(landau_velocity_torch_random_batch(v, s, self._step_permutation(n, v.device),
                                                           self.random_batch_size, self.gamma, self.B, delta))
        vn, sn = _numpy64(v), _numpy64(s)
        if self.random_batch_size is None and self.gamma == 0.0:
            out = landau_kernels.landau_velocity_maxwell(vn, sn, self.B)
        elif self.random_batch_size is None:
            out = landau_kernels.landau_velocity(vn, sn, self.gamma, self.B, delta)
        else:
            permutation = self._step_permutation(n, torch.device("cpu")).numpy().astype(np.int64)
            out = landau_kernels.landau_velocity_random_batch(
                vn, sn, permutation, self.random_batch_size, self.gamma, self.B, delta)
        return back(torch.from_numpy(out).to(v.device))

    def _step_permutation(self, n: int, device: torch.device) -> torch.Tensor:
        """This step's batch permutation (drawn on the CPU generator at the first evaluation)."""
        if self.permutation is None or len(self.permutation) != n:
            generator = self._generator
            if generator is None:
                raise ValueError("random-batch Landau needs this step's batches: call .at_step(generator) "
                                 "and evaluate the returned object")
            self.permutation = torch.randperm(n, generator=generator).numpy().astype(np.int64)
        return torch.from_numpy(self.permutation).to(device)

    def config(self) -> dict:
        return {"physics": "Landau", "gamma": self.gamma, "B": self.B,
                "regularization": self.regularization, "random_batch_size": self.random_batch_size}

    def __repr__(self) -> str:
        return (f"Landau(gamma={self.gamma}, B={self.B}, regularization={self.regularization}, "
                f"random_batch_size={self.random_batch_size})")


class FokkerPlanck:
    """Fokker–Planck equation ``∂f/∂t = −∇·(b f) + D Δf``, probability-flow particle form
    (Boffi & Vanden-Eijnden 2023): ``dx_i/dt = b(x_i, t) − D s_i``.

    ``drift(t, x) -> b`` takes and returns torch float64 (n, d) (it may use the whole ensemble,
    e.g. a mean-field term); ``diffusion = D ≥ 0``.
    """

    stochastic = False

    def __init__(self, drift: Callable, diffusion: float):
        if not callable(drift):
            raise ValueError(f"drift must be a callable (t, x) -> b, got {type(drift).__name__}")
        if isinstance(diffusion, bool) or not isinstance(diffusion, (int, float)) \
                or not math.isfinite(diffusion) or diffusion < 0:
            raise ValueError(f"diffusion must be a non-negative finite float, got {diffusion!r}")
        self.drift = drift
        self.diffusion = float(diffusion)

    def at_step(self, generator: torch.Generator) -> "FokkerPlanck":
        """No per-step randomness: returns ``self``."""
        return self

    def __call__(self, t, x, score):
        xt, st, back = _pair(x, score)
        b = self.drift(float(t), xt)
        if not isinstance(b, torch.Tensor):
            b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
        if b.shape != xt.shape:
            raise ValueError(f"drift returned shape {tuple(b.shape)}, expected {tuple(xt.shape)}")
        return back(b.to(torch.float64) - self.diffusion * st)

    def config(self) -> dict:
        return {"physics": "FokkerPlanck", "drift": getattr(self.drift, "__name__", type(self.drift).__name__),
                "diffusion": self.diffusion}

    def __repr__(self) -> str:
        return f"FokkerPlanck(drift={getattr(self.drift, '__name__', self.drift)!r}, diffusion={self.diffusion})"


def landau_torch_reference(v, s, gamma: float = 0.0, B: float = 1.0 / 24.0,
                           regularization: float = 0.0) -> torch.Tensor:
    """Plain torch broadcasting version of the Landau velocity (n×n×d temporaries).

    ``−(B/n) Σ_j (|z|² + δ²)^{γ/2} A(z)(s_i − s_j)`` with ``δ = regularization``; the
    ``j = i`` (and any ``z = 0``) term is zero. Only for tests and benchmarks: O(n²·d) memory.
    """
    v = torch.as_tensor(v, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    n = v.shape[0]
    z = v[:, None, :] - v[None, :, :]                                   # (n, n, d)
    u = s[:, None, :] - s[None, :, :]                                   # (n, n, d)
    r2 = (z * z).sum(-1)                                                # (n, n)
    zu = (z * u).sum(-1)                                                # (n, n)
    nonzero = r2 > 0
    if gamma == 0:
        w = nonzero.to(v.dtype)
    else:
        q = torch.where(nonzero, r2 + regularization ** 2, torch.ones_like(r2))
        w = torch.where(nonzero, q ** (0.5 * gamma), torch.zeros_like(r2))
    terms = w[..., None] * (r2[..., None] * u - z * zu[..., None])     # (n, n, d)
    return -(B / n) * terms.sum(1)


# --------------------------------------------------------------------------- torch paths (GPU, sharded rows)
#: Elements of one (rows-chunk × n × d) block of pair terms in the torch paths; bounds memory.
PAIR_BLOCK_ELEMENTS = 2 ** 22


def _pair_terms(z: torch.Tensor, u: torch.Tensor, gamma: float, delta: float) -> torch.Tensor:
    """``Σ_j w(z) (|z|² u − z (z·u))`` over the second-to-last axis; ``z, u`` (..., m, d).

    ``w = (|z|² + δ²)^{γ/2}``, and 0 where ``z = 0`` (the ``j = i`` term, ``A(0) = 0``)."""
    r2 = (z * z).sum(-1)                                                # (..., m)
    zu = (z * u).sum(-1)                                                # (..., m)
    nonzero = r2 > 0
    if gamma == 0.0:
        w = nonzero.to(z.dtype)
    else:
        q = torch.where(nonzero, r2 + delta * delta, torch.ones_like(r2))
        w = 1.0 / (q * torch.sqrt(q)) if gamma == -3.0 else q ** (0.5 * gamma)
        w = torch.where(nonzero, w, torch.zeros_like(w))
    return (w[..., None] * (r2[..., None] * u - z * zu[..., None])).sum(-2)   # (..., d)


def landau_velocity_torch(v: torch.Tensor, s: torch.Tensor, gamma: float, B: float, delta: float,
                          rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The Landau particle velocity in torch, on ``v``'s device (docs/equations.md):

    ``out_i = −(B/n) Σ_j (|z|² + δ²)^{γ/2} (|z|² (s_i−s_j) − z (z·(s_i−s_j)))``, ``z = v_i − v_j``,

    for the rows ``i`` in ``rows = (start, stop)`` (default all) against all ``j``; returns
    (stop − start, d). ``γ = 0`` uses the exact O(n·d²) moment expansion of
    :func:`~particlescore.landau_kernels.landau_velocity_maxwell`; otherwise the pair sums run
    in row chunks of at most :data:`PAIR_BLOCK_ELEMENTS` pair-term elements (O(n) memory).
    Same values as the numba kernels up to round-off. ``v``, ``s``: (n, d) float64.
    """
    n, d = v.shape
    start, stop = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    if gamma == 0.0:
        b = v - v.mean(0)                                               # (n, d) centred velocities
        q = s - s.mean(0)                                               # (n, d) centred scores
        r2 = (b * b).sum(1)                                             # (n,) |b_j|²
        bq = (b * q).sum(1)                                             # (n,) b_j·q_j
        S, T = r2.sum(), bq.sum()
        M_qb, M_bb = q.T @ b, b.T @ b                                   # (d, d)
        R, U = r2 @ q, bq @ b                                           # (d,)
        a, p = b[start:stop], q[start:stop]                             # (m, d) this block's rows
        first = (n * r2[start:stop] + S)[:, None] * p + 2.0 * (a @ M_qb.T) - R
        second = a * (n * bq[start:stop] + T)[:, None] + a @ M_qb + p @ M_bb - U
        return (-B / n) * (first - second)
    chunk = max(1, PAIR_BLOCK_ELEMENTS // max(1, n * d))
    parts = []
    for lo in range(start, stop, chunk):
        hi = min(lo + chunk, stop)
        z = v[lo:hi, None, :] - v[None, :, :]                           # (c, n, d)
        u = s[lo:hi, None, :] - s[None, :, :]                           # (c, n, d)
        parts.append(_pair_terms(z, u, gamma, delta))                   # (c, d)
    out = torch.cat(parts) if parts else v.new_zeros((0, d))
    return (-B / n) * out


def landau_velocity_torch_random_batch(v: torch.Tensor, s: torch.Tensor, permutation: torch.Tensor,
                                       batch_size: int, gamma: float, B: float, delta: float) -> torch.Tensor:
    """Random batch method in torch (same definition as
    :func:`~particlescore.landau_kernels.landau_velocity_random_batch`): the particles
    ``permutation[k·p:(k+1)·p]`` interact among themselves with weight ``−B (n−1)/(n(m−1))``,
    ``m`` the batch's size; a batch of one does not move. Batches run in chunks (O(n·p) memory)."""
    n, d = v.shape
    p = int(batch_size)
    out = torch.zeros_like(v)
    full = (n // p) * p
    groups = [(permutation[:full].view(-1, p), p)] if full else []     # (batches, p)
    if full < n:
        groups.append((permutation[full:].view(1, -1), n - full))
    for index, m in groups:
        if m < 2:
            continue
        scale = -B * (n - 1.0) / (n * (m - 1.0))
        per_chunk = max(1, PAIR_BLOCK_ELEMENTS // (m * m * d))
        for lo in range(0, index.shape[0], per_chunk):
            idx = index[lo:lo + per_chunk]                              # (c, m)
            vb, sb = v[idx], s[idx]                                     # (c, m, d)
            z = vb[:, :, None, :] - vb[:, None, :, :]                   # (c, m, m, d)
            u = sb[:, :, None, :] - sb[:, None, :, :]                   # (c, m, m, d)
            out[idx.reshape(-1)] = scale * _pair_terms(z, u, gamma, delta).reshape(-1, d)
    return out


registry.register("physics", "landau", Landau)
registry.register("physics", "fokker_planck", FokkerPlanck)
