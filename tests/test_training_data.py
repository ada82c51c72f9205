"""Training families (particlescore/training/data.py): exact densities and scores, the default
batches unchanged, and the command-line spelling of ``--families``."""

import pytest
import torch

from particlescore.distributions import random_gmm
from particlescore.training.data import FAMILY_DRAWS, make_batch
from particlescore.training.train import parse_args


def test_default_batch_is_the_gmm_family_drawn_as_before():
    """The GMM-pretrained weights were trained on exactly this draw order: mixture, context,
    queries, then the blur of the first m/8 queries."""
    batch = make_batch(dim=3, batch=4, n=200, n_queries=64, off_fraction=0.125,
                       generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    mixture = random_gmm(4, 3, generator=g, dtype=torch.float64)
    context = mixture.sample(200, generator=g)
    queries = mixture.sample(64, generator=g)
    queries[:, :8] += torch.randn(4, 8, 3, generator=g, dtype=torch.float64)
    log_f, score = mixture.log_prob_and_score(queries)
    for got, want in ((batch.context, context), (batch.queries, queries), (batch.log_density, log_f),
                      (batch.score, score)):
        assert torch.equal(got, want.float())
    explicit = make_batch(dim=3, batch=4, n=200, n_queries=64, off_fraction=0.125,
                          generator=torch.Generator().manual_seed(7), families={"gmm": 3.0})
    assert torch.equal(explicit.score, batch.score)


@pytest.mark.parametrize("family", ["gaussian", "t_mixture", "laplace", "radial"])
@pytest.mark.parametrize("dim", [1, 3])
def test_family_score_is_the_gradient_of_its_log_density(family, dim):
    sample, log_prob_and_score = FAMILY_DRAWS[family](3, dim, torch.Generator().manual_seed(1))
    x = sample(40).requires_grad_(True)                                      # (3, 40, d)
    log_f, score = log_prob_and_score(x)
    grad, = torch.autograd.grad(log_f.sum(), x)
    assert torch.allclose(grad, score, rtol=0, atol=1e-12)   # float64, the same closed form: round-off only


@pytest.mark.parametrize("family", ["gaussian", "t_mixture", "laplace", "radial"])
def test_family_density_is_normalised_in_d1_and_d2(family):
    """∫ f = 1 by a Riemann sum: the grid step 0.05 resolves every component (variances ≥ 0.2,
    Laplace scales ≥ 0.5) to < 1e-3, and outside |x| ≤ 60 a Student-t with ν ≥ 2.2 (scale ≤ 1,
    means within 3) keeps < 1e-3 of its mass."""
    h = 0.05
    grid1 = torch.arange(-60.0, 60.0, h, dtype=torch.float64)
    _, lps = FAMILY_DRAWS[family](4, 1, torch.Generator().manual_seed(2))
    mass = torch.exp(lps(grid1[None, :, None].expand(4, -1, 1))[0]).sum(-1) * h
    assert torch.allclose(mass, torch.ones(4, dtype=torch.float64), atol=3e-3)
    h2 = 0.1
    axis = torch.arange(-30.0, 30.0, h2, dtype=torch.float64)
    grid2 = torch.cartesian_prod(axis, axis)                                 # (P, 2)
    _, lps = FAMILY_DRAWS[family](2, 2, torch.Generator().manual_seed(3))
    mass = torch.exp(lps(grid2[None].expand(2, -1, -1))[0]).sum(-1) * h2 ** 2
    # h = 0.1 in 2-d and |x| ≤ 30: a Student-t with ν = 2.2 leaves up to (3/30)^2.2 ≈ 0.6 % outside
    assert torch.allclose(mass, torch.ones(2, dtype=torch.float64), atol=1e-2)


@pytest.mark.parametrize("family", ["gaussian", "t_mixture", "laplace", "radial"])
def test_family_samples_follow_their_density(family):
    """Stein's identity E[s(x)] = 0 and E[s(x) xᵀ] = −I under the family's own samples, 10^5 of
    them. The standard errors of the entries of E[s xᵀ] are at most 0.017 (Gaussian: means up to 3
    and precisions up to 5 make s·x wide), 0.013 (Student-t) and 0.007 (Laplace), measured on
    these seeds; 0.05 is three of the largest."""
    sample, lps = FAMILY_DRAWS[family](2, 3, torch.Generator().manual_seed(4))
    x = sample(100_000)                                                      # (2, N, 3)
    _, s = lps(x)
    assert s.mean(1).abs().max() < 0.05
    stein = torch.einsum("bni,bnj->bij", s, x) / x.shape[1]                  # (2, 3, 3)
    assert (stein + torch.eye(3, dtype=torch.float64)).abs().max() < 0.05


def test_mixed_batch_and_its_validation():
    batch = make_batch(dim=2, batch=16, n=100, n_queries=32, off_fraction=0.125,
                       generator=torch.Generator().manual_seed(5),
                       families={"gmm": 2.0, "t_mixture": 1.0, "laplace": 1.0})
    assert batch.context.shape == (16, 100, 2) and batch.score.shape == (16, 32, 2)
    assert torch.isfinite(batch.score).all() and torch.isfinite(batch.log_density).all()
    for bad in ({"normal": 1.0}, {"gmm": 0.0}, {}):
        with pytest.raises(ValueError, match="families"):
            make_batch(dim=2, batch=2, n=10, n_queries=4, off_fraction=0.0,
                       generator=torch.Generator().manual_seed(0), families=bad)


def test_families_on_the_command_line():
    args = parse_args(["--dim", "3", "--families", "gmm:2", "t_mixture", "laplace:0.5"])
    assert args.families == {"gmm": 2.0, "t_mixture": 1.0, "laplace": 0.5}
    assert parse_args(["--dim", "3"]).families == {"gmm": 1.0}
    for bad in (["--families", "cauchy:1"], ["--families", "gmm:x"], ["--families", "gmm:-1"],
                ["--finetune-from", "a.safetensors", "--init-from", "b.safetensors"]):
        with pytest.raises(SystemExit):
            parse_args(["--dim", "3"] + bad)


def tiny_start_file(tmp_path):
    """The options of a two-step tiny run, and the network such a run writes to a.safetensors."""
    from particlescore.discoformer import load_weights
    from particlescore.training.train import main
    common = ["--steps", "2", "--batch", "2", "--n-min", "32", "--n-max", "48", "--queries", "8",
              "--eval-mixtures", "1", "--eval-sizes", "48", "--threads", "1", "--no-progress", "--warmup", "1"]
    main(["--dim", "2", "--width", "16", "--run-dir", str(tmp_path / "a"), "--out", str(tmp_path / "a.safetensors")]
         + common)
    return common, load_weights(tmp_path / "a.safetensors")[0]


def test_finetune_continues_from_a_weights_file_and_records_it(tmp_path):
    """Two mixed-family steps from a small stage file: the config comes from that file, the
    first step starts from its tensors, and the card records the families and the source."""
    import json

    from particlescore.discoformer import file_sha256, load_weights
    from particlescore.training.train import main
    common, start = tiny_start_file(tmp_path)
    main(["--dim", "2", "--finetune-from", str(tmp_path / "a.safetensors"), "--families", "gmm:1", "t_mixture:1",
          "laplace:1", "--lr", "1e-12", "--run-dir", str(tmp_path / "b"), "--out", str(tmp_path / "b.safetensors")]
         + common)
    tuned, meta = load_weights(tmp_path / "b.safetensors")
    card = json.loads(meta["card"])
    assert tuned.config == start.config and tuned.config.width == 16
    assert card["families"] == {"gmm": 1.0, "t_mixture": 1.0, "laplace": 1.0}
    assert card["finetuned_from"]["sha256"] == file_sha256(tmp_path / "a.safetensors")
    # lr 1e-12 for two steps: the tensors move by ~1e-12 at most (AdamW steps are ≤ lr in size)
    for (name, p0), p1 in zip(start.state_dict().items(), tuned.state_dict().values()):
        assert torch.allclose(p0, p1, atol=1e-9), name


def test_train_only_moves_the_named_parameters_and_freezes_the_rest(tmp_path):
    """``--train-only ln_out head``: after two steps at lr 1e-2 the head has moved and every
    other tensor is bitwise the start's; a prefix that names no parameter is refused."""
    from particlescore.discoformer import load_weights
    from particlescore.training.train import main
    common, start = tiny_start_file(tmp_path)
    main(["--dim", "2", "--finetune-from", str(tmp_path / "a.safetensors"), "--train-only", "ln_out", "head",
          "--lr", "1e-2", "--run-dir", str(tmp_path / "b"), "--out", str(tmp_path / "b.safetensors")] + common)
    tuned, _ = load_weights(tmp_path / "b.safetensors")
    moved = {name for (name, p0), p1 in zip(start.state_dict().items(), tuned.state_dict().values())
             if not torch.equal(p0, p1)}
    assert moved and all(name.startswith(("ln_out", "head")) for name in moved), moved
    with pytest.raises(SystemExit, match="match no parameter"):
        main(["--dim", "2", "--finetune-from", str(tmp_path / "a.safetensors"), "--train-only", "heads",
              "--run-dir", str(tmp_path / "c"), "--out", str(tmp_path / "c.safetensors")] + common)


def test_log_relative_score_loss_is_the_mean_log_of_each_mixtures_relative_error():
    """``--score-loss log-relative``: (1 − α)·mean log(‖ŝ − s‖²/‖s‖²) + α·Huber, checked by hand on
    a network whose output is known; the plain loss is unchanged."""
    import torch.nn.functional as F
    from types import SimpleNamespace
    from particlescore.training.train import batch_loss

    g = torch.Generator().manual_seed(3)
    truth, log_truth = torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, generator=g)   # (B, m, d), (B, m)
    pred, log_pred = truth + 0.1 * torch.randn(3, 5, 2, generator=g), log_truth + 0.3     # (B, m, d), (B, m)
    batch = SimpleNamespace(context=None, queries=None, score=truth, log_density=log_truth)

    def net(context, queries):
        return log_pred, pred

    rel = ((pred - truth) ** 2).sum((1, 2)) / (truth ** 2).sum((1, 2))      # (B,)
    huber = F.huber_loss(log_pred, log_truth, reduction="none", delta=1.0).mean(1)  # (B,)
    loss, rel_mean, _ = batch_loss(net, batch, 0.25, "log-relative")
    assert torch.allclose(loss, (0.25 * huber + 0.75 * rel.log()).mean(), rtol=1e-6)
    assert torch.allclose(rel_mean, rel.mean())
    assert torch.allclose(batch_loss(net, batch, 0.25)[0], (0.25 * huber + 0.75 * rel).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="score_loss"):
        batch_loss(net, batch, 0.25, "relative-log")
    assert parse_args(["--dim", "2", "--score-loss", "log-relative"]).score_loss == "log-relative"
    with pytest.raises(SystemExit):
        parse_args(["--dim", "2", "--score-loss", "mse"])
