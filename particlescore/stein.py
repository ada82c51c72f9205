"""Moment projection: make a score estimate obey Stein's identity on the particles themselves.

For a smooth density f that decays at infinity and a vector field φ of polynomial growth,
integration by parts gives Stein's identity ``E_f[φ·∇log f] = −E_f[∇·φ]``. A particle method
moves the *empirical* measure of its n particles, so what drives its moments is the empirical
version ``(1/n)Σ_i φ(v_i)·s_i = −(1/n)Σ_i ∇·φ(v_i)``, which even the exact score of f misses
by O(n^{-1/2}) sampling noise in the higher empirical moments (docs/moment_projection.md).

:func:`project_score` adds to a score ``s_i`` the smallest correction ``δ_i`` (least squares
over the particles) in the span of a finite family of fields ``φ_k`` such that ``s + δ`` obeys
the empirical identity for every ``φ_k``. This is the exact minimiser of the implicit
score-matching loss ``(1/n)Σ_i |s_i + δ_i|² + 2∇·δ(v_i)`` (Hyvärinen 2005) over that span: one
closed-form score-matching step, the property a score trained on the particles (SBTM) has for
the directions its network can represent.

:func:`landau_moment_fields` is the family for the Landau equation: with
``A(z) = |z|^{γ+2}(I − zzᵀ/|z|²)`` and Maxwell molecules (γ = 0), the second moments of the
particle flow ``dv_i/dt = −(1/n)Σ_j A(v_i − v_j)(s_i − s_j)`` (Carrillo, Hu, Wang & Wu 2020)
involve the scores only through ``Σ_i p(v_i)s_i`` for ``p ∈ {1, v_a, v_a v_b, |v|²v_b}`` and
``Σ_i v_a v_b (v_i·s_i)``; with the identities for those fields the particle covariance obeys the
exact moment ODE ``dΣ/dt = 4B(tr Σ·I − d·Σ)`` whatever the estimator (docs/equations.md).
"""
from __future__ import annotations

import torch

__all__ = ["landau_moment_fields", "project_score"]


def _scalar_basis(u: torch.Tensor):
    """Scalar polynomials ``1, u_a, u_a u_b (a ≤ b), |u|² u_b`` at u (n,d): values (n,S) and
    their gradients summed over the particles (S,d)."""
    n, d = u.shape
    eye = torch.eye(d, dtype=u.dtype, device=u.device)
    r2 = (u * u).sum(1)                                                      # (n,)
    a_idx, b_idx = torch.triu_indices(d, d, device=u.device)                 # (T,), (T,)
    values = torch.cat([torch.ones(n, 1, dtype=u.dtype, device=u.device), u,  # (n, 1 + d)
                        u[:, a_idx] * u[:, b_idx],                           # (n, T)
                        r2[:, None] * u], 1)                                 # (n, d) -> (n, S)
    grad_sums = torch.cat([torch.zeros(1, d, dtype=u.dtype, device=u.device),
                           n * eye,                                          # ∇u_a = e_a
                           u.sum(0)[b_idx, None] * eye[a_idx] + u.sum(0)[a_idx, None] * eye[b_idx],
                           2 * (u.T @ u) + r2.sum() * eye], 0)  # (S, d); ∇(|u|²u_b) = 2u_b u + |u|² e_b
    return values, grad_sums


def landau_moment_fields(u: torch.Tensor):
    """The field family of the Landau second-moment identities at centred, scaled points u (n,d).

    Fields ``p(u)e_c`` for the scalars p of :func:`_scalar_basis` and every axis c, then
    ``u_a u_b·u`` for a ≤ b except (a, b) = (0, 0): ``Σ_a u_a²·u = |u|²u`` is already a sum of
    ``(|u|²u_c)e_c``, so ``u_0²·u`` would make the family linearly dependent, and its identity
    follows from the others. Returns ``scalars`` (n,S), the gradient sums of the scalars (S,d),
    ``cubic`` = ``u_a u_b`` (n,T), whose fields ``u_a u_b·u`` have divergence ``(d+2)u_a u_b``.
    """
    scalars, grad_sums = _scalar_basis(u)
    a_idx, b_idx = torch.triu_indices(u.shape[1], u.shape[1], device=u.device)
    return scalars, grad_sums, u[:, a_idx[1:]] * u[:, b_idx[1:]]


def _solve_spd(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``matrix⁻¹ rhs`` for a symmetric positive definite matrix; least squares if it is singular
    (fewer particles than fields, or points on a lower-dimensional set)."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(matrix, rhs, driver="gelsd" if matrix.device.type == "cpu" else None).solution


def project_score(points: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """``score`` (n,d) at ``points`` (n,d) plus the least-squares correction that makes it obey
    Stein's identity on the empirical measure of ``points`` for :func:`landau_moment_fields`.

    Works in ``u = (v − v̄)/σ`` with the scalar ``σ² = tr Σ̂/d`` (the fields' span is the same in
    v, and |·| stays Euclidean). The correction is ``δ = Σ_c (PΛ_c)e_c + (Qμ)u`` with P the
    scalars (n,S) and Q the cubic weights (n,T); its normal equations have the block form
    ``[[I⊗PᵀP, C], [Cᵀ, Qᵀdiag|u|²Q]]`` with ``C_c = Pᵀdiag(u_c)Q``, solved by the Schur complement
    on μ in O(n·S·T·d + T³) time, never forming an (n, S·d+T, d) tensor.
    """
    n, d = points.shape
    centred = points - points.mean(0)                                        # (n, d)
    sigma = torch.sqrt((centred * centred).sum() / (n * d))
    u = centred / sigma                                                      # (n, d)
    s_u = score * sigma                                                      # (n, d) score in u
    P, grad_sums, Q = landau_moment_fields(u)                                # (n,S), (S,d), (n,T)
    r2 = (u * u).sum(1)                                                      # (n,)
    # residuals of the identities Σ_i φ_k·s_i + Σ_i ∇·φ_k (zero when an identity holds)
    resid_p = P.T @ s_u + grad_sums                                          # (S, d)
    resid_q = Q.T @ (u * s_u).sum(1) + (d + 2) * Q.sum(0)                    # (T,)
    gram_p = P.T @ P                                                         # (S, S)
    cross = torch.stack([P.T @ (u[:, c:c + 1] * Q) for c in range(d)])       # (d, S, T)
    gram_q = Q.T @ (r2[:, None] * Q)                                         # (T, T)
    # eliminate Λ: Λ_c = −A⁻¹(r_c + C_c μ); then (D − Σ_c C_cᵀA⁻¹C_c) μ = −(r_q − Σ_c C_cᵀA⁻¹r_c)
    a_inv_cross = _solve_spd(gram_p, cross.transpose(0, 1).reshape(P.shape[1], -1))  # (S, d·T)
    a_inv_cross = a_inv_cross.reshape(P.shape[1], d, -1).transpose(0, 1)     # (d, S, T)
    a_inv_resid = _solve_spd(gram_p, resid_p)                                # (S, d)
    schur = gram_q - torch.einsum("cst,csu->tu", cross, a_inv_cross)         # (T, T)
    mu = _solve_spd(schur, (-(resid_q - torch.einsum("cst,sc->t", cross, a_inv_resid)))[:, None])[:, 0]  # (T,)
    lam = -(a_inv_resid + torch.einsum("cst,t->sc", a_inv_cross, mu))        # (S, d)
    correction = P @ lam + (Q @ mu)[:, None] * u                             # (n, d)
    return (s_u + correction) / sigma
