"""The fused numba kernels (particlescore.kernels, particlescore.landau_kernels) against plain
references: float64 direct sums in numpy/torch, and the torch kernel bank."""
from __future__ import annotations

import os

import numba
import numpy as np
import pytest
import torch

from particlescore import kernels, landau_kernels
from particlescore.candidates import kernel_bank, kernel_bank_torch
from particlescore.estimators import KDE, gaussian_kernel_sums
from particlescore.physics import landau_torch_reference

KDE_C = [0.5, 0.71, 1.0, 1.41, 2.0]       # the shipped DiScoFormer bank (model.DiScoFormerConfig)
LOCAL_C = [1.41, 2.0, 2.83, 4.0, 5.66]


@numba.njit(fastmath=True)
def _exp2_all(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = kernels.fast_exp2(x[i])
    return out


@pytest.mark.parametrize("dtype, bound", [
    # Cephes expf polynomial: 2 ulp of float32 (ulp/2 = 6e-8); measured 1.2e-7
    (np.float32, 2.5e-7),
    # degree-13 Taylor on |r| ≤ ln2/2 (truncation 4e-18) plus ~2 roundings: measured 2.2e-16
    (np.float64, 5e-16),
])
def test_fast_exp2_relative_error(dtype, bound):
    x = np.linspace(kernels.EXP_FLOOR[np.dtype(dtype)] * kernels.LOG2E, 0.0, 400_001).astype(dtype)
    exact = np.exp2(x.astype(np.longdouble))
    assert float(np.max(np.abs(_exp2_all(x) / exact - 1))) < bound


def _direct_gaussian_sums(y, x):
    """float64 ``logsumexp_j(−½|y_i − x_j|²)`` and the softmax-weighted mean, by broadcasting."""
    t = -0.5 * ((y[:, None, :] - x[None]) ** 2).sum(-1)
    tmax = t.max(1)
    w = np.exp(t - tmax[:, None])
    return tmax + np.log(w.sum(1)), (w @ x) / w.sum(1)[:, None]


@pytest.mark.parametrize("dtype, tol", [
    (np.float64, 1e-12),    # all float64: ~n·ε at worst, measured 9e-16
    # float32 inputs and arithmetic: |t| up to ~30 here, so the exponent carries ~30·ε32 = 2e-6
    # absolute error; measured 5e-7
    (np.float32, 4e-6),
])
@pytest.mark.parametrize("d", [1, 3])
def test_gaussian_sums_match_direct_float64(dtype, tol, d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(700, d))
    y = 1.5 * rng.normal(size=(90, d))
    lse, mean = kernels.gaussian_sums(np.ascontiguousarray(y.T.astype(dtype)), np.ascontiguousarray(x.T.astype(dtype)),
                                      kernels.kernel_constants(dtype))
    ref_lse, ref_mean = _direct_gaussian_sums(y.astype(dtype).astype(np.float64), x.astype(dtype).astype(np.float64))
    assert lse.dtype == dtype and mean.dtype == dtype
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=tol)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=tol)


def test_kde_fused_equals_torch_path_and_autograd_uses_torch():
    torch.manual_seed(0)
    x = torch.randn(400, 3, dtype=torch.float64)
    y = torch.randn(50, 3, dtype=torch.float64)
    lse, mean = kernels.gaussian_sums_tensor(y, x)
    ref_lse, ref_mean = gaussian_kernel_sums(y, x)
    torch.testing.assert_close(lse, ref_lse, rtol=0, atol=1e-12)   # float64 round-off over 400 terms
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-12)
    # a query that needs a gradient goes through torch: the KDE score equals the gradient of
    # the KDE log-density (to float64 round-off)
    yq = y.clone().requires_grad_(True)
    log_f, score = KDE(bandwidth=0.7)._evaluate(x, yq)
    grad, = torch.autograd.grad(log_f.sum(), yq)
    torch.testing.assert_close(score.detach(), grad, rtol=0, atol=1e-10)
    # and equals the fused result
    log_f0, score0 = KDE(bandwidth=0.7)._evaluate(x, y)
    torch.testing.assert_close(score0, score.detach(), rtol=0, atol=1e-12)


def _bank_inputs(dtype, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, n, m = 3, 260, 40
    ctx = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    qry = 1.5 * torch.randn(B, m, d, generator=g, dtype=torch.float64)
    mask = torch.rand(B, n, generator=g) < 0.7                               # padded batch, as evaluate_cells
    return ctx.to(dtype), qry.to(dtype), mask, mask.sum(1).tolist()


def _max_rel(a, b):
    return max(float(((x.double() - y.double()).abs() / (1 + y.double().abs())).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_bank_fused_equals_torch_float64(d, padded):
    ctx, qry, mask, counts = _bank_inputs(torch.float64, d)
    kw = {"counts": counts, "mask": mask} if padded else {}
    fused = kernel_bank(ctx, qry, KDE_C, LOCAL_C, 1e-3, **kw)
    ref = kernel_bank_torch(ctx, qry, KDE_C, LOCAL_C, 1e-3, **kw)
    assert [t.shape for t in fused] == [t.shape for t in ref]
    # same quantities, different rounding (distances instead of y·x − ½|x|², moments about y,
    # squared kernels for c ratios of 2): measured ≤ 1.3e-13 relative
    assert _max_rel(fused, ref) < 1e-10


@pytest.mark.parametrize("d", [2, 3])
def test_bank_fused_float32_as_accurate_as_torch_float32(d):
    ctx, qry, mask, counts = _bank_inputs(torch.float64, d, seed=1)
    kw = {"counts": counts, "mask": mask}
    truth = kernel_bank_torch(ctx, qry, KDE_C, LOCAL_C, 1e-3, **kw)
    fused = kernel_bank(ctx.float(), qry.float(), KDE_C, LOCAL_C, 1e-3, **kw)
    torch32 = kernel_bank_torch(ctx.float(), qry.float(), KDE_C, LOCAL_C, 1e-3, **kw)
    assert all(t.dtype == torch.float32 for t in fused)
    # the float32 error is dominated by the exponent (t − T)/h² of size up to ~80 times
    # ε32 = 6e-8: ~5e-6, amplified in the local fit's C⁻¹; the torch float32 path measured
    # 6e-5 to 9e-5 on such inputs, the fused one 3e-6 to 4e-5
    err_fused, err_torch = _max_rel(fused, truth), _max_rel(torch32, truth)
    assert err_fused < 2e-4
    assert err_fused < 2 * err_torch


def test_bank_under_autograd_is_the_differentiable_torch_path():
    ctx, qry, mask, counts = _bank_inputs(torch.float64, 2, seed=2)
    q = qry.clone().requires_grad_(True)
    s, log_f, desc = kernel_bank(ctx, q, KDE_C, LOCAL_C, 1e-3)
    assert log_f.requires_grad
    # the KDE candidate's score is the gradient of its log-density (first candidate: c = 0.5),
    # and a second derivative exists (test-time adaptation differentiates with create_graph=True)
    grad, = torch.autograd.grad(log_f[..., 0].sum(), q, create_graph=True)
    torch.testing.assert_close(grad.detach(), s[..., 0, :].detach(), rtol=0, atol=1e-9)
    grad.pow(2).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # the value equals the fused one computed without gradients
    with torch.no_grad():
        fused = kernel_bank(ctx, qry, KDE_C, LOCAL_C, 1e-3)
    assert _max_rel(fused, (s.detach(), log_f.detach(), desc.detach())) < 1e-10


@pytest.mark.parametrize("gamma, delta", [(0.0, 0.0), (-3.0, 1e-2), (-3.0, 0.0), (-1.0, 0.05)])
def test_landau_velocity_matches_torch_reference(gamma, delta):
    rng = np.random.default_rng(3)
    v = rng.normal(size=(300, 3))
    s = -v + 0.2 * rng.normal(size=(300, 3))
    v[7] = v[11]                                    # coincident pair: A(0) = 0, the term is skipped
    s[7] = s[11] + 0.1
    out = landau_kernels.landau_velocity(v, s, gamma, 1.0 / 24.0, delta)
    ref = landau_torch_reference(v, s, gamma, 1.0 / 24.0, delta).numpy()
    scale = np.abs(ref).max()
    # float64 sums of 300 terms in another order: ~1e-15 relative; pairs at |z| ~ 1e-2 weigh
    # up to 1e6 for γ = −3, δ = 0, hence the margin
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-11 * scale)
    assert np.abs(out.sum(0)).max() < 1e-11 * scale * len(v)  # momentum conserved to round-off


def assert_fresh_and_cached_bits_agree(script: str, tmp_path) -> None:
    """Run ``script`` (which prints a hash of its results) in two processes sharing an empty numba
    cache: the first compiles the kernels, the second loads them; both must print the same hash."""
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    assert "compiling" in runs[0].stderr and "compiling" not in runs[1].stderr   # fresh, then cached
    assert runs[0].stdout.split()[-1] == runs[1].stdout.split()[-1]


def test_bank_kernel_gives_the_same_bits_freshly_compiled_and_loaded_from_the_cache(tmp_path):
    """Bitwise resume needs every process to compute the same bits; the first process compiles
    the kernel, later ones load it from numba's cache (a parallel=True build differed at 1e-15)."""
    script = (
        "import hashlib, torch\n"
        "from particlescore import candidates\n"
        "g = torch.Generator().manual_seed(0)\n"
        "out = []\n"
        "for dt in (torch.float32, torch.float64):\n"
        "    ctx = torch.randn(1, 64, 3, generator=g).to(dt); q = torch.randn(1, 40, 3, generator=g).to(dt)\n"
        "    with torch.no_grad():\n"
        "        out += candidates.kernel_bank(ctx, q, [0.5, 0.71, 1.0, 1.41, 2.0], [1.41, 2.0, 2.83, 4.0, 5.66], 1e-3)\n"
        "print(hashlib.md5(b''.join(o.numpy().tobytes() for o in out)).hexdigest())\n")
    assert_fresh_and_cached_bits_agree(script, tmp_path)


def test_parallel_kernels_give_the_same_bits_freshly_compiled_and_loaded_from_the_cache(tmp_path):
    """The same check for the kernels that stay parallel=True: per-cell and all-pairs Landau
    sums (PIC and homogeneous runs resume bitwise), KDE and blob sums, float32 and float64."""
    script = (
        "import hashlib, numpy as np, torch\n"
        "from particlescore import cell_kernels, landau_kernels, estimators\n"
        "rng = np.random.default_rng(0)\n"
        "out = []\n"
        "for d in (2, 3, 5):\n"
        "    v = rng.normal(size=(300, d)); s = -v + 0.1 * rng.normal(size=(300, d))\n"
        "    offsets = np.array([0, 100, 180, 300]); cell_of = np.repeat(np.arange(3), [100, 80, 120])\n"
        "    out.append(cell_kernels.cell_landau_velocity(v, s, offsets, cell_of, -3.0, 1.0, np.full(3, 0.01)))\n"
        "    out.append(landau_kernels.landau_velocity(v, s, -3.0, 1.0, 0.01))\n"
        "    out.append(landau_kernels.landau_velocity(v, s, 0.0, 1.0, 0.0))\n"
        "    x = torch.from_numpy(v)\n"
        "    for dt in (torch.float32, torch.float64):\n"
        "        out += [t.numpy() for t in estimators.KDE('scott')(x.to(dt), x[:50].to(dt))]\n"
        "        out += [t.numpy() for t in estimators.Blob()(x.to(dt))]\n"
        "print(hashlib.md5(b''.join(np.ascontiguousarray(o).tobytes() for o in out)).hexdigest())\n")
    assert_fresh_and_cached_bits_agree(script, tmp_path)
