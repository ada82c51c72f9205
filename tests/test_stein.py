"""Moment projection (particlescore.stein): exact identities, exact Maxwell moment ODE, and the
DiScoFormer option end to end. Doubles as a check of the derivation in docs/moment_projection.md."""
import numpy as np
import pytest
import torch

import particlescore as ps
from particlescore.physics import Landau
from particlescore.problems import AnisotropicMaxwell
from particlescore.stein import landau_moment_fields, project_score

B = 1.0 / 24.0


def _cloud(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64, generator=g) * torch.linspace(1.5, 0.5, d, dtype=torch.float64) + 0.3
    s = torch.randn(n, d, dtype=torch.float64, generator=g)   # any score at all: the projection must fix it
    return x, s


def _covariance_rate(x, s):
    velocity = Landau(gamma=0.0, B=B)(0.0, x, s)                             # (n, d)
    centred = x - x.mean(0)
    return (velocity.T @ centred + centred.T @ velocity) / x.shape[0]        # (d, d)


@pytest.mark.parametrize("d", [2, 3, 5, 10])
def test_projected_score_gives_the_exact_maxwell_moment_ode_for_any_input_score(d):
    """Maxwell molecules: with the projected score the particle covariance rate equals
    4B(tr Σ̂·I − dΣ̂) at the particles' own Σ̂; a random score misses it by O(1)."""
    x, s = _cloud(400, d, seed=d)
    centred = x - x.mean(0)
    cov = centred.T @ centred / x.shape[0]
    exact = 4 * B * (torch.trace(cov) * torch.eye(d, dtype=torch.float64) - d * cov)
    # round-off of O(n d²) sums of O(1) terms: ≤ 1e-13 relative to the rate's scale (measured ~4e-15)
    assert (_covariance_rate(x, project_score(x, s)) - exact).abs().max() <= 1e-12 * exact.abs().max()
    assert (_covariance_rate(x, s) - exact).abs().max() > 0.1 * exact.abs().max()


def test_identities_hold_for_every_field_and_projection_is_idempotent():
    x, s = _cloud(300, 3, seed=1)
    sp = project_score(x, s)
    n, d = x.shape
    centred = x - x.mean(0)
    sigma = torch.sqrt((centred ** 2).sum() / (n * d))
    u, s_u = centred / sigma, sp * sigma
    scalars, grad_sums, cubic = landau_moment_fields(u)
    # Σ_i p(u_i) s_i,c = −Σ_i ∂_c p(u_i) and Σ_i q(u_i) u_i·s_i = −(d+2) Σ_i q(u_i); sums of n = 300
    # O(1) terms: tolerance 1e-10 absolute
    np.testing.assert_allclose(scalars.T @ s_u, -grad_sums, atol=1e-10)
    np.testing.assert_allclose(cubic.T @ (u * s_u).sum(1), -(d + 2) * cubic.sum(0), atol=1e-10)
    np.testing.assert_allclose(project_score(x, sp), sp, atol=1e-10)      # a fixed point
    # translation and scale: the correction commutes with v -> a v + b (s -> s / a)
    np.testing.assert_allclose(project_score(2.5 * x - 7.0, s / 2.5), sp / 2.5, rtol=1e-9, atol=1e-10)


def test_discoformer_option_follows_the_exact_covariance_from_the_particles():
    """simulate with moment_projection: the covariance follows Σ∞ − (Σ∞ − Σ̂(0))e^{−4dBt} up to
    Heun's O(dt²) error (measured 1.5e-6 over t ∈ [0, 4] at dt = 0.01; here 10 steps of 0.05:
    bar 1e-4); without it the estimator's error is ~1e-3 over the same span (measured)."""
    d, n, dt, steps = 3, 300, 0.05, 10
    problem = AnisotropicMaxwell(d)
    errors = {}
    for projection in (False, True):
        est = ps.DiScoFormer.pretrained(dim=d, warm_start=True, moment_projection=projection)
        sol = ps.simulate(problem, est, n=n, dt=dt, t_end=steps * dt, save_every=steps, seed=0, progress=False)
        cov = np.asarray(sol.diagnostics["covariance"])
        eq = np.trace(cov[0]) / d * np.eye(d)
        rate = 4 * d * problem.B
        from_hat = np.stack([eq - (eq - cov[0]) * np.exp(-rate * float(t)) for t in sol.times])
        errors[projection] = np.abs(cov - from_hat).max()
    assert errors[True] < 1e-4
    assert errors[False] > 10 * errors[True]


def test_projection_only_at_the_context_and_reachable_from_toml():
    x, _ = _cloud(200, 2, seed=3)
    plain = ps.DiScoFormer.pretrained(dim=2)
    projected = ps.DiScoFormer.pretrained(dim=2, moment_projection=True)
    queries = x[:50].clone()
    np.testing.assert_array_equal(projected(x, queries)[1], plain(x, queries)[1])   # explicit queries: untouched
    np.testing.assert_array_equal(projected(x)[0], plain(x)[0])                      # log-density untouched
    np.testing.assert_allclose(projected(x)[1], project_score(x, plain(x)[1]), rtol=1e-12, atol=1e-12)
    est = ps.registry.create("estimator", "discoformer", {"moment_projection": True}, problem=AnisotropicMaxwell(2), seed=0)
    assert est.moment_projection and est.describe()["moment_projection"]
    with pytest.raises(ValueError, match="moment_projection"):
        ps.DiScoFormer.pretrained(dim=2, moment_projection="yes")


@pytest.mark.parametrize("lr", [1e-3, 1.0])
def test_adaptation_never_increases_the_consistency_loss_at_the_adapted_points(lr):
    """Test-time adaptation returns parameters whose consistency loss at the adaptation queries is
    no higher than the pretrained one, also for a step size (1.0) at which Adam overshoots."""
    problem = AnisotropicMaxwell(3)
    for seed in range(2):
        x = problem.initial_distribution().sample(120, generator=torch.Generator().manual_seed(seed))
        est = ps.DiScoFormer.pretrained(dim=3, adapt_steps=3, adapt_lr=lr)
        before = est.consistency_loss(x)                                     # pretrained parameters
        est(x)
        after = est.diagnostics()["consistency_loss"]
        assert after <= before
        assert after == pytest.approx(est.consistency_loss(x), rel=1e-5)     # it is the loss of the kept parameters
