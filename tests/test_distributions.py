"""Tests for particlescore.distributions (exact densities, scores and samplers).

Monte-Carlo checks compare sample statistics with closed forms at a tolerance of
Z standard errors, the standard error being estimated from the same samples
(sd / sqrt(n)); with Z = 5 a correct sampler fails a single check with probability
about 6e-7 under the CLT, and every test is seeded, so results are reproducible.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from particlescore.distributions import (
    BKW,
    Distribution,
    Gaussian,
    GaussianMixture,
    Laplace,
    StudentT,
    isotropic_gaussian,
    random_gmm,
    sample_gamma,
)

Z = 5.0  # tolerance in standard errors for Monte-Carlo checks (see module docstring)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def autograd_score(dist, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dist.log_prob(x).sum(), x)
    return grad


def assert_mean_matches(samples, expected, z=Z):
    """Each coordinate's sample mean within z standard errors of the expected value."""
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[0]
    se = samples.std(axis=0, ddof=1) / math.sqrt(n)
    err = np.abs(samples.mean(axis=0) - np.asarray(expected, dtype=np.float64))
    assert np.all(err <= z * se), (err, se)


def assert_covariance_matches(samples, mean, cov, z=Z):
    """Each E[(x_i−m_i)(x_j−m_j)] (known m) within z standard errors of cov_ij."""
    centred = np.asarray(samples, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    products = (centred[:, :, None] * centred[:, None, :]).reshape(len(centred), -1)
    assert_mean_matches(products, np.asarray(cov, dtype=np.float64).reshape(-1), z)


def make_mixture_params(dtype=torch.float64, seed=0, pad=True):
    """Two 2-d mixtures with 3 real components and (optionally) one zero-weight padding slot.

    The padding slot has a zero (non-PD) covariance and a far-away mean: it must be ignored.
    """
    g = gen(seed)
    B, K, d = 2, 3, 2
    weights = torch.rand(B, K, generator=g, dtype=torch.float64) + 0.1
    weights = weights / weights.sum(-1, keepdim=True)
    means = 4 * torch.rand(B, K, d, generator=g, dtype=torch.float64) - 2
    a = torch.randn(B, K, d, d, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(-1, -2) + 0.3 * torch.eye(d, dtype=torch.float64)
    if pad:
        weights = torch.cat([weights, torch.zeros(B, 1, dtype=torch.float64)], dim=1)
        means = torch.cat([means, torch.full((B, 1, d), 50.0, dtype=torch.float64)], dim=1)
        covs = torch.cat([covs, torch.zeros(B, 1, d, d, dtype=torch.float64)], dim=1)
    return weights.to(dtype), means.to(dtype), covs.to(dtype)


def scipy_mixture_log_prob(weights, means, covs, x):
    dens = np.zeros(len(x))
    for w, m, c in zip(weights.numpy(), means.numpy(), covs.numpy()):
        if w > 0:
            dens += w * scipy.stats.multivariate_normal(m, c).pdf(x.numpy())
    return np.log(dens)


# ----------------------------------------------------------------------------- GMM


def test_gmm_log_prob_matches_scipy_batched_and_unbatched():
    weights, means, covs = make_mixture_params()
    x = 3 * torch.randn(2, 40, 2, generator=gen(1), dtype=torch.float64)
    gmm = GaussianMixture(weights, means, covs)
    assert gmm.batched and gmm.n_components == 4 and gmm.dim == 2
    assert gmm.n_active.tolist() == [3, 3]
    lp = gmm.log_prob(x)
    assert lp.shape == (2, 40) and lp.dtype == torch.float64
    for b in range(2):
        expected = scipy_mixture_log_prob(weights[b], means[b], covs[b], x[b])
        np.testing.assert_allclose(lp[b].numpy(), expected, rtol=1e-10, atol=1e-10)
        single = GaussianMixture(weights[b], means[b], covs[b])
        assert not single.batched
        np.testing.assert_allclose(single.log_prob(x[b]).numpy(), expected, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gmm[b].log_prob(x[b]).numpy(), expected, rtol=1e-10, atol=1e-10)
    # extra leading dims
    assert gmm.log_prob(x.reshape(2, 4, 10, 2)).shape == (2, 4, 10)
    assert gmm[0].log_prob(x[0].reshape(4, 10, 2)).shape == (4, 10)


def test_gmm_padding_is_ignored():
    weights, means, covs = make_mixture_params(pad=True)
    plain = GaussianMixture(*make_mixture_params(pad=False))
    padded = GaussianMixture(weights, means, covs)
    x = 3 * torch.randn(2, 30, 2, generator=gen(2), dtype=torch.float64)
    lp, s = padded.log_prob_and_score(x)
    assert torch.isfinite(lp).all() and torch.isfinite(s).all()
    torch.testing.assert_close(lp, plain.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, plain.score(x), rtol=1e-12, atol=1e-12)
    # samples never come from the padding slot (its mean is at 50)
    assert padded.sample(2000, generator=gen(3)).abs().max() < 30
    torch.testing.assert_close(padded.mean, plain.mean)
    torch.testing.assert_close(padded.covariance, plain.covariance)
    # gradients through log_prob stay finite too
    xg = x.clone().requires_grad_(True)
    padded.log_prob(xg).sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_gmm_score_matches_autograd_float64():
    gmm = GaussianMixture(*make_mixture_params())
    x = 3 * torch.randn(2, 50, 2, generator=gen(4), dtype=torch.float64)
    torch.testing.assert_close(gmm.score(x), autograd_score(gmm, x), rtol=1e-8, atol=1e-8)
    single = gmm[1]
    torch.testing.assert_close(single.score(x[1]), autograd_score(single, x[1]),
                               rtol=1e-8, atol=1e-8)


def test_gmm_float32():
    params64 = make_mixture_params()
    gmm64 = GaussianMixture(*params64)
    gmm32 = GaussianMixture(*(p.float() for p in params64))
    assert gmm32.dtype == torch.float32
    x = 3 * torch.randn(2, 50, 2, generator=gen(5), dtype=torch.float64)
    lp32, s32 = gmm32.log_prob_and_score(x.float())
    assert lp32.dtype == torch.float32 and s32.dtype == torch.float32
    assert gmm32.sample(10, generator=gen(0)).dtype == torch.float32
    # float32 has eps ≈ 1.2e-7; log-densities reach |log f| ~ 50 and scores |s| ~ 10 here,
    # and the Mahalanobis terms / softmax responsibilities lose a few digits to cancellation
    # and the Cholesky solve, so relative agreement ~1e-5 (≈100 eps) is what float32 can give.
    torch.testing.assert_close(lp32.double(), gmm64.log_prob(x), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s32.double(), gmm64.score(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s32, autograd_score(gmm32, x.float()), rtol=1e-4, atol=1e-4)


def test_gmm_sample_moments():
    weights, means, covs = make_mixture_params()
    gmm = GaussianMixture(weights, means, covs)
    n = 100_000
    samples = gmm.sample(n, generator=gen(6))
    assert samples.shape == (2, n, 2) and samples.dtype == torch.float64
    for b in range(2):
        # standard errors sd/sqrt(n) ~ 0.004 for n = 1e5; Z = 5 of them (module docstring)
        assert_mean_matches(samples[b], gmm.mean[b])
        assert_covariance_matches(samples[b], gmm.mean[b], gmm.covariance[b])
    # unbatched shape, reproducibility with the same generator seed
    single = gmm[0]
    a = single.sample(7, generator=gen(7))
    assert a.shape == (7, 2)
    torch.testing.assert_close(a, single.sample(7, generator=gen(7)))


def test_gmm_validation():
    weights, means, covs = make_mixture_params(pad=False)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(weights, means[:, :2], covs)
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture(weights, means, covs[..., :1])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(-weights, means, covs)
    bad = covs.clone()
    bad[0, 1] = -torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(weights, means, bad)


# ----------------------------------------------------------------------------- random_gmm


def test_random_gmm_ranges():
    gmm = random_gmm(64, 3, generator=gen(10), n_components=(2, 6), mean_range=(-1.0, 2.0),
                     var_range=(0.3, 0.9), dtype=torch.float64)
    assert isinstance(gmm, GaussianMixture) and gmm.batched
    assert gmm.n_components == 6 and gmm.dim == 3 and len(gmm) == 64
    counts = gmm.n_active
    assert counts.min() >= 2 and counts.max() <= 6 and len(set(counts.tolist())) > 1
    torch.testing.assert_close(gmm.weights.sum(-1), torch.ones(64, dtype=torch.float64))
    active = gmm.weights > 0
    # active slots are a prefix of the slots
    assert torch.equal(active, torch.arange(6)[None] < counts[:, None])
    m = gmm.means[active]
    assert m.min() >= -1.0 and m.max() <= 2.0
    eig = torch.linalg.eigvalsh(gmm.covariances[active])
    assert eig.min() >= 0.3 - 1e-12 and eig.max() <= 0.9 + 1e-12
    # rotated: covariances are not diagonal
    off = gmm.covariances[active] - torch.diag_embed(torch.diagonal(gmm.covariances[active],
                                                                    dim1=-2, dim2=-1))
    assert off.abs().max() > 1e-2
    # inactive slots: identity covariance
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.equal(gmm.covariances[~active], eye.expand(int((~active).sum()), 3, 3))
    # no rotation: diagonal covariances
    diag = random_gmm(8, 3, generator=gen(10), rotate=False, dtype=torch.float64)
    c = diag.covariances
    assert torch.equal(c, torch.diag_embed(torch.diagonal(c, dim1=-2, dim2=-1)))


def test_random_gmm_reproducible_and_float32_default():
    a = random_gmm(16, 2, generator=gen(11))
    b = random_gmm(16, 2, generator=gen(11))
    c = random_gmm(16, 2, generator=gen(12))
    assert a.dtype == torch.float32
    for name in ("weights", "means", "covariances"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.means, c.means)
    # default ranges of the paper's Algorithm 1
    active = a.weights > 0
    assert 1 <= a.n_active.min() and a.n_active.max() <= 10 and a.n_components == 10
    assert a.means[active].abs().max() <= 3.0
    eig = torch.linalg.eigvalsh(a.covariances[active].double())
    assert eig.min() >= 0.2 - 1e-6 and eig.max() <= 1.0 + 1e-6  # float32 cast: ~1e-7 relative
    # batched evaluation agrees with per-mixture evaluation
    x = 3 * torch.randn(16, 20, 2, generator=gen(13))
    lp, s = a.log_prob_and_score(x)
    assert torch.isfinite(lp).all() and torch.isfinite(s).all()
    torch.testing.assert_close(lp[5], a[5].log_prob(x[5]))
    torch.testing.assert_close(s[5], a[5].score(x[5]))


# ----------------------------------------------------------------------------- Gaussian


def test_gaussian_matches_scipy_and_autograd():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    mean = torch.tensor([1.0, -1.0], dtype=torch.float64)
    g = Gaussian(mean, cov)
    x = torch.randn(30, 2, generator=gen(20), dtype=torch.float64)
    expected = scipy.stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(g.log_prob(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.score(x), -(x - mean) @ torch.linalg.inv(cov))
    iso = isotropic_gaussian(3, 2.0)
    assert isinstance(iso, Distribution)
    torch.testing.assert_close(iso.covariance, 2.0 * torch.eye(3, dtype=torch.float64))
    s = iso.sample(50_000, generator=gen(21))
    assert_covariance_matches(s, torch.zeros(3), iso.covariance)
    with pytest.raises(ValueError, match="covariance"):
        Gaussian(mean, torch.eye(3, dtype=torch.float64))


# ----------------------------------------------------------------------------- gamma / Student-t


@pytest.mark.parametrize("a", [0.4, 1.0, 2.7])
def test_sample_gamma(a):
    n = 50_000
    x = sample_gamma(a, n, generator=gen(30))
    assert x.shape == (n,) and (x > 0).all()
    assert scipy.stats.kstest(x.numpy(), scipy.stats.gamma(a).cdf).pvalue > 1e-4
    assert_mean_matches(x[:, None], [a])
    assert torch.equal(x, sample_gamma(a, n, generator=gen(30)))


def test_student_t_log_prob_and_score():
    t = StudentT(3, 4.5, loc=[0.5, -1.0, 0.0], scale=1.7)
    x = 3 * torch.randn(40, 3, generator=gen(31), dtype=torch.float64)
    shape = (1.7 ** 2) * np.eye(3)
    expected = scipy.stats.multivariate_t(t.loc.numpy(), shape, df=4.5).logpdf(x.numpy())
    np.testing.assert_allclose(t.log_prob(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t.score(x), autograd_score(t, x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="df"):
        StudentT(2, 0.0)
    with pytest.raises(ValueError, match="scale"):
        StudentT(2, 3.0, scale=-1.0)
    with pytest.raises(ValueError, match="covariance"):
        StudentT(2, 2.0).covariance


def test_student_t_sample_moments():
    # df = 10: finite 8th moments, so the sample-based standard errors of the covariance
    # entries are themselves reliable
    t = StudentT(2, 10.0, loc=1.0, scale=0.5)
    s = t.sample(200_000, generator=gen(32))
    assert s.shape == (200_000, 2) and s.dtype == torch.float64
    assert_mean_matches(s, t.mean)
    assert_covariance_matches(s, t.mean, t.covariance)
    # heavy tails, non-integer df: marginal is univariate t(df, loc, scale); compare the
    # probability of a central interval with its binomial standard error
    t3 = StudentT(2, 2.5, dtype=torch.float32)
    s3 = t3.sample(100_000, generator=gen(33))
    assert s3.dtype == torch.float32
    for c in (0.5, 2.0, 6.0):
        p = 2 * scipy.stats.t(2.5).cdf(c) - 1
        frac = (s3[:, 0].abs() <= c).double().mean().item()
        assert abs(frac - p) <= Z * math.sqrt(p * (1 - p) / len(s3))


# ----------------------------------------------------------------------------- Laplace


def test_laplace():
    lap = Laplace(2, loc=[0.5, -0.5], scale=[1.0, 2.0])
    x = 3 * torch.randn(40, 2, generator=gen(40), dtype=torch.float64)
    expected = (scipy.stats.laplace(0.5, 1.0).logpdf(x[:, 0].numpy())
                + scipy.stats.laplace(-0.5, 2.0).logpdf(x[:, 1].numpy()))
    np.testing.assert_allclose(lap.log_prob(x).numpy(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lap.score(x), autograd_score(lap, x), rtol=1e-12, atol=1e-12)
    assert torch.equal(lap.score(lap.loc[None]), torch.zeros(1, 2, dtype=torch.float64))
    s = lap.sample(200_000, generator=gen(41))
    assert_mean_matches(s, lap.mean)
    assert_covariance_matches(s, lap.mean, lap.covariance)
    with pytest.raises(ValueError, match="scale"):
        Laplace(2, scale=0.0)


# ----------------------------------------------------------------------------- BKW


def radial_moment(bkw, power):
    """∫ |v|^power f(v) dv = |S^{d−1}| ∫_0^∞ r^{d−1+power} f(r) dr by adaptive quadrature."""
    d = bkw.dim
    area = 2 * math.pi ** (d / 2) / math.gamma(d / 2)

    def integrand(r):
        v = torch.zeros(1, d, dtype=torch.float64)
        v[0, 0] = r
        return r ** (d - 1 + power) * math.exp(bkw.log_prob(v).item())

    value, _ = scipy.integrate.quad(integrand, 0.0, 40.0, limit=200, epsabs=1e-13, epsrel=1e-12)
    return area * value


@pytest.mark.parametrize("d", [2, 3])
def test_bkw_normalisation_and_moments(d):
    t0 = BKW.start_time(d)
    for t in (t0, t0 + 0.7, t0 + 10.0):
        bkw = BKW(d, t)
        assert abs(bkw.P + bkw.Q * bkw.K * d - 1.0) < 1e-14
        assert abs(radial_moment(bkw, 0) - 1.0) < 1e-9
        assert abs(radial_moment(bkw, 2) - d) < 1e-8
        assert abs(radial_moment(bkw, 4) - bkw.fourth_moment) < 1e-7
    assert BKW(d, t0).P == 0.0


def test_bkw_score_matches_autograd():
    for d, t in ((2, BKW.start_time(2)), (3, BKW.start_time(3) + 0.5), (10, 20.0)):
        bkw = BKW(d, t)
        x = 2 * torch.randn(50, d, generator=gen(50), dtype=torch.float64)
        torch.testing.assert_close(bkw.score(x), autograd_score(bkw, x), rtol=1e-10, atol=1e-10)
    # at t0 the density vanishes at v = 0: log f = −inf but the score is not NaN
    bkw = BKW(3, BKW.start_time(3))
    zero = torch.zeros(1, 3, dtype=torch.float64)
    assert bkw.log_prob(zero).item() == -math.inf
    assert torch.isfinite(bkw.score(zero)).all()


@pytest.mark.parametrize("d,dt", [(3, 0.0), (3, 1.5), (2, 0.3)])
def test_bkw_sampler_moments(d, dt):
    bkw = BKW(d, BKW.start_time(d) + dt)
    n = 200_000
    s = bkw.sample(n, generator=gen(60 + d))
    assert s.shape == (n, d) and s.dtype == torch.float64
    assert_mean_matches(s, torch.zeros(d))
    assert_covariance_matches(s, torch.zeros(d), torch.eye(d))
    r4 = (s ** 2).sum(-1) ** 2
    assert_mean_matches(r4[:, None], [bkw.fourth_moment])


def test_bkw_validation():
    t0 = BKW.start_time(3)
    assert abs(t0 - math.log(2.5) / (2 * (1 / 24) * 2)) < 1e-14
    with pytest.raises(ValueError, match="t must be"):
        BKW(3, t0 - 0.01)
    with pytest.raises(ValueError, match="dim"):
        BKW(1, 10.0)
    bkw = BKW(3, t0 + 1.0, dtype=torch.float32)
    assert bkw.sample(5, generator=gen(0)).dtype == torch.float32
    assert bkw.K == pytest.approx(1 - math.exp(-2 * (1 / 24) * 2 * (t0 + 1.0)))
