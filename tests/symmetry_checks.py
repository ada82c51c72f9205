"""The exact symmetries every DiScoFormer has, checked on one estimator (float64 throughout):
permutation of the context, translation, anisotropic axis scaling (the last one not where
``mixture_loo_covariances`` changes a multi-component fit: its target is isotropic). Shared by
``test_discoformer.py`` (per-d networks) and ``test_equivariant.py`` (the any-d network)."""
import torch


def check_exact_symmetries(est, x: torch.Tensor, y: torch.Tensor):
    """Assert the three symmetries for context ``x`` (n,d) and queries ``y`` (m,d); returns
    ``est(x, y)``."""
    dim = x.shape[1]
    log_f, score = est(x, y)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    log_p, score_p = est(x[perm], y)
    # float64 throughout: only summation order changes, so agreement to ~1e-10
    torch.testing.assert_close(log_p, log_f, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(score_p, score, rtol=1e-9, atol=1e-9)
    shift = torch.arange(1.0, dim + 1, dtype=torch.float64) * 3.0
    log_t, score_t = est(x + shift, y + shift)
    torch.testing.assert_close(log_t, log_f, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(score_t, score, rtol=1e-9, atol=1e-9)
    # anisotropic axis scaling x -> xD: log f' = log f − log|det D|, s' = s D⁻¹ (exact because
    # the Cholesky whitening satisfies chol(DΣD) = D chol(Σ))
    scale = torch.linspace(0.2, 5.0, dim, dtype=torch.float64)
    log_s, score_s = est(x * scale, y * scale)
    torch.testing.assert_close(log_s, log_f - torch.log(scale).sum(), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(score_s, score / scale, rtol=1e-8, atol=1e-8)
    return log_f, score
