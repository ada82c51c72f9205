"""Numba pair-sum kernels: O(n·m) time, O(n + m) memory (no n×m×d temporaries).

Kept apart from the estimator classes so that each kernel can be benchmarked, replaced or
moved to another backend on its own. :func:`mollified_sums` and :func:`blob_score_sums` take
float64 C-contiguous arrays; :func:`gaussian_sums` and :func:`bank_moments` run in the dtype of
their inputs (float32 or float64, C-contiguous).

The Gaussian kernels evaluate ``exp`` with :func:`fast_exp2`, a branch-free polynomial that LLVM
vectorises (numba's ``math.exp`` calls libm one element at a time: ~4× slower in float32 on
AVX2, measured in ``benchmarks/roofline.py``). Each query's sums run over contiguous per-query
buffers of length n (context stored coordinate-major, ``(d, n)``), one reduction per pass, so
every inner loop is a vectorised reduction.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

__all__ = ["mollified_sums", "blob_score_sums", "fast_exp2", "LOG2E", "gaussian_sums", "bank_moments", "EXP_FLOOR", "kernel_constants",
           "fused_available", "gaussian_sums_tensor", "ordered_bits", "from_ordered_bits"]

#: Lower clamp of the exponent in the Gaussian kernels, per dtype: ``e^floor`` is still a normal
#: number (float32: e⁻⁸⁰ ≈ 1.8e-35; subnormal results run several times slower on x86) and
#: negligible against the row maximum 1 that every sum contains.
EXP_FLOOR = {np.dtype(np.float32): -80.0, np.dtype(np.float64): -700.0}

#: log2(e): the kernels evaluate e^t as 2^(t·log2 e) with the factor folded into their constants
LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


def fast_exp2(x):
    """``2^x`` for ``EXP_FLOOR[dtype]·log2(e) ≤ x ≤ 0``, vectorisable (callable from numba only).

    ``x = k + f`` with ``k = round(x)`` and ``f = x − k`` exact (|f| ≤ ½), so no range-reduction
    constant can lose bits under fastmath reassociation; ``2^f = e^{f·ln2}`` by a polynomial
    on ``|f·ln2| ≤ ln2/2`` and ``2^k`` assembled in the exponent bits. float32: the Cephes
    ``expf`` minimax polynomial (degree 7); float64: Taylor to degree 13 (truncation
    ``(ln2/2)^14/14! ≈ 4e-18``). Relative errors are measured in tests/test_kernels.py.
    Outside the stated range the exponent bits overflow: callers clamp first.
    """
    return 2.0 ** x


@overload(fast_exp2, inline="always")
def _fast_exp2_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def impl32(x):
            ki = np.int32(x - np.float32(0.5))           # round to nearest for x ≤ 0 (ties down)
            r = (x - np.float32(ki)) * np.float32(_LN2)  # x − k exact
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            p = p * r * r + r + np.float32(1.0)
            return p * np.int32((ki + np.int32(127)) << np.int32(23)).view(np.float32)
        return impl32
    if isinstance(x, types.Float) and x.bitwidth == 64:
        def impl64(x):
            ki = np.int32(x - 0.5)                        # int32: AVX2 converts f64 → i32 in vectors
            r = (x - np.float64(ki)) * _LN2
            p = 1.0 / 6227020800.0
            p = p * r + 1.0 / 479001600.0
            p = p * r + 1.0 / 39916800.0
            p = p * r + 1.0 / 3628800.0
            p = p * r + 1.0 / 362880.0
            p = p * r + 1.0 / 40320.0
            p = p * r + 1.0 / 5040.0
            p = p * r + 1.0 / 720.0
            p = p * r + 1.0 / 120.0
            p = p * r + 1.0 / 24.0
            p = p * r + 1.0 / 6.0
            p = p * r + 0.5
            p = p * r * r + r + 1.0
            return p * np.int64((np.int64(ki) + np.int64(1023)) << np.int64(52)).view(np.float64)
        return impl64
    return None


def ordered_bits(x):
    """The bits of a float ``x ≥ 0`` as a signed integer of its width: monotone in ``x``, so a
    minimum over them is an integer reduction, which LLVM vectorises (numba emits float
    comparisons without fast-math flags, and float min/max reductions stay scalar)."""
    return x


def from_ordered_bits(i):
    """Inverse of :func:`ordered_bits`."""
    return i


@overload(ordered_bits, inline="always")
def _ordered_bits_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: np.float32(x).view(np.int32)
    if isinstance(x, types.Float) and x.bitwidth == 64:
        return lambda x: np.float64(x).view(np.int64)
    return None


@overload(from_ordered_bits, inline="always")
def _from_ordered_bits_impl(i):
    if isinstance(i, types.Integer) and i.bitwidth == 32:
        return lambda i: np.int32(i).view(np.float32)
    if isinstance(i, types.Integer) and i.bitwidth == 64:
        return lambda i: np.int64(i).view(np.float64)
    return None

@numba.njit(parallel=True, cache=True)
def mollified_sums(points: np.ndarray, centers: np.ndarray, eps: float) -> np.ndarray:
    """``out[p] = Σ_q φ_ε(points[p] − centers[q])`` with ``φ_ε(z) = exp(−|z|²/ε)/(πε)^{d/2}``."""
    m, d = points.shape
    n = centers.shape[0]
    norm = (math.pi * eps) ** (-0.5 * d)
    out = np.empty(m)
    for p in numba.prange(m):
        acc = 0.0
        for q in range(n):
            r2 = 0.0
            for k in range(d):
                diff = points[p, k] - centers[q, k]
                r2 += diff * diff
            acc += math.exp(-r2 / eps)
        out[p] = acc * norm
    return out


@numba.njit(parallel=True, cache=True)
def blob_score_sums(points: np.ndarray, inv_sum_points: np.ndarray, centers: np.ndarray,
                    inv_sum_centers: np.ndarray, eps: float) -> np.ndarray:
    """Blob score (Carrillo, Hu, Wang & Wu 2020, eq. for ∇ log(f * φ_ε) made symmetric):

    ``s_p = Σ_q (−2/ε) φ_ε(v_p − v_q)(v_p − v_q)(1/D_p + 1/D_q)``, ``D_p = Σ_r φ_ε(v_p − v_r)``.
    ``inv_sum_points[p] = 1/D_p`` and ``inv_sum_centers[q] = 1/D_q`` are precomputed.
    """
    m, d = points.shape
    n = centers.shape[0]
    norm = (math.pi * eps) ** (-0.5 * d)
    out = np.zeros((m, d))
    diff = np.empty(d)
    for p in numba.prange(m):
        diff = np.empty(d)
        acc = np.zeros(d)
        for q in range(n):
            r2 = 0.0
            for k in range(d):
                diff[k] = points[p, k] - centers[q, k]
                r2 += diff[k] * diff[k]
            w = math.exp(-r2 / eps) * norm * (inv_sum_points[p] + inv_sum_centers[q])
            for k in range(d):
                acc[k] += w * diff[k]
        for k in range(d):
            out[p, k] = (-2.0 / eps) * acc[k]
    return out


def kernel_constants(dtype) -> np.ndarray:
    """``[floor·log2 e, ½·log2 e, e^{floor/2}, 0, ½, log2 e]`` in ``dtype`` for the Gaussian
    kernels (numba types Python float literals as float64, which would promote float32 loops)."""
    dtype = np.dtype(dtype)
    floor = EXP_FLOOR[dtype]
    return np.array([floor * LOG2E, 0.5 * LOG2E, math.exp(0.5 * floor), 0.0, 0.5, LOG2E], dtype=dtype)


@numba.njit(inline="always", fastmath=True)
def _gaussian_row3(queries_t, context_t, i, lo2, half_log2e, half, zero, lse, mean):
    """:func:`gaussian_sums` for one query in d = 3: a max pass, then one fused pass that
    recomputes the distances (no buffer; 3 loads per pair per pass)."""
    x0, x1, x2 = context_t[0], context_t[1], context_t[2]
    y0, y1, y2 = queries_t[0, i], queries_t[1, i], queries_t[2, i]
    n = x0.shape[0]
    a, b, c = y0 - x0[0], y1 - x1[0], y2 - x2[0]
    low = ordered_bits(a * a + b * b + c * c)       # min_j |y − x_j|² (no ** 2: it promotes to float64)
    for j in range(n):
        a, b, c = y0 - x0[j], y1 - x1[j], y2 - x2[j]
        low = min(low, ordered_bits(a * a + b * b + c * c))
    tmax = -from_ordered_bits(low)
    tot, m0, m1, m2 = zero, zero, zero, zero
    for j in range(n):
        a, b, c = y0 - x0[j], y1 - x1[j], y2 - x2[j]
        e = fast_exp2(max(half_log2e * (-(a * a + b * b + c * c) - tmax), lo2))
        tot += e
        m0 += e * x0[j]
        m1 += e * x1[j]
        m2 += e * x2[j]
    lse[i] = half * tmax + math.log(tot)
    mean[i, 0], mean[i, 1], mean[i, 2] = m0 / tot, m1 / tot, m2 / tot


@numba.njit(inline="always", fastmath=True)
def _gaussian_row2(queries_t, context_t, i, lo2, half_log2e, half, zero, lse, mean):
    """:func:`_gaussian_row3` for d = 2."""
    x0, x1 = context_t[0], context_t[1]
    y0, y1 = queries_t[0, i], queries_t[1, i]
    n = x0.shape[0]
    a, b = y0 - x0[0], y1 - x1[0]
    low = ordered_bits(a * a + b * b)
    for j in range(n):
        a, b = y0 - x0[j], y1 - x1[j]
        low = min(low, ordered_bits(a * a + b * b))
    tmax = -from_ordered_bits(low)
    tot, m0, m1 = zero, zero, zero
    for j in range(n):
        a, b = y0 - x0[j], y1 - x1[j]
        e = fast_exp2(max(half_log2e * (-(a * a + b * b) - tmax), lo2))
        tot += e
        m0 += e * x0[j]
        m1 += e * x1[j]
    lse[i] = half * tmax + math.log(tot)
    mean[i, 0], mean[i, 1] = m0 / tot, m1 / tot


def gaussian_sums(queries_t: np.ndarray, context_t: np.ndarray, consts: np.ndarray):
    """Unit Gaussian kernel sums, fused: ``t_ij = −½|y_i − x_j|²``, ``M_i = max_j t_ij``,
    ``S_i = Σ_j e^{t_ij − M_i}``, ``mean_i = Σ_j e^{t_ij − M_i} x_j / S_i``.

    ``queries_t`` (d, m), ``context_t`` (d, n), coordinate-major, same float dtype; ``consts``:
    :func:`kernel_constants` of that dtype. Returns ``lse = M + log S`` (m,)
    and ``mean`` (m, d) in that dtype. Memory O(n) per thread (none for d = 2, 3, which run
    two fused passes per query; other d one pass per coordinate over a distance buffer).

    d = 2, 3 run in a numba ``prange``; other d in a serial kernel over blocks of queries, one
    block per numba thread from a Python thread pool (the kernel releases the GIL). Why: as a
    ``prange`` body the any-d loops gave other bits when the kernel was loaded from numba's
    cache than when it had just been compiled (AMD znver4, numba 0.68), so a resumed run did not
    repeat the bits of the run it continued; compiled serially they are the same both ways
    (tests/test_kernels.py).
    """
    d, m = queries_t.shape
    if d in (2, 3):
        return _gaussian_sums_low_d(queries_t, context_t, consts)
    lse = np.empty(m, queries_t.dtype)
    mean = np.empty((m, d), queries_t.dtype)
    workers = max(1, min(numba.get_num_threads(), m // 32))
    bounds = [m * k // workers for k in range(workers + 1)]
    if workers == 1:
        _gaussian_rows(queries_t, context_t, consts, 0, m, lse, mean)
    else:
        pool = _thread_pool(workers)
        for job in [pool.submit(_gaussian_rows, queries_t, context_t, consts, lo, hi, lse, mean)
                    for lo, hi in zip(bounds[:-1], bounds[1:])]:
            job.result()
    return lse, mean


_POOL: dict = {}


def _thread_pool(workers: int):
    """A process-wide thread pool of ``workers`` threads (created once per size)."""
    if workers not in _POOL:
        from concurrent.futures import ThreadPoolExecutor
        _POOL[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="particlescore-kernel")
    return _POOL[workers]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _gaussian_sums_low_d(queries_t: np.ndarray, context_t: np.ndarray, consts: np.ndarray):
    """:func:`gaussian_sums` for d = 2 and 3: one ``prange`` over blocks of 32 queries."""
    d, m = queries_t.shape
    lo2, half_log2e, zero, half = consts[0], consts[1], consts[3], consts[4]
    lse = np.empty(m, queries_t.dtype)
    mean = np.empty((m, d), queries_t.dtype)
    block = 32
    for blk in numba.prange((m + block - 1) // block):
        for i in range(blk * block, min(m, (blk + 1) * block)):
            if d == 3:
                _gaussian_row3(queries_t, context_t, i, lo2, half_log2e, half, zero, lse, mean)
            else:
                _gaussian_row2(queries_t, context_t, i, lo2, half_log2e, half, zero, lse, mean)
    return lse, mean


@numba.njit(fastmath=True, cache=True, nogil=True)
def _gaussian_rows(queries_t, context_t, consts, start, stop, lse, mean):
    """:func:`gaussian_sums` for queries ``start … stop − 1`` in any d, over one distance buffer
    (n,): a max pass, an exp-and-sum pass, then one weighted sum per coordinate."""
    d, n = context_t.shape
    lo2, half_log2e, zero, half = consts[0], consts[1], consts[3], consts[4]
    t = np.empty(n, queries_t.dtype)
    for i in range(start, stop):
        t[:] = 0
        for k in range(d):
            yk = queries_t[k, i]
            xk = context_t[k]
            for j in range(n):
                diff = yk - xk[j]
                t[j] -= diff * diff
        low = ordered_bits(-t[0])
        for j in range(n):
            low = min(low, ordered_bits(-t[j]))
        tmax = -from_ordered_bits(low)
        tot = zero
        for j in range(n):
            e = fast_exp2(max(half_log2e * (t[j] - tmax), lo2))     # e^{½(t_j − T)}
            t[j] = e
            tot += e
        lse[i] = half * tmax + math.log(tot)
        for k in range(d):
            xk = context_t[k]
            acc = zero
            for j in range(n):
                acc += t[j] * xk[j]
            mean[i, k] = acc / tot


@numba.njit(inline="always", fastmath=True)
def _bank_moments3(z0, z1, z2, kv, second, zero, s1, m2):
    """``s1 = Σ k_j z_j``, and where ``second`` ``m2 = Σ k_j z_j z_jᵀ``, d = 3, one fused pass."""
    a0, a1, a2 = zero, zero, zero
    if second:
        b00, b01, b02, b11, b12, b22 = zero, zero, zero, zero, zero, zero
        for j in range(kv.shape[0]):
            k, u, v, w = kv[j], z0[j], z1[j], z2[j]
            ku, kv_, kw = k * u, k * v, k * w
            a0 += ku
            a1 += kv_
            a2 += kw
            b00 += ku * u
            b01 += ku * v
            b02 += ku * w
            b11 += kv_ * v
            b12 += kv_ * w
            b22 += kw * w
        m2[0, 0], m2[1, 1], m2[2, 2] = b00, b11, b22
        m2[0, 1], m2[0, 2], m2[1, 2] = b01, b02, b12
        m2[1, 0], m2[2, 0], m2[2, 1] = b01, b02, b12
    else:
        for j in range(kv.shape[0]):
            k = kv[j]
            a0 += k * z0[j]
            a1 += k * z1[j]
            a2 += k * z2[j]
    s1[0], s1[1], s1[2] = a0, a1, a2


@numba.njit(inline="always", fastmath=True)
def _bank_moments2(z0, z1, kv, second, zero, s1, m2):
    """:func:`_bank_moments3` for d = 2."""
    a0, a1 = zero, zero
    if second:
        b00, b01, b11 = zero, zero, zero
        for j in range(kv.shape[0]):
            k, u, v = kv[j], z0[j], z1[j]
            ku, kv_ = k * u, k * v
            a0 += ku
            a1 += kv_
            b00 += ku * u
            b01 += ku * v
            b11 += kv_ * v
        m2[0, 0], m2[0, 1], m2[1, 0], m2[1, 1] = b00, b01, b01, b11
    else:
        for j in range(kv.shape[0]):
            k = kv[j]
            a0 += k * z0[j]
            a1 += k * z1[j]
    s1[0], s1[1] = a0, a1


# Serial on purpose: with parallel=True, numba optimises freshly compiled and cache-loaded code
# differently (numba issue #10617), and the fast-math reductions then differ in round-off between
# the process that compiled the kernel and every later one, which broke bitwise resume (measured:
# DiScoFormer scores differed by ~1e-15, trajectories by 1e-8 after four steps). Serial code is
# identical either way (tests/test_kernels.py checks a fresh compile against the cache).
@numba.njit(fastmath=True, cache=True)
def bank_moments(queries: np.ndarray, query_batch: np.ndarray, context_t: np.ndarray, offsets: np.ndarray,
                 inv_h2: np.ndarray, derived: np.ndarray, second: np.ndarray, consts: np.ndarray):
    """Kernel-weighted moments of the context around each query at several bandwidths, fused.

    Query ``i`` (``queries`` (M, d)) belongs to batch element ``b = query_batch[i]`` whose
    context is ``context_t[:, offsets[b]:offsets[b+1]]`` (coordinate-major (d, N)). With
    ``z_j = x_j − y_i``, ``t_j = −½|z_j|²``, ``T = max_j t_j`` and, for each bandwidth slot
    ``c`` (``inv_h2`` (B, C) = 1/h²), ``k_j = exp(max((t_j − T)/h², floor))``:

    ``tmax[i] = T``, ``s0[i,c] = Σ k_j``, ``s2[i,c] = Σ k_j²``, ``s1[i,c,:] = Σ k_j z_j`` and,
    where ``second[c]``, ``m2[i,c,:,:] = Σ k_j z_j z_jᵀ`` (zero elsewhere).

    ``derived[c]``: slot ``c`` has 1/h² four times that of slot ``c−1`` (bandwidth ratio exactly
    2), so ``k = exp(4a) = max(k_{c−1}², e^{floor/2})²`` — exact squaring instead of an exp,
    with the same clamp (``e^{4a}`` falls below ``e^floor`` exactly when ``e^{2a}`` falls below
    ``e^{floor/2}``). ``consts``: :func:`kernel_constants`. All in the input dtype; memory
    O(d·n).
    """
    M, d = queries.shape
    C = inv_h2.shape[1]
    nmax = 0
    for b in range(offsets.shape[0] - 1):
        nmax = max(nmax, offsets[b + 1] - offsets[b])
    lo2, sqrt_floor, zero, half, log2e = consts[0], consts[2], consts[3], consts[4], consts[5]
    tmax_out = np.empty(M, queries.dtype)
    s0 = np.empty((M, C), queries.dtype)
    s2 = np.empty((M, C), queries.dtype)
    s1 = np.empty((M, C, d), queries.dtype)
    m2 = np.zeros((M, C, d, d), queries.dtype)
    block = 16
    for blk in range((M + block - 1) // block):
        z = np.empty((d, nmax), queries.dtype)
        t = np.empty(nmax, queries.dtype)
        kern = np.empty(nmax, queries.dtype)
        for i in range(blk * block, min(M, (blk + 1) * block)):
            b = query_batch[i]
            start = offsets[b]
            n = offsets[b + 1] - start
            tv = t[:n]
            tv[:] = 0
            for k in range(d):
                yk = queries[i, k]
                xk = context_t[k, start:start + n]
                zk = z[k, :n]
                for j in range(n):
                    diff = xk[j] - yk
                    zk[j] = diff
                    tv[j] -= half * diff * diff
            low = ordered_bits(-tv[0])
            for j in range(n):
                low = min(low, ordered_bits(-tv[j]))
            tm = -from_ordered_bits(low)
            tmax_out[i] = tm
            for j in range(n):
                tv[j] -= tm
            kv = kern[:n]
            for c in range(C):
                a = inv_h2[b, c] * log2e        # k_j = 2^{(t_j − T)·log2 e/h²}
                acc0 = zero
                acc2 = zero
                if derived[c]:
                    for j in range(n):
                        q = max(kv[j] * kv[j], sqrt_floor)
                        e = q * q
                        kv[j] = e
                        acc0 += e
                        acc2 += e * e
                else:
                    for j in range(n):
                        e = fast_exp2(max(tv[j] * a, lo2))
                        kv[j] = e
                        acc0 += e
                        acc2 += e * e
                s0[i, c] = acc0
                s2[i, c] = acc2
                if d == 3:
                    _bank_moments3(z[0, :n], z[1, :n], z[2, :n], kv, second[c], zero, s1[i, c], m2[i, c])
                    continue
                if d == 2:
                    _bank_moments2(z[0, :n], z[1, :n], kv, second[c], zero, s1[i, c], m2[i, c])
                    continue
                for k in range(d):
                    zk = z[k, :n]
                    acc = zero
                    for j in range(n):
                        acc += kv[j] * zk[j]
                    s1[i, c, k] = acc
                if second[c]:
                    for k in range(d):
                        zk = z[k, :n]
                        for l in range(k + 1):
                            zl = z[l, :n]
                            acc = zero
                            for j in range(n):
                                acc += kv[j] * zk[j] * zl[j]
                            m2[i, c, k, l] = acc
                            m2[i, c, l, k] = acc
    return tmax_out, s0, s2, s1, m2


def fused_available(*tensors) -> bool:
    """Whether the numba kernels can stand in for a torch computation on ``tensors``: CPU,
    float32/float64, and no gradient wanted (numba is invisible to autograd)."""
    import torch

    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return not grad and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


def gaussian_sums_tensor(u_queries, u_context):
    """:func:`gaussian_sums` on torch tensors ``u_queries`` (m, d), ``u_context`` (n, d) of one
    float dtype: ``(lse (m,), mean (m, d))`` as tensors of that dtype (see
    :func:`particlescore.estimators.gaussian_kernel_sums` for the torch version)."""
    import torch

    dtype = np.float32 if u_queries.dtype == torch.float32 else np.float64
    q = np.ascontiguousarray(u_queries.detach().numpy().T, dtype=dtype)     # (d, m)
    c = np.ascontiguousarray(u_context.detach().numpy().T, dtype=dtype)     # (d, n)
    lse, mean = gaussian_sums(q, c, kernel_constants(dtype))
    return torch.from_numpy(lse), torch.from_numpy(mean)
