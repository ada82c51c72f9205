"""Classical kernels against a roofline measured in the same run (issue 8 item 3).

    python benchmarks/roofline.py [--threads 1] [--quick] [--out benchmarks/results/roofline.md]

1. Roofline primitives, single thread by default (numba and torch both set to ``--threads``):
   ``exp`` throughput (numba's polynomial :func:`particlescore.kernels.fast_exp2`, numba's libm
   ``math.exp``, ``torch.exp``; float32 and float64), the ``(q·√q)⁻¹`` of the Coulomb weight,
   and multiply-add throughput: the peak (matmul) and, for reference, the form the kernels'
   reductions take (``acc += a_j·b_j`` over L1-resident arrays, 2 loads per multiply-add).
   The Coulomb weight's rate is the faster of the Landau kernel's own weight loop run alone and
   ``torch.rsqrt`` (one inverse square root; the cube is two multiplies).
2. For each kernel, the pairs/s the roofline allows: ``1 / (E/R_exp + F/R_fma)`` (Coulomb
   weight: ``1 / max(E/R_w, F/R_fma)``, see :func:`allowed`) with ``E``
   exps (or Coulomb weights) and ``F`` multiply-adds per pair of that kernel's algorithm
   (counted below; subtractions, clamps and maxima are not counted, so the roofline is
   optimistic and the fractions conservative), ``R_exp`` the fastest exp measured for the
   dtype and ``R_fma`` the matmul peak; and the measured pairs/s of
   * KDE: :func:`particlescore.kernels.gaussian_sums` (E = 1, F = 2d + 1),
   * the DiScoFormer kernel bank: :func:`particlescore.kernels.bank_moments` at the shipped
     bandwidths (8 distinct c; E = 4 exps, the other 4 slots by 2 squarings each),
   * the Landau pair kernel :func:`particlescore.landau_kernels.landau_velocity`
     (γ = 0: E = 0, F = 4d; γ = −3: one Coulomb weight, F = 4d + 2).
3. Speedups, before/after in this process: the torch versions these kernels replaced
   (``gaussian_kernel_sums`` for KDE, ``kernel_bank_torch`` for the bank, and a copy of the
   previous scalar Landau loop), and DiScoFormer calls (warm start) with the bank switched
   between the two implementations.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from pathlib import Path

import numba
import numpy as np
import torch

import particlescore as ps
from particlescore import candidates, kernels, landau_kernels
from particlescore.estimators import gaussian_kernel_sums

from _common import best_time

KDE_C = [0.5, 0.71, 1.0, 1.41, 2.0]
LOCAL_C = [1.41, 2.0, 2.83, 4.0, 5.66]


def best(fn):
    """Best of up to 5 calls within 3 s (``_common.best_time``)."""
    return best_time(fn, repeats=5, budget=3.0)


# ----------------------------------------------------------------------------- roofline primitives
@numba.njit(fastmath=True)
def _exp2_poly(x, reps):
    acc = x[0] - x[0]
    for _ in range(reps):
        for j in range(x.size):
            acc += kernels.fast_exp2(x[j])
    return acc


@numba.njit(fastmath=True)
def _exp_libm(x, reps):
    acc = x[0] - x[0]
    for _ in range(reps):
        for j in range(x.size):
            acc += math.exp(x[j])
    return acc


@numba.njit(fastmath={"reassoc", "contract", "nsz", "arcp"})
def _coulomb_weight(x, out, reps):
    """``(q + δ²)^{-3/2}`` in place over a buffer by the Landau kernel's own weight loop
    (:func:`particlescore.landau_kernels._weights_inplace`, vectorised there; a bare
    ``1/(q·√q)`` loop stays scalar under LLVM's cost model on this CPU), after a copy of the input."""
    for _ in range(reps):
        out[:] = x
        landau_kernels._weights_inplace(out, 0, out.size, -3.0, 1e-6)
    return out[0]


@numba.njit(fastmath=True)
def _dot(a, b, reps):
    acc = a[0] - a[0]
    for _ in range(reps):
        for j in range(a.size):
            acc += a[j] * b[j]
    return acc


def roofline_primitives():
    """Throughputs per second: exp (numba poly, libm, torch; f32/f64), Coulomb weight, multiply-add."""
    size, reps = 2048, 2000                     # 8 / 16 KiB: L1-resident
    out = {}
    for dt, name in ((np.float32, "f32"), (np.float64, "f64")):
        x = np.linspace(-20.0, 0.0, size).astype(dt)
        for label, fn in (("exp numba poly", _exp2_poly), ("exp numba libm", _exp_libm)):
            fn(x, 1)
            out[f"{label} {name}"] = size * reps / best(lambda: fn(x, reps))
        a = np.random.default_rng(0).random(size).astype(dt)
        _dot(a, a, 1)
        out[f"multiply-add L1 dot {name}"] = size * reps / best(lambda: _dot(a, a, reps))
        a_mm = torch.randn(1024, 1024, dtype=getattr(torch, {"f32": "float32", "f64": "float64"}[name]))
        c_mm = torch.empty_like(a_mm)
        torch.mm(a_mm, a_mm, out=c_mm)
        out[f"multiply-add peak (torch.mm 1024³) {name}"] = 1024 ** 3 / best(lambda: torch.mm(a_mm, a_mm, out=c_mm))
        xt = torch.from_numpy(np.linspace(-20.0, 0.0, 1 << 16).astype(dt))
        o = torch.empty_like(xt)
        out[f"exp torch {name}"] = xt.numel() * 200 / best(lambda: [torch.exp(xt, out=o) for _ in range(200)])
    q = np.linspace(0.1, 10.0, size)
    w = np.empty_like(q)
    _coulomb_weight(q, w, 1)
    out["coulomb weight numba f64"] = size * reps / best(lambda: _coulomb_weight(q, w, reps))
    qt = torch.from_numpy(np.linspace(0.1, 10.0, 1 << 16))
    ot = torch.empty_like(qt)
    out["coulomb weight (torch.rsqrt) f64"] = qt.numel() * 200 / best(lambda: [torch.rsqrt(qt, out=ot) for _ in range(200)])
    return out


# ----------------------------------------------------------------------------- per-pair operation counts
def bank_counts(d):
    """(exps, multiply-adds) per pair of kernels.bank_moments at the shipped bandwidths."""
    distinct = sorted(set(KDE_C) | set(LOCAL_C), reverse=True)
    derived = [c for c in distinct if 2 * c in distinct]
    exps = len(distinct) - len(derived)
    fma = d + 2 * len(derived)                                  # |z|², squarings
    for c in distinct:
        fma += 2 + d + (d * (d + 1) // 2 if c in LOCAL_C else 0)  # Σk, Σk², Σk z, Σk z zᵀ
    return exps, fma


def allowed(rates, exps, fma, dtype, exp_name="exp"):
    """Pairs/s the roofline allows, with ``R_exp`` the fastest measured exp for ``dtype`` (or
    Coulomb weight) and ``R_fma`` the multiply-add peak (matmul): ``1 / (E/R_exp + F/R_fma)``
    for exp (its polynomial runs on the multiply-add ports), ``1 / max(E/R_w, F/R_fma)`` for
    the Coulomb weight (square root and division run on the divider, beside the FMA ports)."""
    r_exp = max(v for k, v in rates.items() if k.startswith(exp_name) and k.endswith(dtype))
    r_fma = rates[f"multiply-add peak (torch.mm 1024³) {dtype}"]
    if exp_name == "coulomb weight":
        return 1.0 / max(exps / r_exp, fma / r_fma)
    return 1.0 / (exps / r_exp + fma / r_fma)


# ----------------------------------------------------------------------------- previous Landau kernel
@numba.njit(parallel=True, cache=False)
def _landau_scalar(v, s, gamma, B, delta):
    """The pair loop this file's Landau numbers are compared with (particlescore before issue 8
    item 3): per pair, scalar ``acc[k] += w (|z|² u_k − z_k z·u)``."""
    n, d = v.shape
    out = np.empty((n, d))
    delta2 = delta * delta
    for i in numba.prange(n):
        acc = np.zeros(d)
        for j in range(n):
            if j == i:
                continue
            r2 = 0.0
            zu = 0.0
            for k in range(d):
                zk = v[i, k] - v[j, k]
                r2 += zk * zk
                zu += zk * (s[i, k] - s[j, k])
            if r2 == 0.0:
                continue
            if gamma == 0.0:
                w = 1.0
            elif gamma == -3.0:
                q = r2 + delta2
                w = 1.0 / (q * math.sqrt(q))
            else:
                w = (r2 + delta2) ** (0.5 * gamma)
            for k in range(d):
                acc[k] += w * (r2 * (s[i, k] - s[j, k]) - (v[i, k] - v[j, k]) * zu)
        for k in range(d):
            out[i, k] = (-B / n) * acc[k]
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="skip the n = 25600 DiScoFormer call")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "roofline.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    lines = []

    def emit(text=""):
        print(text, flush=True)
        lines.append(text)

    load = os.getloadavg()
    emit("# Classical kernels against a measured roofline (issue 8 item 3)")
    emit()
    cli = " ".join(sys.argv[1:] if argv is None else argv)
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} NUMBA_NUM_THREADS="
               f"{os.environ.get('NUMBA_NUM_THREADS', '')} python benchmarks/{Path(__file__).name} {cli}").strip()
    emit(f"Command: `{command}`")
    emit(f"Threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}; cpu count {os.cpu_count()}; "
         f"{platform.processor() or platform.machine()}; numba {numba.__version__}, torch {torch.__version__}")
    emit(f"Load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (the machine is shared; "
         "ratios within this run are the robust figures)")
    emit()

    rates = roofline_primitives()
    emit("## Roofline primitives (per second, single stream over L1-resident data)")
    emit()
    emit("| primitive | G/s |")
    emit("|---|---:|")
    for key, value in rates.items():
        emit(f"| {key} | {value / 1e9:.2f} |")
    emit()

    rng = np.random.default_rng(0)
    rows = []
    # KDE sums
    for d in (2, 3):
        n = m = 4096
        x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
        for dt, name in ((np.float32, "f32"), (np.float64, "f64")):
            xt, yt = np.ascontiguousarray(x.T.astype(dt)), np.ascontiguousarray(y.T.astype(dt))
            c = kernels.kernel_constants(dt)
            kernels.gaussian_sums(yt, xt, c)
            t = best(lambda: kernels.gaussian_sums(yt, xt, c))
            roof = allowed(rates, 1, 2 * d + 1, name)
            rows.append((f"KDE sums d={d} {name}", f"n=m={n}", 1, 2 * d + 1, n * m / t, roof))
    # kernel bank
    for d in (2, 3):
        n = m = 2048
        x = rng.standard_normal((n, d)).astype(np.float32)
        y = rng.standard_normal((m, d)).astype(np.float32)
        distinct = sorted(set(KDE_C) | set(LOCAL_C), reverse=True)
        order = [5.66, 2.83, 4.0, 2.0, 1.0, 0.5, 1.41, 0.71]
        assert sorted(order, reverse=True) == distinct
        derived = np.array([i > 0 and order[i] * 2 == order[i - 1] for i in range(8)])
        second = np.array([c in LOCAL_C for c in order])
        inv_h2 = np.array([[1.0 / (c * n ** (-1.0 / (d + 4))) ** 2 for c in order]], dtype=np.float32)
        args_ = (y, np.zeros(m, dtype=np.int64), np.ascontiguousarray(x.T), np.array([0, n]), inv_h2, derived,
                 second, kernels.kernel_constants(np.float32))
        kernels.bank_moments(*args_)
        t = best(lambda: kernels.bank_moments(*args_))
        e, f = bank_counts(d)
        rows.append((f"bank moments d={d} f32", f"n=m={n}, 8 bandwidths", e, f, n * m / t,
                     allowed(rates, e, f, "f32")))
    # Landau
    n, d = 4096, 3
    v, s = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    for gamma, delta in ((0.0, 0.0), (-3.0, 1e-3)):
        landau_kernels.landau_velocity(v[:64], s[:64], gamma, 1.0, delta)
        t = best(lambda: landau_kernels.landau_velocity(v, s, gamma, 1.0, delta))
        e, f = (0, 4 * d) if gamma == 0 else (1, 4 * d + 2)
        rows.append((f"Landau pairs d={d} γ={gamma:g} f64", f"n={n}", e, f, n * n / t,
                     allowed(rates, e, f, "f64", "coulomb weight")))

    emit("## Kernels against their roofline")
    emit()
    emit("| kernel | size | exps/pair | multiply-adds/pair | Mpairs/s | roofline Mpairs/s | fraction |")
    emit("|---|---|---:|---:|---:|---:|---:|")
    for name, size, e, f, pps, roof in rows:
        emit(f"| {name} | {size} | {e} | {f} | {pps / 1e6:.0f} | {roof / 1e6:.0f} | {100 * pps / roof:.0f} % |")
    emit()

    # ------------------------------------------------------------------ before / after
    emit("## Speedups (before/after, same process)")
    emit()
    emit("| what | before [s] | after [s] | before/after | max difference |")
    emit("|---|---:|---:|---:|---|")
    n, d = 4096, 3
    x = torch.randn(n, d, dtype=torch.float64)
    for dt in (torch.float64, torch.float32):
        xx = x.to(dt)
        before = best(lambda: gaussian_kernel_sums(xx, xx))
        after = best(lambda: kernels.gaussian_sums_tensor(xx, xx))
        diff = float((gaussian_kernel_sums(xx, xx)[1] - kernels.gaussian_sums_tensor(xx, xx)[1]).abs().max())
        emit(f"| KDE pair sums n={n} d={d} {str(dt)[6:]} (torch chunked → numba) | {before:.3f} | {after:.4f} | "
             f"{before / after:.1f} | mean {diff:.1e} |")
    v, s = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    for gamma, delta in ((0.0, 0.0), (-3.0, 1e-3)):
        _landau_scalar(v[:64], s[:64], gamma, 1.0, delta)
        before = best(lambda: _landau_scalar(v, s, gamma, 1.0, delta))
        after = best(lambda: landau_kernels.landau_velocity(v, s, gamma, 1.0, delta))
        ref = _landau_scalar(v, s, gamma, 1.0, delta)
        diff = float(np.abs(ref - landau_kernels.landau_velocity(v, s, gamma, 1.0, delta)).max() / np.abs(ref).max())
        emit(f"| Landau kernel n={n} d={d} γ={gamma:g} (scalar → vectorised) | {before:.3f} | {after:.3f} | "
             f"{before / after:.1f} | rel {diff:.1e} |")
    fused_bank = candidates.kernel_bank
    for n, d in ((2048, 2), (2048, 3)):
        ctx = torch.randn(1, n, d)
        before = best(lambda: candidates.kernel_bank_torch(ctx, ctx, KDE_C, LOCAL_C, 1e-3))
        after = best(lambda: fused_bank(ctx, ctx, KDE_C, LOCAL_C, 1e-3))
        a = candidates.kernel_bank_torch(ctx, ctx, KDE_C, LOCAL_C, 1e-3)
        b = fused_bank(ctx, ctx, KDE_C, LOCAL_C, 1e-3)
        diff = max(float(((p - q).abs() / (1 + p.abs())).max()) for p, q in zip(a, b))
        emit(f"| kernel bank n=m={n} d={d} f32 (torch → numba) | {before:.3f} | {after:.4f} | {before / after:.1f} | "
             f"rel {diff:.1e} |")
    configs = [(500, 3), (1560, 2)] + ([] if args.quick else [(25600, 2)])
    for n, d in configs:
        torch.manual_seed(n)
        x = torch.randn(n, d, dtype=torch.float64)
        times = {}
        outs = {}
        for label, bank in (("torch", candidates.kernel_bank_torch), ("fused", fused_bank)):
            candidates.kernel_bank = bank
            cold = ps.DiScoFormer.pretrained(d)          # no warm start: a pure function of x
            outs[label] = cold(x)
        for rep in range(2):
            for label, bank in (("torch", candidates.kernel_bank_torch), ("fused", fused_bank)):
                candidates.kernel_bank = bank
                est = ps.DiScoFormer.pretrained(d, warm_start=True)
                est(x)
                times.setdefault(label, []).append(best(lambda: est(x), repeats=2, budget=1.0))
        candidates.kernel_bank = fused_bank
        before, after = min(times["torch"]), min(times["fused"])
        a, b = outs["torch"], outs["fused"]
        ds = float(((a[1] - b[1]).norm(dim=1) / a[1].norm(dim=1)).median())
        emit(f"| DiScoFormer warm call n={n} d={d} (bank torch → numba) | {before:.3f} | {after:.3f} | "
             f"{before / after:.2f} | score median rel {ds:.1e}, log f max {float((a[0] - b[0]).abs().max()):.1e} |")
    emit()
    emit(f"Load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
