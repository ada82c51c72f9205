"""Classical score estimators against exact answers (scipy, finite differences, closed forms)."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

import particlescore as ps
from particlescore import estimators
from particlescore.distributions import isotropic_gaussian


def _data(d, n=400, seed=0):
    rng = np.random.default_rng(seed)
    mix = np.linalg.qr(rng.normal(size=(d, d)))[0] * rng.uniform(0.5, 2.0, size=d)  # well conditioned
    return rng.normal(size=(n, d)) @ mix + 1.0, rng.normal(size=(60, d)) * 1.5


@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_kde_log_density_matches_scipy(d, rule):
    x, y = _data(d)
    log_f, _ = ps.KDE(rule)(x, y)
    reference = scipy.stats.gaussian_kde(x.T, bw_method=rule).logpdf(y.T)
    # both are float64 evaluations of the same closed form; 1e-10 leaves room for the
    # different summation order (logsumexp vs scipy's) on values of size ~10
    np.testing.assert_allclose(log_f, reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("bandwidth,isotropic", [("scott", False), ("silverman", True), (0.4, False)])
def test_kde_score_is_gradient_of_log_density(d, bandwidth, isotropic):
    x, y = _data(d, n=300, seed=1)
    kde = ps.KDE(bandwidth, isotropic=isotropic)
    _, score = kde(x, y)
    step = 1e-5
    fd = np.empty_like(y)
    for k in range(d):
        e = np.zeros(d)
        e[k] = step
        fd[:, k] = (kde(x, y + e)[0] - kde(x, y - e)[0]) / (2 * step)
    # central differences: truncation O(step²·|f'''|) ~ 1e-10, round-off ~ 1e-16/step ~ 1e-11
    np.testing.assert_allclose(score, fd, rtol=0, atol=1e-6)


def test_kde_chunking_does_not_change_results(monkeypatch):
    x, y = _data(3, n=500, seed=2)
    full = ps.KDE()(x, y)
    monkeypatch.setattr(estimators, "PAIR_BLOCK_ELEMENTS", 1000)  # forces 30 query chunks
    chunked = ps.KDE()(x, y)
    for a, b in zip(full, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_kde_isotropic_and_fixed_bandwidth_kernel():
    x, _ = _data(3)
    kde = ps.KDE(0.3)
    assert torch.allclose(kde.kernel_covariance(torch.from_numpy(x)), 0.09 * torch.eye(3, dtype=torch.float64))
    h_iso = ps.KDE("scott", isotropic=True).kernel_covariance(torch.from_numpy(x))
    assert torch.count_nonzero(h_iso - torch.diag(torch.diagonal(h_iso))) == 0


def test_array_types_and_dtypes_round_trip():
    x, y = _data(2)
    log_f, score = ps.KDE()(x.astype(np.float32), y.astype(np.float32))
    assert isinstance(score, np.ndarray) and score.dtype == np.float32 and log_f.shape == (60,)
    tx = torch.from_numpy(x)
    log_f, score = ps.KDE()(tx)
    assert isinstance(score, torch.Tensor) and score.dtype == torch.float64 and score.shape == tx.shape
    log_f32, _ = ps.KDE()(tx.float())
    assert log_f32.dtype == torch.float32


def test_blob_matches_direct_formula():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(80, 2))
    eps = 0.3
    _, score = ps.Blob(eps)(v)
    diff = v[:, None, :] - v[None, :, :]
    phi = np.exp(-(diff ** 2).sum(-1) / eps) / (math.pi * eps)
    D = phi.sum(1)
    direct = (-2 / eps * phi[..., None] * diff * (1 / D[:, None, None] + 1 / D[None, :, None])).sum(1)
    np.testing.assert_allclose(score, direct, rtol=1e-12, atol=1e-12)


def test_blob_score_on_standard_gaussian():
    x = np.random.default_rng(4).normal(size=(2000, 3))
    _, score = ps.Blob()(x)
    # default ε = 4 n^{-2/7} ≈ 0.46: the mollified Gaussian has variance 1 + ε/2, so the
    # blob score ≈ −x/1.23 (relative bias² ≈ 3.5 %) plus sampling noise (measured ≈ 8 %)
    assert ps.relative_score_mse(score, -x) < 0.15


def test_exact_wraps_distribution():
    dist = isotropic_gaussian(3, 2.0)
    y = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    log_f, score = ps.Exact(dist)(y, y)
    torch.testing.assert_close(score, -y / 2.0)
    torch.testing.assert_close(log_f, dist.log_prob(y))
    family = ps.Exact(lambda t: isotropic_gaussian(3, t))
    assert family.time_dependent
    with pytest.raises(ValueError, match="at_time"):
        family(y)
    torch.testing.assert_close(family.at_time(4.0)(y)[1], -y / 4.0)


def test_oracle_bandwidth_beats_scott():
    g = torch.Generator().manual_seed(5)
    dist = isotropic_gaussian(2, 1.0)
    x, y = dist.sample(500, generator=g), dist.sample(300, generator=g)
    h, grid, errors = ps.oracle_bandwidth(x, y, dist.score(y))
    assert h in grid and errors.min() == errors[np.argmin(errors)]
    _, s_scott = ps.KDE("scott", isotropic=True)(x, y)
    assert errors.min() <= ps.relative_score_mse(s_scott, dist.score(y)) + 1e-12


def test_metrics_closed_form():
    s = np.ones((4, 2))
    assert ps.relative_score_mse(2 * s, s) == pytest.approx(1.0)
    assert ps.log_density_mse(np.zeros(3), np.full(3, 2.0)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="shape"):
        ps.relative_score_mse(np.ones((3, 2)), np.ones((2, 2)))


@pytest.mark.parametrize("make_est", [lambda: ps.KDE(), lambda: ps.Blob(), lambda: ps.KDE(0.5)])
def test_bad_inputs_raise_clear_errors(make_est):
    est = make_est()
    good = np.random.default_rng(0).normal(size=(20, 3))
    bad = good.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*\(7, 1\)"):
        est(bad)
    bad[7, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        est(good, bad)
    with pytest.raises(ValueError, match=r"shape \(n, d\).*\(20,\)"):
        est(good[:, 0])
    with pytest.raises(ValueError, match="empty"):
        est(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="dimension 2 but the context has dimension 3"):
        est(good, good[:, :2])
    with pytest.raises(ValueError, match="numpy array or torch tensor"):
        est("not an array")


def test_too_few_particles_for_bandwidth_rule():
    x = np.random.default_rng(0).normal(size=(3, 3))
    with pytest.raises(ValueError, match=r"at least 4 particles.*3x3 covariance"):
        ps.KDE("scott")(x)
    with pytest.raises(ValueError, match="at least 4 particles"):
        ps.Blob()(x)
    ps.KDE(0.5)(x)  # a fixed bandwidth needs no covariance


@pytest.mark.parametrize("bad", ["scot", -1.0, float("nan"), True])
def test_bad_bandwidth(bad):
    with pytest.raises(ValueError, match="bandwidth"):
        ps.KDE(bad)
