"""Adaptation checked on held-out particles (``DiScoFormer(adapt_holdout=v)``): the score-matching
loss it uses, and the rule that an adaptation is kept only when that loss drops."""
import pytest
import torch

import particlescore as ps
from particlescore.problems import BKWProblem


def _float64_estimator(**options):
    est = ps.DiScoFormer.pretrained(dim=2, **options)
    est.net.double()
    est._pretrained = [p.detach().clone() for p in est.net.adaptable_parameters()]
    return est


def test_score_matching_loss_equals_its_finite_difference_form_in_original_coordinates():
    """J = mean ½|s|² + ∇·s (Hyvärinen 2005) from the whitened Jacobian equals the same sum with
    the divergence taken by central differences of the model's own score in the original
    coordinates (a sheared, shifted Gaussian cloud, so that a wrong frame metric shows: L⁻¹L⁻ᵀ
    and Σ⁻¹ = L⁻ᵀL⁻¹ differ by 3 % here). Float64, step 1e-4: the difference error is
    O(1e-8·s''') and round-off O(1e-16/1e-4), so 1e-7 relative is far above both."""
    g = torch.Generator().manual_seed(0)
    shear = torch.tensor([[2.0, 0.0], [0.6, 0.5]], dtype=torch.float64)
    x = torch.randn(600, 2, generator=g, dtype=torch.float64) @ shear.T + 3.0
    est = _float64_estimator(adapt_steps=1, adapt_holdout=100)
    enc, held = est._holdout_split(est._prepare(x), x)
    assert held.shape == (100, 2)
    loss = est._score_matching_loss(enc, held)
    _, score = est.model.predict(enc, held[None])
    eps, div = 1e-4, torch.zeros(100, dtype=torch.float64)
    for k in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[k] = eps
        _, plus = est.model.predict(enc, (held + step)[None])
        _, minus = est.model.predict(enc, (held - step)[None])
        div += (plus[0, :, k] - minus[0, :, k]) / (2 * eps)
    expected = float((0.5 * (score[0] ** 2).sum(-1) + div).mean())
    assert loss == pytest.approx(expected, rel=1e-7)


def test_adaptation_is_kept_only_when_it_lowers_the_held_out_score_matching_loss():
    """On early-time BKW clouds (n = 300, d = 2), where the consistency loss and the score error
    disagree, plain adaptation changes the head in every draw; with ``adapt_holdout`` the head
    changes only in draws where the held-out loss went down, and at least one draw is undone by
    that check alone."""
    problem = BKWProblem(2)
    undone_by_check = 0
    for seed in range(4):
        x = problem.initial_distribution().sample(300, generator=torch.Generator().manual_seed(seed))
        plain = ps.DiScoFormer.pretrained(dim=2, adapt_steps=3)
        checked = ps.DiScoFormer.pretrained(dim=2, adapt_steps=3, adapt_holdout=64)
        start = [p.clone() for p in checked.net.adaptable_parameters()]
        enc, held = checked._holdout_split(checked._prepare(x), x)
        before = checked._score_matching_loss(enc, held)
        plain(x)
        checked(x)
        changed = [any(not torch.equal(a, b) for a, b in zip(start, est.net.adaptable_parameters()))
                   for est in (plain, checked)]
        assert changed[0]
        if changed[1]:
            assert checked._score_matching_loss(enc, held) <= before
        else:
            undone_by_check += 1
    assert undone_by_check >= 1


def test_adapt_holdout_is_validated_reported_and_reachable_from_toml():
    with pytest.raises(ValueError, match="adapt_holdout"):
        ps.DiScoFormer.pretrained(dim=2, adapt_holdout=-1)
    est = ps.registry.create("estimator", "discoformer", {"adapt_steps": 2, "adapt_holdout": 32},
                             problem=BKWProblem(2), seed=0)
    assert est.adapt_holdout == 32 and est.describe()["adapt_holdout"] == 32
    x = BKWProblem(2).initial_distribution().sample(7, generator=torch.Generator().manual_seed(0))
    assert est._holdout_split(est._prepare(x), x)[1].shape == (1, 2)   # 7 // 4 = 1 out, 6 = 2(d + 1) left
    assert est._holdout_split(est._prepare(x[:6]), x[:6]) is None      # 5 left: too few to whiten
    est(x[:6])                                                         # adapts on the consistency loss alone


@pytest.mark.parametrize("winner", ["start", "adapted", "pretrained"])
def test_the_head_with_the_lowest_held_out_loss_is_kept(winner):
    """``_keep_best_held_out`` keeps, of the head the call started from, the adapted head (the
    current parameters) and the pretrained head, the one the check scores lowest; the check here
    is the squared distance to one of the three, so that one must come back exactly."""
    est = ps.DiScoFormer.pretrained(dim=2, adapt_steps=1, adapt_holdout=8)
    params = est.net.adaptable_parameters()
    g = torch.Generator().manual_seed(0)
    start = [p0 + 0.1 * torch.randn(p0.shape, generator=g) for p0 in est._pretrained]
    adapted = [p0 + 0.1 * torch.randn(p0.shape, generator=g) for p0 in est._pretrained]
    heads = {"start": start, "adapted": adapted, "pretrained": est._pretrained}
    target = [t.clone() for t in heads[winner]]

    def check():
        return float(sum(((p - t) ** 2).sum() for p, t in zip(params, target)))
    with torch.no_grad():
        for p, a in zip(params, adapted):
            p.copy_(a)
    x = BKWProblem(2).initial_distribution().sample(64, generator=g)
    enc = est._prepare(x)
    qry_w = est._adaptation_queries(enc.ctx_w)
    est._keep_best_held_out(enc, qry_w, check, params, [(check_of(start, params, check), start, 1.0),
                                                        (check(), None, 2.0)])
    for p, t in zip(params, heads[winner]):
        assert torch.equal(p, t)


def check_of(values, params, check):
    """``check()`` with ``params`` temporarily set to ``values``."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    loss = check()
    with torch.no_grad():
        for p, v in zip(params, saved):
            p.copy_(v)
    return loss
