"""EllipticalKDE (particlescore.elliptical): closed forms, normalisation, exact affine equivariance,
and accuracy against exact scores. Doubles as a check of the formulas in the module docstring."""
import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln, ive

import particlescore as ps
from particlescore.elliptical import EllipticalKDE, RadialFit, log_sphere_average
from particlescore.problems import BKWProblem

F64 = torch.float64


def _anisotropic_gaussian(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, dtype=F64, generator=g) + 2 * torch.eye(d, dtype=F64)
    return torch.randn(n, d, dtype=F64, generator=g) @ A.T + 0.5


@pytest.mark.parametrize("d", [1, 2, 3])
def test_closed_forms_equal_the_bessel_definition(d):
    """log A_ν(x) − x and R_ν(x)/x from the torch closed forms against scipy's I_ν for
    ν = d/2 − 1 (the d ≥ 4 path), including the small-x series; float64 round-off: 1e-10."""
    x = torch.cat([torch.tensor([0.0, 1e-8, 1e-5, 9e-5, 2e-4], dtype=F64), torch.logspace(-3, 3, 200, dtype=F64)])
    log_a, ratio = log_sphere_average(x, d)
    nu, xn = d / 2 - 1, x.numpy()
    xs = np.where(xn == 0, 1.0, xn)
    ref_log_a = np.where(xn == 0, 0.0, gammaln(nu + 1) + nu * np.log(2 / xs) + np.log(ive(nu, xs)))
    ref_ratio = np.where(xn == 0, 1.0 / d, ive(nu + 1, xs) / (ive(nu, xs) * xs))
    np.testing.assert_allclose(log_a.numpy(), ref_log_a, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ratio.numpy(), ref_ratio, rtol=1e-10, atol=1e-12)


def test_one_dimension_is_the_kde_symmetrised_about_the_mean():
    """d = 1: the rotation average of a Gaussian kernel is ½[φ_b(w − w_i) + φ_b(w + w_i)], so the
    estimate is the Gaussian KDE of the whitened data and its mirror image (closed form here)."""
    x = _anisotropic_gaussian(300, 1, seed=3)
    y = torch.linspace(-4, 5, 41, dtype=F64)[:, None]
    est = EllipticalKDE(grid=0, table=0)
    log_f, score = est(x, y)
    sd = float(x.std())
    w, wq = ((x - x.mean()) / sd)[:, 0], ((y - x.mean()) / sd)[:, 0]
    b = 1.4 * float(w.abs().std()) * 300 ** (-0.2)
    phi = lambda z: torch.exp(-z ** 2 / (2 * b * b)) / math.sqrt(2 * math.pi * b * b)
    dens = 0.5 * (phi(wq[:, None] - w) + phi(wq[:, None] + w)).mean(1)
    slope = 0.5 * (-(wq[:, None] - w) * phi(wq[:, None] - w) - (wq[:, None] + w) * phi(wq[:, None] + w)).mean(1) / b ** 2
    torch.testing.assert_close(log_f, torch.log(dens) - math.log(sd), rtol=0, atol=1e-10)
    torch.testing.assert_close(score[:, 0], slope / dens / sd, rtol=1e-9, atol=1e-10)


def test_density_integrates_to_one_and_score_is_its_gradient():
    x = _anisotropic_gaussian(400, 2, seed=1)
    est = EllipticalKDE(grid=0, table=0)
    g = torch.linspace(-12, 12, 481, dtype=F64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_f, _ = est(x, grid)
    # Riemann sum with spacing 0.05 of a smooth density with scales ≥ 0.3: error ≪ 1e-4
    assert abs(float(torch.exp(log_f).sum()) * 0.05 ** 2 - 1) < 1e-4
    y = x[:20] + 0.1
    _, score = est(x, y)
    h = 1e-5
    for k in range(2):
        e = torch.zeros(2, dtype=F64)
        e[k] = h
        fd = (est(x, y + e)[0] - est(x, y - e)[0]) / (2 * h)                 # central differences, O(h²)
        torch.testing.assert_close(score[:, k], fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("d, grid", [(2, 0), (3, 0), (3, 64), (5, 0)])
def test_exact_affine_and_permutation_equivariance(d, grid):
    """y = A x + c: log f_y = log f_x − log|det A| and s_y = A⁻ᵀ s_x (the estimate depends on the
    data only through the sample mean, covariance and Mahalanobis radii); float64: 1e-8."""
    x = _anisotropic_gaussian(300, d, seed=d)
    q = x[:25] * 0.7
    g = torch.Generator().manual_seed(11)
    A = torch.randn(d, d, dtype=F64, generator=g) + 1.5 * torch.eye(d, dtype=F64)
    c = torch.randn(d, dtype=F64, generator=g)
    est = EllipticalKDE(grid=grid)
    log_f, score = est(x, q)
    log_f2, score2 = est(x @ A.T + c, q @ A.T + c)
    torch.testing.assert_close(log_f2, log_f - torch.linalg.slogdet(A)[1], rtol=0, atol=1e-8)
    torch.testing.assert_close(score2, score @ torch.linalg.inv(A), rtol=1e-8, atol=1e-8)
    perm = torch.randperm(300, generator=g)
    torch.testing.assert_close(est(x[perm], q)[1], score, rtol=1e-10, atol=1e-10)


def test_binned_radii_agree_with_the_exact_sum():
    """Linear binning of 3000 radii on 1024 nodes (spacing ≈ b/40): relative change of the
    score ≤ 1e-3 (error O((spacing/b)²))."""
    x = _anisotropic_gaussian(3000, 2, seed=5)
    exact = EllipticalKDE(grid=0)(x)[1]
    binned = EllipticalKDE(grid=1024)(x)[1]
    assert float(((binned - exact) ** 2).sum() / (exact ** 2).sum()) < 1e-6


def test_accurate_on_elliptical_laws_against_exact_scores():
    """Relative score MSE at the samples against the exact score. Bars from the measured values
    (3 draws each) with a margin of about 2x: BKW d = 2 at t0 + 0.5, n = 4096: 2.3–2.9 % (Scott KDE
    8.5–10.8 %), bar 5 % and below Scott KDE; a Gaussian in d = 3, n = 4000: 0.7–1.7 %, bar 3 %."""
    problem = BKWProblem(2)
    law = problem.exact_distribution(problem.t0 + 0.5)
    x = law.sample(4096, generator=torch.Generator().manual_seed(5))
    truth = law.score(x)
    err = float(ps.relative_score_mse(EllipticalKDE()(x)[1], truth))
    assert err < 0.05 and err < float(ps.relative_score_mse(ps.KDE()(x)[1], truth))
    gauss = ps.distributions.Gaussian(torch.zeros(3, dtype=F64), torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=F64)))
    x = gauss.sample(4000, generator=torch.Generator().manual_seed(0))
    assert float(ps.relative_score_mse(EllipticalKDE()(x)[1], gauss.score(x))) < 0.03


def test_bad_input_gives_clear_errors():
    for bad in (0.0, -1.0, math.nan, True, "scott"):
        with pytest.raises(ValueError, match="bandwidth_factor"):
            EllipticalKDE(bad)
    for bad in (10, -5, 1.5, False):
        with pytest.raises(ValueError, match="grid"):
            EllipticalKDE(grid=bad)
    est = EllipticalKDE()
    with pytest.raises(ValueError, match="particles"):
        est(torch.randn(3, 3, dtype=F64))
    line = torch.linspace(0, 1, 50, dtype=F64)[:, None] * torch.tensor([[1.0, 2.0]], dtype=F64)
    with pytest.raises(ValueError, match="singular"):
        est(line)
    with pytest.raises(ValueError, match="NaN"):
        est(torch.tensor([[0.0, 1.0], [1.0, math.nan], [2.0, 0.0], [0.5, 0.5]], dtype=F64))


def test_reachable_from_toml_by_name():
    entry = ps.registry.resolve("estimator", "elliptical_kde")
    est = ps.registry.create("estimator", "elliptical_kde", {"bandwidth_factor": 2.0})
    assert entry.factory is EllipticalKDE and isinstance(est, EllipticalKDE) and est.bandwidth_factor == 2.0
    with pytest.raises(TypeError, match="bandwidth_facter"):
        entry.options(bandwidth_facter=2.0)


def test_elliptical_candidate_slot_starts_silent_and_handles_padding():
    """``elliptical_candidate=True`` appends the elliptical KDE as the last candidate. A network
    grown from trained weights by ``transplant`` with a very negative gate bias answers as before
    (float32 network: 1e-5), the far-field rule still blends into the mixture, and the candidate
    of a padded batch element equals that of the element alone."""
    from particlescore.candidates import elliptical_candidate, elliptical_fits
    from particlescore.discoformer import load_weights
    from particlescore.model import DiScoFormerConfig, build_network
    from particlescore.training.train import transplant
    old, _ = load_weights(ps.discoformer.weights_path(ps.discoformer.gmm_only_key(3)))   # 11 candidates
    config = DiScoFormerConfig.from_dict({**old.config.to_dict(), "elliptical_candidate": True})
    assert config.n_candidates == old.config.n_candidates + 1 and config.mixture_index == 10
    new = build_network(config)
    transplant(old, new, -30.0)
    x = _anisotropic_gaussian(400, 3, seed=2)
    y = torch.cat([x[:50], 4 * x[:20]])                                       # some far-field queries
    for a, b in zip(ps.DiScoFormer(old)(x, y), ps.DiScoFormer(new)(x, y)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ctx = torch.stack([x[:300], torch.cat([x[300:], torch.zeros(200, 3, dtype=F64)])]).float()
    mask = torch.arange(300)[None] < torch.tensor([[300], [100]])
    score, log_f, desc = elliptical_candidate(elliptical_fits(ctx, mask=mask), ctx[:, :30])
    alone_s, alone_l, _ = elliptical_candidate(elliptical_fits(ctx[1:, :100]), ctx[1:, :30])
    torch.testing.assert_close(score[1:], alone_s)
    torch.testing.assert_close(log_f[1:], alone_l)
    assert desc.shape == (2, 30, 3) and torch.isfinite(desc).all()


@pytest.mark.parametrize("d", [2, 3])
def test_tabulated_profile_matches_the_exact_sum(d):
    """From 256 points on the profile is interpolated from a table (RadialFit) at spacing b/4 up
    to the last particle's radius, and summed exactly beyond. Cubic interpolation errs by
    O((h/b)^4) times the profile's fourth derivative: measured at the particles at most 3.4e-3
    relative in the score and 4e-4 in log f, and 1e-9 … 7e-9 in relative score MSE (n = 300 …
    25 600, d = 2, 3), against the estimate's own error of ~1e-2. The bounds 1e-2 / 3e-3 / 1e-7
    allow for other draws and still fail on any wrong node, weight or offset (those err at the
    1e-1 level)."""
    x = _anisotropic_gaussian(3000, d, seed=5)
    y = torch.cat([x[:500], 3 * x[:20]])                                     # 20 queries far out
    tabulated = EllipticalKDE()(x, y)
    exact = EllipticalKDE(table=0)(x, y)
    t_log, t_s, e_log, e_s = tabulated[0][:500], tabulated[1][:500], exact[0][:500], exact[1][:500]
    rel = (t_s - e_s).norm(dim=1) / e_s.norm(dim=1)                          # (500,)
    assert (t_log - e_log).abs().max() < 3e-3 and rel.max() < 1e-2
    assert ((t_s - e_s) ** 2).sum() / (e_s ** 2).sum() < 1e-7
    fit = ps.elliptical.RadialFit(x)
    beyond = fit.whiten(y[500:]).norm(dim=1) > fit.table_step * (len(fit.table_log_f) - 1)
    assert beyond.any()
    torch.testing.assert_close(tabulated[1][500:][beyond], exact[1][500:][beyond], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="table"):
        EllipticalKDE(table=10)


def test_elliptical_candidate_sees_every_particle_when_the_attention_is_subsampled():
    """Like the mixture fit, the elliptical candidate is fitted to all n points: with the attention
    and bank on a 256-point subsample it equals the elliptical KDE of the whole (whitened) context.
    In the model's frame it needs only two points: a cell of d + 1 points (whitened: a regular
    simplex, all radii equal) gets the floored spread."""
    est = ps.DiScoFormer.pretrained(dim=2, max_context=256, max_pairs=256 * 64)
    assert est.net.config.elliptical_candidate
    x = _anisotropic_gaussian(3000, 2, seed=6).float()
    enc = est._prepare(x)
    assert enc.ctx_w.shape[1] == 256
    qry_w = enc.frame.whiten(x[None, :64])                                  # (1, 64, 2)
    cand = est.model.candidates(enc, qry_w)
    whole = RadialFit(enc.frame.whiten(x[None])[0].double(), whiten=False).evaluate(qry_w[0].double())
    torch.testing.assert_close(cand.score[0, :, -1].double(), whole[1], rtol=1e-5, atol=1e-5)
    simplex = RadialFit(torch.tensor([[1.0, 0.0], [-0.5, 0.75 ** 0.5], [-0.5, -0.75 ** 0.5]], dtype=F64), whiten=False)
    log_f, score = simplex.evaluate(torch.zeros(1, 2, dtype=F64))
    assert simplex.bandwidth > 0 and torch.isfinite(log_f).all() and torch.isfinite(score).all()


@pytest.mark.parametrize("d,n", [(2, 200), (3, 3000), (5, 200)])
def test_elliptical_candidate_is_differentiable_in_the_queries(d, n):
    """The consistency loss (∇ log f against the score) and the score-matching loss (∇·s) take
    autograd through every candidate. Here ∇_q log f̂ must equal the candidate's own score, and
    ∇·s its central differences: exact sum (d = 2), tabulated profile (d = 3, n > grid) and the
    scipy Bessel path with its hand-written derivative (d = 5). Float64; the differences err by
    O(eps²·s''') ≈ 1e-9, so 1e-6 is far above both that and round-off. With the table (d = 3) the
    score is the interpolated ∂_r log f̂ and ∇ log f̂ the derivative of the interpolated log f:
    they agree to the interpolation error (≤ 3e-3 relative, test above)."""
    from particlescore.candidates import elliptical_candidate, elliptical_fits
    ctx = _anisotropic_gaussian(n, d, seed=7)
    ctx = (ctx - ctx.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(ctx.T))).T   # whitened
    fits = elliptical_fits(ctx[None])
    q = (0.3 + torch.rand(1, 20, d, generator=torch.Generator().manual_seed(8), dtype=F64)).requires_grad_(True)
    score, log_f, _ = elliptical_candidate(fits, q)
    grad, = torch.autograd.grad(log_f.sum(), q, create_graph=True)
    tol = 3e-3 if fits[0].table_step is not None else 1e-6
    torch.testing.assert_close(grad, score, rtol=tol, atol=tol * 1e-2)
    div = sum(torch.autograd.grad(score[..., k].sum(), q, retain_graph=True)[0][..., k] for k in range(d))
    eps, fd = 1e-5, torch.zeros(1, 20, dtype=F64)
    with torch.no_grad():
        for k in range(d):
            step = torch.zeros(d, dtype=F64)
            step[k] = eps
            fd += (elliptical_candidate(fits, q + step)[0][..., k] - elliptical_candidate(fits, q - step)[0][..., k]) / (2 * eps)
    torch.testing.assert_close(div, fd, rtol=1e-6, atol=1e-6)


def _whitened(x):
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (len(x) - 1))
    return torch.linalg.solve_triangular(chol, x.T, upper=False).T


@pytest.mark.parametrize("d", [2, 3])
def test_sphericity_statistics_tell_elliptical_laws_from_mixtures(d):
    """``sphericity_statistics`` returns ``log(1 + T)/5`` for four statistics normalised to mean
    ≈ 1 under spherical symmetry. On whitened Gaussian and Student-t (ν = 8) samples every T stays
    below 12 at n = 500 and n = 20000 (under symmetry each is about a χ²_k/k with k ≤ 5, whose
    99.99 % quantile is below 6; seeds are fixed, so the bound has slack, not luck); on two
    Gaussians 6σ apart the shape statistics T₂, T₃ exceed 100 at n = 20000 and grow in proportion
    to n (ratio > 20 for 40x the points). Exactly invariant under rotations and permutations."""
    from particlescore.elliptical import sphericity_statistics

    def stats(x):
        return torch.expm1(5 * sphericity_statistics(_whitened(x)))

    g = torch.Generator().manual_seed(11)
    shift = torch.zeros(d, dtype=F64)
    shift[0] = 3.0
    spread = {}
    for n in (500, 20_000):
        gauss = torch.randn(n, d, generator=g, dtype=F64) @ torch.randn(d, d, generator=g, dtype=F64)
        chi2 = 2 * torch._standard_gamma(torch.full((n, 1), 4.0, dtype=F64), generator=g)
        student = torch.randn(n, d, generator=g, dtype=F64) / torch.sqrt(chi2 / 8)
        for x in (gauss, student):
            assert (stats(x) < 12).all(), stats(x)
        z = torch.randn(n, d, generator=g, dtype=F64)
        two = torch.where((torch.arange(n) % 2 == 0)[:, None], z + shift, z - shift)
        spread[n] = stats(two)
    assert (spread[20_000][1:3] > 100).all(), spread
    assert (spread[20_000][1:3] / spread[500][1:3] > 20).all(), spread
    w = _whitened(torch.randn(700, d, generator=g, dtype=F64) ** 2)        # a skewed law
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    perm = torch.randperm(700, generator=g)
    torch.testing.assert_close(sphericity_statistics(w[perm] @ q.T), sphericity_statistics(w), rtol=1e-10, atol=1e-12)


def test_shape_features_start_silent_and_enter_the_query_features():
    """``--add-shape-features`` (training ``transplant``) grows a trained network by the context's
    sphericity statistics with zero input weights: it answers exactly as before. The features
    reach the queries (a non-zero input weight changes the output), each padded element gets its
    own context's, and a config that asks for them without the elliptical candidate is refused."""
    from particlescore.candidates import evaluate_candidates, elliptical_fits
    from particlescore.discoformer import load_weights
    from particlescore.model import DiScoFormerConfig, build_network
    from particlescore.training.train import transplant
    shipped, _ = load_weights(ps.discoformer.weights_path(2))
    assert shipped.config.elliptical_candidate and shipped.config.shape_features
    # a trained network without the features: the shipped one less their input columns
    old = build_network(DiScoFormerConfig.from_dict({**shipped.config.to_dict(), "shape_features": False}))
    state = shipped.state_dict()
    state["embed_qry.weight"] = state["embed_qry.weight"][:, :-4]
    old.load_state_dict(state)
    config = shipped.config
    new = build_network(config)
    transplant(old, new, 0.0)
    x = _anisotropic_gaussian(600, 2, seed=4)[:, :2]
    y = torch.cat([x[:40], 3 * x[:10]])
    for a, b in zip(ps.DiScoFormer(old)(x, y), ps.DiScoFormer(new)(x, y)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        new.embed_qry.weight[:, -1] += 0.5
    assert not torch.equal(ps.DiScoFormer(old)(x, y)[1], ps.DiScoFormer(new)(x, y)[1])
    ctx = torch.stack([x[:300], torch.cat([x[300:400], torch.zeros(200, 2, dtype=F64)])])
    mask = torch.arange(300)[None] < torch.tensor([[300], [100]])
    cand = evaluate_candidates(config, ctx, None, ctx[:, :20], [300, 100], mask,
                               elliptical_fits(ctx, [300, 100], mask))
    alone = evaluate_candidates(config, ctx[1:, :100], None, ctx[1:, :20])
    assert cand.descriptors.shape[-1] == config.n_query_descriptors - 3    # no mixture candidate passed
    torch.testing.assert_close(cand.descriptors[1, :, -4:], alone.descriptors[0, :, -4:])
    with pytest.raises(ValueError, match="elliptical"):
        DiScoFormerConfig(dim=2, shape_features=True)
