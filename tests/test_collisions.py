"""Cell-wise Landau collision operator (particlescore.collisions): exact answers and bad input."""
import math

import numpy as np
import pytest
import torch

import particlescore as ps
from particlescore import cell_kernels, landau_kernels
from particlescore.collisions import BatchedScoreEstimator, LandauCollisions, cell_moments

B = 1.0 / 24.0


def _cells(seed=0, sizes=(150, 220, 180), d=2):
    """Particles of several cells, each an anisotropic Gaussian with its own mean and covariance,
    shuffled so that cells interleave in the flat array."""
    rng = np.random.default_rng(seed)
    blocks, ids = [], []
    for c, n in enumerate(sizes):
        scales = np.linspace(1.6, 0.4, d) * (1 + 0.2 * c)
        blocks.append(rng.normal(size=(n, d)) * scales + c)        # mean (c, c, ...)
        ids.append(np.full(n, c))
    v, cell = np.concatenate(blocks), np.concatenate(ids)
    order = rng.permutation(len(v))
    return v[order], cell[order]


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("gamma", [0.0, -3.0, -1.0])
def test_cell_kernels_equal_homogeneous_kernels_per_cell(gamma):
    v, cell = _cells(1, sizes=(60, 90, 75), d=3)
    s = -v + np.sin(v)                                                # any smooth field
    order = np.argsort(cell, kind="stable")
    vs, ss = np.ascontiguousarray(v[order]), np.ascontiguousarray(s[order])
    counts = np.bincount(cell)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    cell_of = np.repeat(np.arange(len(counts)), counts)
    delta = np.array([0.1, 0.2, 0.3])
    if gamma == 0.0:
        u = cell_kernels.cell_landau_velocity_maxwell(vs, ss, offsets, B)
    else:
        u = cell_kernels.cell_landau_velocity(vs, ss, offsets, cell_of, gamma, B, delta)
    for c in range(3):
        lo, hi = offsets[c], offsets[c + 1]
        ref = landau_kernels.landau_velocity(np.ascontiguousarray(vs[lo:hi]), np.ascontiguousarray(ss[lo:hi]),
                                             gamma, B, float(delta[c]))
        # same sums in a different association order: round-off only (|U| = O(1) here)
        np.testing.assert_allclose(u[lo:hi], ref, rtol=0, atol=1e-12)


def test_random_batch_as_large_as_the_cell_equals_full_interactions():
    v, cell = _cells(2, sizes=(40, 70), d=2)
    s = -v
    full = LandauCollisions(ps.KDE(), gamma=-3.0, regularization=0.05)
    batch = LandauCollisions(ps.KDE(), gamma=-3.0, regularization=0.05, random_batch=100)
    # one batch per cell: weight (n−1)/(n(m−1)) = 1/n, the full sum (summed in another order)
    np.testing.assert_allclose(batch.velocity(v, cell), full.velocity(v, cell), rtol=0, atol=1e-13)
    del s


# --------------------------------------------------------------------------- conservation
@pytest.mark.parametrize("gamma,random_batch,integrator",
                         [(0.0, None, "euler"), (-3.0, None, "heun"), (0.0, 16, "euler"), (-3.0, 16, "heun")])
def test_per_cell_momentum_conserved_to_round_off(gamma, random_batch, integrator):
    v, cell = _cells(3)
    op = LandauCollisions(ps.KDE(), gamma=gamma, random_batch=random_batch, integrator=integrator, seed=1)
    _, p0, _ = cell_moments(v, cell, 3)
    counts = np.bincount(cell)
    x = v
    for _ in range(10):
        x = op.step(x, cell, 0.1)
    _, p1, _ = cell_moments(x, cell, 3)
    moved = np.abs(x - v).max()
    assert moved > 1e-3                                               # the operator did something
    # per-cell total momentum Σ_i v_i: the pair terms cancel exactly, what is left is the
    # round-off of ~200 additions of O(1) numbers per step (~1e-14); the bar is 1e-12
    drift = np.abs((p1 - p0) * counts[:, None]).max()
    assert drift <= 1e-12, drift


@pytest.mark.parametrize("dt", [0.05, 0.2])
def test_energy_change_per_step_is_the_integrators_exact_defect(dt):
    """Σ_i v_i·U_i = 0 exactly (A(z)z = 0, pair antisymmetry), so a step changes Σ|v|² only by
    its truncation defect: Euler by dt²Σ|U(v)|² (O(dt²) per step); Heun (explicit trapezoid)
    by (dt²/4)Σ|U(v*) − U(v)|² with U(v*) − U(v) = O(dt), i.e. O(dt⁴) per step."""
    v, cell = _cells(4, sizes=(200, 200), d=2)
    euler = LandauCollisions(ps.KDE(), gamma=-3.0, regularization=0.1, integrator="euler")
    heun = LandauCollisions(ps.KDE(), gamma=-3.0, regularization=0.1, integrator="heun")
    u0 = euler.velocity(v, cell)
    u1 = euler.velocity(v + dt * u0, cell)
    energy = (v ** 2).sum()
    d_euler = (euler.step(v, cell, dt) ** 2).sum() - energy
    d_heun = (heun.step(v, cell, dt) ** 2).sum() - energy
    # identities up to the round-off of Σ|v|² (~1e-16 · 1e3)
    assert d_euler == pytest.approx(dt ** 2 * (u0 ** 2).sum(), rel=1e-8, abs=1e-11)
    assert d_heun == pytest.approx(dt ** 2 / 4 * ((u1 - u0) ** 2).sum(), rel=1e-6, abs=1e-11)
    assert 0 < d_heun < d_euler


# --------------------------------------------------------------------------- relaxation
def test_each_cell_relaxes_like_the_homogeneous_solver_and_the_exact_covariance():
    """Collisions only, Maxwell molecules: each cell's covariance follows the homogeneous
    particle solver (Euler on ps.Landau with the same estimator) from the same particles, and
    so the exact Σ(t) = Σ∞ − (Σ∞ − Σ̂(0)) e^{−4dBt} started from the cell's own Σ̂(0)."""
    d, n, dt, steps = 2, 300, 0.25, 16                               # t_end = 4: e^{-4dBt} = 0.26
    v, cell = _cells(5, sizes=(n, n, n), d=d)
    est = ps.KDE()
    op = LandauCollisions(est, gamma=0.0, B=B)
    physics = ps.Landau(gamma=0.0, B=B)
    homogeneous = [v[cell == c] for c in range(3)]
    _, _, cov0 = cell_moments(v, cell, 3)
    x = v
    for k in range(steps):
        x = op.step(x, cell, dt)
        homogeneous = [h + dt * physics(k * dt, h, est(h)[1]) for h in homogeneous]
    t = steps * dt
    _, _, cov = cell_moments(x, cell, 3)
    for c in range(3):
        # the same particle method cell by cell: equal to the homogeneous run up to round-off
        np.testing.assert_allclose(x[cell == c], homogeneous[c], rtol=0, atol=1e-11)
        sigma_inf = np.trace(cov0[c]) / d * np.eye(d)
        exact = sigma_inf - (sigma_inf - cov0[c]) * math.exp(-4 * d * B * t)
        # homogeneous accuracy at n = 300 with Scott KDE: the in-sample score (each particle's
        # own kernel included) is shrunk, which slows the relaxation rate by ~25 %; at t = 4
        # that is 8–11 % of |Σ∞ − Σ̂(0)| (measured), Euler's O(dt) adds ~1 %: bar 15 %
        err = np.abs(cov[c] - exact).max()
        assert err < 0.15 * np.abs(sigma_inf - cov0[c]).max(), (c, err)
        assert np.abs(cov[c] - cov0[c]).max() > 0.5 * np.abs(exact - cov0[c]).max()



@pytest.mark.parametrize("batched", [False, True])
def test_moment_projection_gives_every_cell_the_exact_maxwell_covariance_rate(batched):
    """With ``moment_projection`` each cell's covariance rate is 4B(tr Σ̂·I − dΣ̂) at the cell's
    own Σ̂, whatever the estimator (KDE per cell, DiScoFormer batched); without it the estimator
    misses the rate by its own error (the check below can fail)."""
    d = 2
    v, cell = _cells(7, sizes=(300, 150, 40), d=d)
    est = ps.DiScoFormer.pretrained(dim=d) if batched else ps.KDE()
    _, _, cov = cell_moments(v, cell, 3)
    rates = {}
    for projection in (False, True):
        u = LandauCollisions(est, gamma=0.0, B=B, moment_projection=projection).velocity(v, cell)
        rates[projection] = []
        for c in range(3):
            x, w = v[cell == c], u[cell == c]
            centred = x - x.mean(0)
            rates[projection].append((w.T @ centred + centred.T @ w) / len(x))
    for c in range(3):
        exact = 4 * B * (np.trace(cov[c]) * np.eye(d) - d * cov[c])
        scale = np.abs(exact).max()
        # sums of n_c O(1) terms in float64: 1e-10 relative (test_stein measures ~1e-15)
        assert np.abs(rates[True][c] - exact).max() <= 1e-10 * scale, c
        # without the projection the smooth estimate misses the empirical identities by
        # O(n_c^{-1/2}) sampling noise (KDE: ~25 % slower, see the relaxation test above)
        assert np.abs(rates[False][c] - exact).max() > 1e-4 * scale, c

def test_batched_discoformer_equals_per_cell_loop():
    est = ps.DiScoFormer.pretrained(dim=2)
    assert isinstance(est, BatchedScoreEstimator) and not isinstance(ps.KDE(), BatchedScoreEstimator)
    v, cell = _cells(6, sizes=(64, 150, 2, 100), d=2)                # cell 2 is skipped (n ≤ d)
    batched = LandauCollisions(est, B=1.0)
    loop = LandauCollisions(est, B=1.0, batched=False)
    assert batched.batched and not loop.batched
    a, b = batched.step(v, cell, 0.1), loop.step(v, cell, 0.1)
    assert np.abs(a - v).max() > 1e-3
    # the network runs in float32 (eps 1.2e-7); padded and unpadded attention sum the same
    # terms in another order: a few ulps of the O(1) scores, times dt·B·O(|v|³) ≈ 1
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # a bounded context (DiScoFormer.context_size: 64 points when n·n > 6400) applies per cell in
    # the batched call too: the bank and attention of cells 1 and 3 (150 and 100 points) see the
    # same seeded subsample as the single-context call, cell 0 (64) all its points
    small = ps.DiScoFormer.pretrained(dim=2, max_context=64, max_pairs=64 * 100)
    assert [small.context_size(k, k) for k in (64, 150, 100)] == [64, 64, 64]
    c = LandauCollisions(small, B=1.0).step(v, cell, 0.1)
    np.testing.assert_allclose(c, LandauCollisions(small, B=1.0, batched=False).step(v, cell, 0.1), rtol=0, atol=1e-5)
    assert np.abs(c - a).max() > 1e-3                                 # the subsample changed cells 1 and 3
    np.testing.assert_allclose(c[cell == 0], a[cell == 0], rtol=0, atol=1e-5)
    # the moment projection (DiScoFormer(moment_projection=True)) is applied per cell as well
    proj = ps.DiScoFormer.pretrained(dim=2, moment_projection=True)
    np.testing.assert_allclose(LandauCollisions(proj, B=1.0).step(v, cell, 0.1),
                               LandauCollisions(proj, B=1.0, batched=False).step(v, cell, 0.1), rtol=0, atol=1e-5)


def _bimodal_score(v, a, s2):
    """Exact score of ½N(−a, s2·I) + ½N(a, s2·I) at v (n, d)."""
    lp = np.stack([-((v - m) ** 2).sum(1) / (2 * s2) for m in (-a, a)])      # (2, n)
    r = np.exp(lp - lp.max(0))
    r /= r.sum(0)
    return sum(r[k][:, None] * (-(v - m) / s2) for k, m in enumerate((-a, a)))


def test_warm_started_cells_agree_with_cold_cells_within_the_estimators_error():
    """evaluate_cells(state=...) vs cold evaluate_cells on a sequence of slowly changing cells:
    cells 0, 1 Gaussian N(μ_c, (1+ε²)L_cLᵀ_c), exact score −Σ⁻¹(v − μ_c); cells 2, 3 the
    mixture ½N(−a, s²I) + ½N(a, s²I), s² = 0.36(1+ε²), exact score Σ_k r_k(v)·(−(v − μ_k)/s²).
    Each call redraws v = mean + L(z + εξ) with z fixed and fresh ξ, ε = 0.2: consecutive
    samples are correlated, as a collision step leaves them, and exactly of that law."""
    est = ps.DiScoFormer.pretrained(dim=2)
    rng = np.random.default_rng(12)
    sizes, eps, a = np.array([300, 400, 360, 420]), 0.2, np.array([1.5, 0.5])
    L = [np.array([[1.2, 0.0], [0.4, 0.6]]), np.array([[0.7, 0.0], [-0.3, 1.1]])]
    z = [rng.normal(size=(n, 2)) for n in sizes]
    side = [rng.random(n) < 0.5 for n in sizes]
    state, steps = {}, 5
    for k in range(steps):
        ctx, exact = np.zeros((4, sizes.max(), 2)), np.zeros((4, sizes.max(), 2))
        for c, n in enumerate(sizes):
            w = z[c] + eps * rng.normal(size=(n, 2))
            if c < 2:
                ctx[c, :n] = c + w @ L[c].T
                exact[c, :n] = -(ctx[c, :n] - c) @ np.linalg.inv((1 + eps ** 2) * L[c] @ L[c].T)
            else:
                ctx[c, :n] = np.where(side[c][:, None], a, -a) + 0.6 * w
                exact[c, :n] = _bimodal_score(ctx[c, :n], a, 0.36 * (1 + eps ** 2))
        _, cold = est.evaluate_cells(ctx, sizes)
        _, warm = est.evaluate_cells(ctx, sizes, state=state)
        for c, n in enumerate(sizes):
            norm = np.linalg.norm(exact[c, :n])
            err_cold = np.linalg.norm(cold[c, :n] - exact[c, :n]) / norm
            gap = np.linalg.norm(warm[c, :n] - cold[c, :n]) / norm
            if c < 2:
                # a Gaussian cell: BIC keeps one component, the sample Gaussian, which EM
                # reproduces exactly, so warm = cold up to float32 round-off (measured ≤ 2e-7;
                # cold error 5–13 % at these n)
                assert gap <= 1e-5, (k, c, gap)
            else:
                # two components refined by 3 EM steps instead of a fresh search: measured gap
                # ≤ 1.2 % against a cold error of 18–34 % (ratio ≤ 0.04); bar: a tenth of the
                # estimator's own error
                assert gap <= 0.1 * err_cold, (k, c, gap, err_cold)
            assert err_cold < 0.5                                            # the estimator works here
    # every call after the first was warm (no search): ages advanced from id mod refit_every
    assert state["age"].tolist() == [c + steps - 1 for c in range(4)]
    assert torch.isfinite(state["log_weight"]).sum(1).tolist() == [1, 1, 2, 2]


def test_warm_started_operator_conserves_momentum_and_restores_its_state_bitwise():
    est = ps.DiScoFormer.pretrained(dim=2)
    v, cell = _cells(13, sizes=(150, 220, 180))
    op = LandauCollisions(est, B=B, warm_start=True)
    cold = LandauCollisions(est, B=B)
    assert op.state_dict() == {} and op.describe()["warm_start"]
    _, p0, _ = cell_moments(v, cell, 3)
    x, y = v, v
    for _ in range(3):
        x, y = op.step(x, cell, 0.1), cold.step(y, cell, 0.1)
    _, p1, _ = cell_moments(x, cell, 3)
    # the pair sums are those of the cold operator: momentum drift is summation round-off
    assert np.abs((p1 - p0) * np.bincount(cell)[:, None]).max() <= 1e-12
    # warm vs cold velocities after 3 steps: these cells are Gaussian, so the fit is the one
    # sample Gaussian either way and they differ by float32 round-off of the scores (measured
    # 7e-8 of the displacement 0.96)
    assert np.abs(x - y).max() < 1e-5 * np.abs(x - v).max()
    saved = op.state_dict()
    assert saved["cells.age"].tolist() == [2, 3, 4]
    after = op.step(x, cell, 0.1)
    fresh = LandauCollisions(est, B=B, warm_start=True)
    fresh.load_state_dict(saved)
    np.testing.assert_array_equal(fresh.step(x, cell, 0.1), after)          # bitwise
    fresh.reset()
    assert fresh.state_dict() == {}
    np.testing.assert_allclose(fresh.step(x, cell, 0.1), cold.step(x, cell, 0.1), rtol=0, atol=1e-12)
    # evaluate_cells in groups of one cell (an instance attribute shadows the class's block)
    # equals one group of all cells: float32 network, padded vs unpadded sums (as in
    # test_batched_discoformer_equals_per_cell_loop)
    ref = cold.step(x, cell, 0.1)
    est._CELL_BLOCK = 1
    try:
        assert [g[:2] for g in est._cell_groups([150, 220, 180])] == [(0, 1), (1, 2), (2, 3)]
        single = cold.step(x, cell, 0.1)
    finally:
        del est._CELL_BLOCK
    assert [g[:2] for g in est._cell_groups([150, 220, 180])] == [(0, 3)]
    np.testing.assert_allclose(single, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="warm_start=True needs"):
        LandauCollisions(ps.KDE(), warm_start=True)
    with pytest.raises(ValueError, match="warm_start=True needs"):
        LandauCollisions(est, warm_start=True, batched=False)
    with pytest.raises(ValueError, match="warm_start=False"):
        cold.load_state_dict(saved)
    with pytest.raises(ValueError, match="not an evaluate_cells state"):
        est.evaluate_cells(np.zeros((1, 5, 2)) + np.arange(10).reshape(1, 5, 2) ** 1.5, [5], state={"age": 1})


# --------------------------------------------------------------------------- layouts and types
def test_padded_layout_equals_flat_layout():
    v, cell = _cells(7, sizes=(30, 50, 0 + 2), d=2)
    op = LandauCollisions(ps.KDE())
    flat = op.step(v, cell, 0.2)
    counts = np.bincount(cell)
    padded = np.full((3, counts.max(), 2), 7.0)
    for c in range(3):
        padded[c, :counts[c]] = v[cell == c]
    out = op.step_padded(padded, counts, 0.2)
    for c in range(3):
        np.testing.assert_array_equal(out[c, :counts[c]], flat[cell == c])
        assert np.all(out[c, counts[c]:] == 7.0)                      # padding untouched


def test_numpy_and_torch_in_same_type_and_dtype_out():
    v, cell = _cells(8, sizes=(40, 40), d=3)
    op = LandauCollisions(ps.KDE())
    ref = op.step(v, cell, 0.1)
    for dtype in (np.float32, np.float64):
        out = op.step(v.astype(dtype), cell.astype(np.int32), 0.1)
        assert isinstance(out, np.ndarray) and out.dtype == dtype
    for dtype in (torch.float32, torch.float64):
        out = op.step(torch.tensor(v, dtype=dtype), torch.tensor(cell), 0.1)
        assert isinstance(out, torch.Tensor) and out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), ref)


def test_random_batches_are_reproducible_from_the_seed_or_generator():
    v, cell = _cells(9)
    a = LandauCollisions(ps.KDE(), random_batch=8, seed=3).step(v, cell, 0.1)
    b = LandauCollisions(ps.KDE(), random_batch=8, seed=3).step(v, cell, 0.1)
    c = LandauCollisions(ps.KDE(), random_batch=8, seed=4).step(v, cell, 0.1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0
    op = LandauCollisions(ps.KDE(), random_batch=8)
    g1, g2 = np.random.default_rng(11), np.random.default_rng(11)
    np.testing.assert_array_equal(op.step(v, cell, 0.1, generator=g1), op.step(v, cell, 0.1, generator=g2))


# --------------------------------------------------------------------------- small cells and bad input
def test_cells_with_at_most_d_particles_are_skipped_unchanged():
    d = 3
    rng = np.random.default_rng(10)
    sizes = {0: 50, 2: 1, 3: 3, 4: 4, 7: 40}                        # cells 1, 5, 6 are empty
    cell = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    v = rng.normal(size=(len(cell), d))
    op = LandauCollisions(ps.KDE(bandwidth=0.5), B=1.0)
    out = op.step(v, cell, 0.1)
    for c, n in sizes.items():
        unchanged = np.array_equal(out[cell == c], v[cell == c])
        assert unchanged == (n <= d), c
    assert op.last_skipped_cells.tolist() == [2, 3]
    # a call with only small cells returns a copy of the input
    small = cell[(cell == 2) | (cell == 3)]
    np.testing.assert_array_equal(op.step(v[(cell == 2) | (cell == 3)], small, 0.1), v[(cell == 2) | (cell == 3)])
    counts = np.array([0, 3, 10])
    padded = rng.normal(size=(3, 10, d))
    out = op.step_padded(padded, counts, 0.1)
    np.testing.assert_array_equal(out[:2], padded[:2])
    assert np.abs(out[2] - padded[2]).max() > 0


def test_bad_input_gives_clear_errors_and_changes_nothing():
    v, cell = _cells(11)
    keep = v.copy()
    op = LandauCollisions(ps.KDE())
    with pytest.raises(ValueError, match="vanishes"):
        op.step(v[:, :1], cell, 0.1)
    bad = v.copy()
    bad[17, 1] = np.nan
    with pytest.raises(ValueError, match="NaN.*particle 17"):
        op.step(bad, cell, 0.1)
    with pytest.raises(ValueError, match=r"cell must have shape \(550,\)"):
        op.step(v, cell[:-1], 0.1)
    with pytest.raises(ValueError, match="integers"):
        op.step(v, cell.astype(float), 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        op.step(v, cell - 1, 0.1)
    for dt in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="dt must be"):
            op.step(v, cell, dt)
    with pytest.raises(ValueError, match="batched=True"):
        LandauCollisions(ps.KDE(), batched=True)
    with pytest.raises(ValueError, match="random_batch"):
        LandauCollisions(ps.KDE(), random_batch=1)
    with pytest.raises(ValueError, match="integrator"):
        LandauCollisions(ps.KDE(), integrator="rk4")
    with pytest.raises(ValueError, match="moment_projection must be True or False"):
        LandauCollisions(ps.KDE(), moment_projection="yes")
    np.testing.assert_array_equal(v, keep)                           # input never modified
