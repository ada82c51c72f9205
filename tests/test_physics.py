"""Landau kernels, physics right-hand sides and test problems (docs/equations.md)."""
import itertools
import math

import numpy as np
import pytest
import torch

from particlescore import landau_kernels
from particlescore.distributions import BKW
from particlescore.physics import FokkerPlanck, Landau, landau_torch_reference
from particlescore.problems import (AnisotropicMaxwell, BKWProblem, CoulombRelaxation, MovingTrap,
                                    OrnsteinUhlenbeck, PureDiffusion, problem_from_config)

F64 = torch.float64


def _pairs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64))


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("d", [2, 3, 10])
@pytest.mark.parametrize("gamma", [0.0, -3.0, -1.5])
def test_numba_kernel_matches_torch_reference(d, gamma):
    v, s = _pairs(50, d, seed=d)
    delta = 1e-3 if gamma < 0 else 0.0
    got = Landau(gamma=gamma, regularization=delta)(0.0, v, s)       # moment form for γ = 0
    pair = torch.from_numpy(landau_kernels.landau_velocity(v.numpy(), s.numpy(), gamma, 1 / 24, delta))
    ref = landau_torch_reference(v, s, gamma, 1 / 24, delta)
    # Same sums in a different order: agreement to round-off relative to the largest entry.
    scale = ref.abs().max().item()
    assert torch.allclose(pair, ref, rtol=0, atol=1e-12 * scale)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("d", [2, 3, 10])
def test_maxwell_moment_form_equals_the_pair_sum(d):
    v, s = _pairs(300, d, seed=d)
    v, s = v + 3.0, s - 1.0                                  # off-centre: the form centres itself
    pair = landau_kernels.landau_velocity(v.numpy(), s.numpy(), 0.0, 1 / 24, 0.0)
    moments = landau_kernels.landau_velocity_maxwell(v.numpy(), s.numpy(), 1 / 24)
    # Both are exact; they differ by round-off of sums of n terms of size ~|u|·n (≈1e-15 measured).
    np.testing.assert_allclose(moments, pair, rtol=0, atol=1e-12 * np.abs(pair).max())
    assert np.abs(moments.sum(0)).max() < 1e-13 * np.abs(moments).sum()


@pytest.mark.parametrize("gamma", [0.0, -3.0])
def test_momentum_conserved_and_energy_rate_zero(gamma):
    v, s = _pairs(200, 3)
    u = Landau(gamma=gamma, regularization=1e-3)(0.0, v, s)
    # Σ_i u_i = 0 by antisymmetry (round-off only: 200² terms of size ~|u|).
    assert u.sum(0).abs().max() < 1e-12 * u.abs().sum()
    # Σ_i v_i·u_i = 0 because A(z)z = 0.
    assert abs((v * u).sum()) < 1e-12 * (v.abs() * u.abs()).sum()


def test_numpy_in_numpy_out_and_dtype_kept():
    v, s = _pairs(30, 3)
    out = Landau()(0.0, v.numpy(), s.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (30, 3)
    out32 = Landau()(0.0, v.float(), s.float())
    assert out32.dtype == torch.float32
    with pytest.raises(ValueError, match="score"):
        Landau()(0.0, v, s[:5])
    with pytest.raises(ValueError, match="d >= 2"):
        Landau()(0.0, v[:, :1], s[:, :1])


def test_default_regularization_scales_with_the_ensemble():
    v, s = _pairs(40, 3)
    landau = Landau(gamma=-3.0)
    assert landau.delta(v) == pytest.approx(1e-3 * math.sqrt(((v - v.mean(0)) ** 2).sum().item() / 120))
    assert Landau(gamma=0.0).delta(v) == 0.0
    # Scaling v by c scales δ by c: the regularised field is scale-covariant.
    assert landau.delta(10 * v) == pytest.approx(10 * landau.delta(v))


def test_random_batch_with_one_batch_is_the_full_sum():
    v, s = _pairs(37, 3)
    vn, sn = v.numpy(), s.numpy()
    perm = np.random.default_rng(0).permutation(37)
    full = landau_kernels.landau_velocity(vn, sn, 0.0, 1 / 24, 0.0)
    batched = landau_kernels.landau_velocity_random_batch(vn, sn, perm, 37, 0.0, 1 / 24, 0.0)
    np.testing.assert_allclose(batched, full, rtol=0, atol=1e-14 * np.abs(full).max())


def test_random_batch_is_unbiased_and_conserves_momentum():
    # n = 5, batches of 3 and 2: averaging over all 120 permutations gives the full sum exactly
    # (c_m = (n−1)/(n(m−1)) makes every pair's expected coefficient 1/n).
    v, s = _pairs(5, 3)
    vn, sn = v.numpy(), s.numpy()
    full = landau_kernels.landau_velocity(vn, sn, -3.0, 1 / 24, 1e-3)
    total = np.zeros_like(full)
    for perm in itertools.permutations(range(5)):
        out = landau_kernels.landau_velocity_random_batch(vn, sn, np.array(perm), 3, -3.0, 1 / 24, 1e-3)
        assert np.abs(out.sum(0)).max() < 1e-14 * np.abs(out).sum() + 1e-300
        total += out
    np.testing.assert_allclose(total / 120, full, rtol=0, atol=1e-13 * np.abs(full).max())


def test_random_batch_landau_needs_and_replays_its_generator():
    v, s = _pairs(64, 3)
    landau = Landau(random_batch_size=8)
    assert landau.stochastic
    with pytest.raises(ValueError, match="at_step"):
        landau(0.0, v, s)
    a = landau.at_step(torch.Generator().manual_seed(3))
    out_a = a(0.0, v, s)
    assert torch.equal(a(0.0, v, s), out_a)          # one permutation for the whole step
    out_b = landau.at_step(torch.Generator().manual_seed(3))(0.0, v, s)
    assert torch.equal(out_a, out_b)
    out_c = landau.at_step(torch.Generator().manual_seed(4))(0.0, v, s)
    assert not torch.equal(out_a, out_c)
    assert out_a.sum(0).abs().max() < 1e-13
    with pytest.raises(ValueError, match="random_batch_size"):
        Landau(random_batch_size=1)


def test_fokker_planck_is_drift_minus_diffusion_times_score():
    x, s = _pairs(20, 2)
    fp = FokkerPlanck(lambda t, y: -t * y, 0.5)
    assert torch.allclose(fp(2.0, x, s), -2.0 * x - 0.5 * s)
    out = fp(2.0, x.numpy(), s.numpy())
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, (-2.0 * x - 0.5 * s).numpy())
    with pytest.raises(ValueError, match="diffusion"):
        FokkerPlanck(lambda t, y: y, -1.0)


# --------------------------------------------------------------------------- problems
def test_anisotropic_covariance_rate_from_the_particle_field():
    # dΣ/dt = 4B(tr Σ·I − dΣ) holds for any law; at t = 0 with the exact Gaussian score the
    # particle field's (1/n)Σ_i (v_i u_iᵀ + u_i v_iᵀ) estimates Σ'(0) = diag(−0.4, 0.4, 0).
    # Spread of this estimate over 10 seeds at n = 8000: SD ≈ 0.010 on the diagonal, ≤ 0.02 off
    # it; tolerances are 4 SD.
    problem = AnisotropicMaxwell(3)
    v = problem.initial_state(8000, generator=torch.Generator().manual_seed(1))
    s = -v @ torch.linalg.inv(problem.initial_covariance)
    u = problem.physics(0.0, v, s)
    vc = v - v.mean(0)
    rate = (vc.T @ u + u.T @ vc) / v.shape[0]
    h = 1e-6
    expected = (problem.exact_covariance(h) - problem.exact_covariance(0.0)) / h
    assert torch.allclose(expected, torch.diag(torch.tensor([-0.4, 0.4, 0.0], dtype=F64)), atol=1e-5)
    assert (rate - expected).diagonal().abs().max() < 0.04
    assert (rate - expected).abs().max() < 0.08
    # Formula end points.
    assert torch.allclose(problem.exact_covariance(0.0), problem.initial_covariance, rtol=0, atol=1e-15)
    assert torch.allclose(problem.exact_covariance(200.0), torch.eye(3, dtype=F64))


@pytest.mark.parametrize("initial", ["gaussian", "mixture"])
def test_anisotropic_fourth_moment_rate_from_the_particle_field(initial):
    """dM4/dt = −4B(d−1)M4 + 4B(d+1)(tr Σ)² − 8B tr Σ² (M4 = E|v|⁴, any mean-zero law; docs/equations.md)
    against the particle field at t = 0 with the exact score of the initial law:
    (1/n)Σ_i 4|v_i|² v_i·u_i estimates (1 − 1/n)·M4'(0) (−1.28 Gaussian, +0.10 mixture). Spread over
    20 draws at n = 4000: SD 0.088 / 0.019 (measured); the mean of 6 draws is held to 4 standard
    errors (at least 0.08). A wrong coefficient in the derivation (e.g. −4Bd·M4) moves the rate by
    > 0.5."""
    d = 3
    problem = AnisotropicMaxwell(d, initial=initial)
    law = problem.initial_distribution()
    h = 1e-6
    expected = (problem.exact_fourth_moment(h) - problem.exact_fourth_moment(0.0)) / h
    rates = []
    for seed in range(6):
        v = law.sample(4000, generator=torch.Generator().manual_seed(seed))
        u = problem.physics(0.0, v, law.score(v))
        vc = v - v.mean(0)
        rates.append(float((4 * (vc * vc).sum(1) * (vc * u).sum(1)).mean()))
    mean, se = np.mean(rates), np.std(rates, ddof=1) / math.sqrt(len(rates))
    assert abs(mean - expected) < 4 * max(se, 0.02), (mean, se, expected)   # 4·0.02 = 0.08 floor


def test_anisotropic_fourth_moment_closed_form():
    """The closed form solves its ODE (finite differences), starts at the initial law's E|v|⁴
    (Monte Carlo), ends at the Maxwellian's d(d+2)T², and exceeds the Gaussian with covariance
    Σ(t) in between (the law does not stay Gaussian)."""
    for d in (2, 3, 10):
        problem = AnisotropicMaxwell(d)
        B, cov0 = problem.B, problem.initial_covariance
        for t in (0.3, 1.0, 3.0):
            h = 1e-5
            slope = (problem.exact_fourth_moment(t + h) - problem.exact_fourth_moment(t - h)) / (2 * h)
            cov = problem.exact_covariance(t)
            rhs = B * (-4 * (d - 1) * problem.exact_fourth_moment(t) + 4 * (d + 1) * float(torch.trace(cov)) ** 2
                       - 8 * float(torch.trace(cov @ cov)))
            assert abs(slope - rhs) < 1e-6 * (1 + abs(rhs))                  # central difference, O(h²)
            gaussian = float(torch.trace(cov)) ** 2 + 2 * float(torch.trace(cov @ cov))
            assert problem.exact_fourth_moment(t) > gaussian
        assert abs(problem.exact_fourth_moment(400.0) - d * (d + 2)) < 1e-9  # T = 1
        x = problem.initial_state(200000, generator=torch.Generator().manual_seed(0))
        mc = float(((x * x).sum(1) ** 2).mean())
        # Monte Carlo: relative SD of |v|⁴ is ~1.5-3 here, so SE ~ 0.7 % at 2e5 samples; 4 SE
        assert abs(mc - problem.exact_fourth_moment(0.0)) < 0.03 * problem.exact_fourth_moment(0.0)
        assert problem.exact_fourth_moment(0.0) == pytest.approx(
            float(torch.trace(cov0)) ** 2 + 2 * float(torch.trace(cov0 @ cov0)), rel=1e-14)


@pytest.mark.parametrize("initial", ["gaussian", "mixture"])
def test_anisotropic_initial_law_has_the_stated_covariance(initial):
    problem = AnisotropicMaxwell(4, initial=initial)
    law = problem.initial_distribution()
    assert torch.allclose(law.covariance.to(F64), torch.diag(torch.tensor([1.8, 0.2, 1.0, 1.0], dtype=F64)))
    assert torch.allclose(law.mean.to(F64), torch.zeros(4, dtype=F64))
    x = problem.initial_state(10, generator=torch.Generator().manual_seed(0))
    assert x.dtype == F64 and x.shape == (10, 4)


def test_bkw_initial_sampler_has_exact_moments():
    problem = BKWProblem(3)
    assert problem.t0 == pytest.approx(math.log(2.5) / (2 / 24 * 2))
    n = 200_000
    v = problem.initial_state(n, generator=torch.Generator().manual_seed(0))
    law = BKW(3, problem.t0)
    r2 = (v * v).sum(1)
    # Mean 0, covariance I, E|v|⁴ = K d(d+2)(2−K): compare within 5 standard errors.
    se_mean = math.sqrt(1.0 / n)
    assert v.mean(0).abs().max() < 5 * se_mean
    products = v[:, :, None] * v[:, None, :]                       # (n, d, d)
    se_cov = (products.var(0) / n).sqrt()                          # standard error of each entry
    assert ((products.mean(0) - torch.eye(3, dtype=F64)).abs() < 5 * se_cov).all()
    m4 = law.fourth_moment
    se_m4 = math.sqrt(((r2 * r2).var().item()) / n)
    assert abs((r2 * r2).mean().item() - m4) < 5 * se_m4
    assert torch.equal(problem.exact_covariance(problem.t0 + 1), torch.eye(3, dtype=F64))


def test_coulomb_knows_only_the_equilibrium():
    problem = CoulombRelaxation()
    assert problem.exact_covariance(1.0) is None and problem.exact_distribution(1.0) is None
    assert torch.allclose(problem.equilibrium_covariance, torch.eye(3, dtype=F64))
    assert problem.physics.gamma == -3.0 and problem.physics.regularization == 1e-3


def test_fokker_planck_exact_laws():
    ou = OrnsteinUhlenbeck(2, t0=0.5)
    assert torch.allclose(ou.exact_covariance(1.0), (1 - math.exp(-2)) * torch.eye(2, dtype=F64))
    heat = PureDiffusion(3, D=0.5, t0=0.5)
    assert torch.allclose(heat.exact_covariance(2.0), 2.0 * torch.eye(3, dtype=F64))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(heat.physics(1.0, x, -x), 0.5 * x)


def test_moving_trap_exact_mean_and_variance_solve_their_odes():
    trap = MovingTrap()
    assert torch.allclose(trap.exact_mean(0.0), torch.tensor([2.0, 0.0], dtype=F64))
    h = 1e-5
    for t in (0.0, 0.3, 1.7, 4.0):
        dm = (trap.exact_mean(t + h) - trap.exact_mean(t - h)) / (2 * h) if t > 0 else \
            (trap.exact_mean(t + h) - trap.exact_mean(t)) / h
        assert torch.allclose(dm, trap.beta(t) - trap.exact_mean(t), atol=1e-4)
        dvar = (trap.variance(t + h) - trap.variance(t)) / h
        assert dvar == pytest.approx(-2 * (1 - trap.alpha) * trap.variance(t) + 2 * trap.D, abs=1e-4)
    # The drift's mean-field term averages out: mean velocity = β − mean.
    x = trap.initial_state(500, generator=torch.Generator().manual_seed(0))
    b = trap.physics.drift(0.3, x)
    assert torch.allclose(b.mean(0), trap.beta(0.3) - x.mean(0), atol=1e-12)


@pytest.mark.parametrize("problem", [BKWProblem(2), AnisotropicMaxwell(3, initial="mixture"),
                                     CoulombRelaxation(3, random_batch_size=16), OrnsteinUhlenbeck(4, t0=0.3),
                                     PureDiffusion(2, D=2.0), MovingTrap(alpha=0.25)])
def test_problem_config_round_trip(problem):
    import json

    config = json.loads(json.dumps(problem.config()))
    rebuilt = problem_from_config(config)
    assert type(rebuilt) is type(problem) and rebuilt.config() == problem.config()
    assert rebuilt.t0 == problem.t0 and rebuilt.state_name == problem.state_name
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(rebuilt.initial_state(8, generator=g1), problem.initial_state(8, generator=g2))


def test_problem_validation():
    with pytest.raises(ValueError, match="dim"):
        BKWProblem(1)
    with pytest.raises(ValueError, match="initial"):
        AnisotropicMaxwell(3, initial="uniform")
    with pytest.raises(ValueError, match="unknown problem"):
        problem_from_config({"problem": "Nope"})
    with pytest.raises(ValueError, match="bad arguments"):
        problem_from_config({"problem": "BKWProblem", "dim": 3, "colour": 1})
