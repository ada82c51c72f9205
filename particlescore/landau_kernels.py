"""Numba kernels for the homogeneous Landau particle velocity (docs/equations.md; Carrillo, Hu, Wang & Wu 2020).

Particle form of the homogeneous Landau equation (Carrillo, Hu, Wang & Wu 2020; Ilin, Hu &
Wang 2024), with ``z = v_i − v_j`` and ``A(z) = |z|² I − z zᵀ``:

    dv_i/dt = −(B/n) Σ_j w(z) A(z) (s_i − s_j),      w(z) = (|z|² + δ²)^{γ/2}.

``γ = 0`` (Maxwell molecules) gives ``w ≡ 1``; ``γ < 0`` (e.g. Coulomb, ``γ = −3``) needs the
regularisation ``δ > 0`` near ``z = 0`` (the caller picks ``δ``; ``δ = 0`` gives ``|z|^γ``).
The ``j = i`` term is zero (``A(0) = 0``) and is skipped. ``A(z)u = |z|² u − z (z·u)`` is
applied without forming a matrix: O(n²·d) time, O(n·d) memory. The weight ``w`` and ``A`` are
even in ``z`` while ``s_i − s_j`` is odd, so the pair terms cancel in Σ_i: momentum
``Σ_i v_i`` is conserved to round-off; ``A(z)z = 0`` conserves energy in continuous time.

For Maxwell molecules (γ = 0) the pair term is a polynomial in ``(v_j, s_j)``, so the sum
over ``j`` collapses to a few ensemble moments: :func:`landau_velocity_maxwell` computes the
same velocities exactly (up to round-off) in O(n·d²) time.

All kernels take float64 C-contiguous arrays; the caller converts.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["landau_velocity", "landau_velocity_random_batch", "landau_velocity_maxwell"]


@numba.njit(inline="always")
def _pair_weight(r2: float, gamma: float, delta2: float) -> float:
    """``(|z|² + δ²)^{γ/2}`` with fast paths for γ = 0 and γ = −3."""
    if gamma == 0.0:
        return 1.0
    q = r2 + delta2
    if gamma == -3.0:
        return 1.0 / (q * math.sqrt(q))
    return q ** (0.5 * gamma)


@numba.njit(inline="always")
def _accumulate_pair(v, s, i, j, d, gamma, delta2, acc):
    """``acc += w(z) (|z|² u − z (z·u))`` with ``z = v_i − v_j``, ``u = s_i − s_j``."""
    r2 = 0.0
    zu = 0.0
    for k in range(d):
        zk = v[i, k] - v[j, k]
        r2 += zk * zk
        zu += zk * (s[i, k] - s[j, k])
    if r2 == 0.0:  # coincident particles: A(0) = 0
        return
    w = _pair_weight(r2, gamma, delta2)
    for k in range(d):
        acc[k] += w * (r2 * (s[i, k] - s[j, k]) - (v[i, k] - v[j, k]) * zu)


#: fastmath subset for the pair sums: reassociation lets LLVM vectorise the reductions over j;
#: no ``nnan``/``ninf`` (the ``δ = 0``, ``γ < 0`` weight is infinite at ``z = 0`` before it is masked)
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(inline="always", fastmath=_FAST)
def _pair_sums_row(vt, st, vi, si, start, stop, gamma, delta2, r2, zu, acc):
    """``acc = Σ_{j ∈ [start, stop)} w(z) (|z|² u − z (z·u))``, ``z = v_i − v_j``, ``u = s_i − s_j``
    (``j = i`` contributes 0: ``z = 0``), over coordinate-major ``vt``, ``st`` (d, n).

    One vectorised pass per coordinate into the buffers ``r2 = |z|²`` and ``zu = z·u``, one for
    the weights (stored in ``r2``'s place as ``w·|z|²``, with ``zu`` → ``w·z·u``), one per output
    coordinate; ``w = 0`` where ``|z|² = 0`` (``A(0) = 0``).
    """
    d = vt.shape[0]
    r2[start:stop] = 0.0
    zu[start:stop] = 0.0
    for k in range(d):
        vk, sk = vt[k], st[k]
        a, b = vi[k], si[k]
        for j in range(start, stop):
            z = a - vk[j]
            r2[j] += z * z
            zu[j] += z * (b - sk[j])
    if gamma == 0.0:
        pass
    elif gamma == -3.0:
        for j in range(start, stop):
            q = r2[j] + delta2
            w = 1.0 / (q * math.sqrt(q)) if r2[j] > 0.0 else 0.0
            r2[j] *= w
            zu[j] *= w
    else:
        half_gamma = 0.5 * gamma
        for j in range(start, stop):
            q = r2[j] + delta2
            w = q ** half_gamma if r2[j] > 0.0 else 0.0
            r2[j] *= w
            zu[j] *= w
    for k in range(d):
        vk, sk = vt[k], st[k]
        a, b = vi[k], si[k]
        total = 0.0
        for j in range(start, stop):
            total += r2[j] * (b - sk[j]) - (a - vk[j]) * zu[j]
        acc[k] = total


@numba.njit(inline="always", fastmath=_FAST)
def _weights_inplace(buf, start, stop, gamma, delta2):
    """``buf[j] = |z_j|²`` → ``(|z_j|² + δ²)^{γ/2}``, 0 where ``|z_j|² = 0`` (γ ≠ 0); one
    vectorised loop per γ case."""
    if gamma == -3.0:
        for j in range(start, stop):
            q = buf[j] + delta2
            w = 1.0 / (q * math.sqrt(q))
            buf[j] = w if buf[j] > 0.0 else 0.0
    else:
        half_gamma = 0.5 * gamma
        for j in range(start, stop):
            w = (buf[j] + delta2) ** half_gamma
            buf[j] = w if buf[j] > 0.0 else 0.0


@numba.njit(inline="always", fastmath=_FAST)
def _pair_sums_row3(vt, st, vi, si, start, stop, gamma, delta2, wbuf, acc):
    """:func:`_pair_sums_row` for d = 3: the weights in one pass (γ ≠ 0; for γ = 0, ``w = 1``
    and the ``z = 0`` term is exactly 0), then one fused pass with the operands in registers."""
    v0, v1, v2 = vt[0], vt[1], vt[2]
    s0, s1, s2 = st[0], st[1], st[2]
    a0, a1, a2 = vi[0], vi[1], vi[2]
    b0, b1, b2 = si[0], si[1], si[2]
    if gamma != 0.0:
        for j in range(start, stop):
            z0, z1, z2 = a0 - v0[j], a1 - v1[j], a2 - v2[j]
            wbuf[j] = z0 * z0 + z1 * z1 + z2 * z2
        _weights_inplace(wbuf, start, stop, gamma, delta2)
    else:
        wbuf[start:stop] = 1.0
    acc0 = 0.0
    acc1 = 0.0
    acc2 = 0.0
    for j in range(start, stop):
        z0, z1, z2 = a0 - v0[j], a1 - v1[j], a2 - v2[j]
        u0, u1, u2 = b0 - s0[j], b1 - s1[j], b2 - s2[j]
        w = wbuf[j]
        wr2 = w * (z0 * z0 + z1 * z1 + z2 * z2)
        wzu = w * (z0 * u0 + z1 * u1 + z2 * u2)
        acc0 += wr2 * u0 - z0 * wzu
        acc1 += wr2 * u1 - z1 * wzu
        acc2 += wr2 * u2 - z2 * wzu
    acc[0], acc[1], acc[2] = acc0, acc1, acc2


@numba.njit(inline="always", fastmath=_FAST)
def _pair_sums_row2(vt, st, vi, si, start, stop, gamma, delta2, wbuf, acc):
    """:func:`_pair_sums_row3` for d = 2."""
    v0, v1 = vt[0], vt[1]
    s0, s1 = st[0], st[1]
    a0, a1 = vi[0], vi[1]
    b0, b1 = si[0], si[1]
    if gamma != 0.0:
        for j in range(start, stop):
            z0, z1 = a0 - v0[j], a1 - v1[j]
            wbuf[j] = z0 * z0 + z1 * z1
        _weights_inplace(wbuf, start, stop, gamma, delta2)
    else:
        wbuf[start:stop] = 1.0
    acc0 = 0.0
    acc1 = 0.0
    for j in range(start, stop):
        z0, z1 = a0 - v0[j], a1 - v1[j]
        u0, u1 = b0 - s0[j], b1 - s1[j]
        w = wbuf[j]
        wr2 = w * (z0 * z0 + z1 * z1)
        wzu = w * (z0 * u0 + z1 * u1)
        acc0 += wr2 * u0 - z0 * wzu
        acc1 += wr2 * u1 - z1 * wzu
    acc[0], acc[1] = acc0, acc1


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def landau_velocity(v: np.ndarray, s: np.ndarray, gamma: float, B: float, delta: float) -> np.ndarray:
    """``out_i = −(B/n) Σ_j (|z|² + δ²)^{γ/2} (|z|² (s_i−s_j) − z (z·(s_i−s_j)))``, ``z = v_i − v_j``.

    ``v``, ``s``: (n, d) float64 particles and their scores; returns (n, d). Vectorised over
    ``j`` (one fused pass for d = 2, 3; :func:`_pair_sums_row` otherwise), parallel over blocks
    of ``i``; O(n) memory per thread.
    """
    n, d = v.shape
    out = np.empty((n, d))
    vt = np.ascontiguousarray(v.T)
    st = np.ascontiguousarray(s.T)
    delta2 = delta * delta
    scale = -B / n
    block = 16
    for blk in numba.prange((n + block - 1) // block):
        r2 = np.empty(n)
        zu = np.empty(n)
        acc = np.empty(d)
        for i in range(blk * block, min(n, (blk + 1) * block)):
            if d == 3:
                _pair_sums_row3(vt, st, v[i], s[i], 0, n, gamma, delta2, r2, acc)
            elif d == 2:
                _pair_sums_row2(vt, st, v[i], s[i], 0, n, gamma, delta2, r2, acc)
            else:
                _pair_sums_row(vt, st, v[i], s[i], 0, n, gamma, delta2, r2, zu, acc)
            for k in range(d):
                out[i, k] = scale * acc[k]
    return out


@numba.njit(parallel=True, cache=True)
def landau_velocity_random_batch(v: np.ndarray, s: np.ndarray, permutation: np.ndarray,
                                 batch_size: int, gamma: float, B: float, delta: float) -> np.ndarray:
    """Random batch method (Jin, Li & Liu, J. Comput. Phys. 2020; Carrillo, Jin & Tang 2022).

    The particles ``permutation[k·p : (k+1)·p]`` (``p = batch_size``; the last batch may be
    shorter, size ``m``) interact only among themselves:
    ``out_i = −B·c_m Σ_{j in batch(i)} w(z) A(z)(s_i − s_j)`` with ``c_m = (n−1)/(n(m−1))``.
    ``c_m`` makes the batch sum an unbiased estimate of the full ``(1/n) Σ_j`` (each of the
    ``n−1`` partners of ``i`` lands in its batch with probability ``(m−1)/(n−1)``) and equals
    ``1/n`` for ``m = n``; for large batches ``c_m ≈ 1/m``. Momentum is conserved within
    each batch. A batch of one particle does not move. O(n·p·d) time, O(n·d) memory.
    """
    n, d = v.shape
    out = np.zeros((n, d))
    delta2 = delta * delta
    for idx in numba.prange(n):
        i = permutation[idx]
        start = (idx // batch_size) * batch_size
        stop = min(start + batch_size, n)
        m = stop - start
        if m < 2:
            continue
        scale = -B * (n - 1.0) / (n * (m - 1.0))
        acc = np.zeros(d)
        for jdx in range(start, stop):
            j = permutation[jdx]
            if j != i:
                _accumulate_pair(v, s, i, j, d, gamma, delta2, acc)
        for k in range(d):
            out[i, k] = scale * acc[k]
    return out


def landau_velocity_maxwell(v: np.ndarray, s: np.ndarray, B: float) -> np.ndarray:
    """Maxwell molecules (γ = 0) in O(n·d²): the pair sum expanded into ensemble moments.

    With ``a = v_i − v̄``, ``p = s_i − s̄``, ``b_j = v_j − v̄``, ``q_j = s_j − s̄`` (``z`` and
    ``s_i − s_j`` are unchanged by the centring, and ``Σ_j b_j = Σ_j q_j = 0``)::

        Σ_j |z|²(p − q_j)        = n|a|² p + S p + 2 M_qb a − R
        Σ_j z (z·(p − q_j))      = a (n a·p + T) + M_bq a + M_bb p − U
        S = Σ|b_j|², T = Σ b_j·q_j, M_qb = Σ q_j b_jᵀ = M_bqᵀ, M_bb = Σ b_j b_jᵀ,
        R = Σ |b_j|² q_j, U = Σ b_j (b_j·q_j),

    and ``out_i = −(B/n)(first − second)``. Equals :func:`landau_velocity` with ``γ = 0``.
    """
    n = v.shape[0]
    a = v - v.mean(0)
    p = s - s.mean(0)
    r2 = np.einsum("ij,ij->i", a, a)                   # |b_j|²
    ap = np.einsum("ij,ij->i", a, p)                   # b_j·q_j
    S, T = r2.sum(), ap.sum()
    M_qb = p.T @ a                                      # Σ q_j b_jᵀ
    M_bb = a.T @ a
    R = r2 @ p
    U = ap @ a
    first = (n * r2 + S)[:, None] * p + 2.0 * (a @ M_qb.T) - R
    second = a * (n * ap + T)[:, None] + a @ M_qb + p @ M_bb - U
    return (-B / n) * (first - second)
