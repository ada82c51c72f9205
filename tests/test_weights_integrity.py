"""Issue 12.7: the shipped weights are verified on load, and degenerate input reaches the user as
a clear ValueError (as it does from KDE), never as a raw ``torch._C._LinAlgError``."""
import pytest
import torch

import particlescore as ps
import particlescore.discoformer as dmod

DIMS = (1, 2, 3, 10)
WHITEN_ERROR = "cannot whiten the context: its sample covariance is singular or not finite"


def _gaussian(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _degenerate(case, n, d):
    # identical points: Σ = 0; ×1e30: squares overflow float32 (the weights' dtype, max 3.4e38);
    # ×1e-30: Σ ~ 1e-60 underflows float32 (smallest subnormal 1.4e-45) to 0.
    x = _gaussian(n, d)
    return {"identical": torch.ones(n, d, dtype=torch.float64), "1e30": x * 1e30, "1e-30": x * 1e-30}[case]


@pytest.mark.parametrize("case", ["identical", "1e30", "1e-30"])
@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("dim", DIMS)
def test_degenerate_context_is_a_clear_value_error_in_every_dimension(dim, warm_start, case):
    est = ps.DiScoFormer.pretrained(dim=dim, warm_start=warm_start)
    if warm_start:
        est(_gaussian(100, dim))         # a warm estimator carries a fit into the bad call
    with pytest.raises(ValueError, match=WHITEN_ERROR):
        est(_degenerate(case, 100, dim))
    with pytest.raises(ValueError, match=WHITEN_ERROR):
        est.consistency_loss(_degenerate(case, 100, dim))


@pytest.mark.parametrize("case", ["identical", "1e30", "1e-30"])
@pytest.mark.parametrize("dim", DIMS)
def test_evaluate_cells_with_one_degenerate_cell_is_a_clear_value_error(dim, case):
    est = ps.DiScoFormer.pretrained(dim=dim)
    good = _gaussian(40, dim, seed=1)
    contexts = torch.stack([good, _degenerate(case, 40, dim), good])
    with pytest.raises(ValueError, match=WHITEN_ERROR):
        est.evaluate_cells(contexts, torch.tensor([40, 40, 40]))


@pytest.mark.parametrize("dim", [2, 3, 10])
def test_warm_start_across_a_change_of_scale_falls_back_to_the_cold_fit(dim):
    """A warm fit carried from an ensemble stretched by 1e12 along one axis into the frame of a
    compact one: the frame change A = L_new⁻¹L_old has condition ~1e12, A Σ Aᵀ is not positive
    definite in float32 and the old fit is no start. The call must then search afresh, which is
    exactly the cold estimator's fit (bitwise); before the fix it raised a raw LinAlgError."""
    g = torch.Generator().manual_seed(0)
    stretched = torch.randn(200, dim, generator=g, dtype=torch.float64)
    stretched[:, 0] *= 1e12
    simplex = torch.randn(dim + 1, dim, generator=g, dtype=torch.float64).repeat(60, 1)   # d+1 points, 60× each
    warm = ps.DiScoFormer.pretrained(dim=dim, warm_start=True)
    warm(stretched)
    log_warm, score_warm = warm(simplex)
    log_cold, score_cold = ps.DiScoFormer.pretrained(dim=dim)(simplex)
    assert torch.isfinite(score_warm).all()
    assert torch.equal(score_warm, score_cold) and torch.equal(log_warm, log_cold)


def test_kde_gives_a_value_error_on_identical_points_too():
    with pytest.raises(ValueError, match="singular"):
        ps.KDE()(torch.ones(100, 3, dtype=torch.float64))


# --------------------------------------------------------------------------- weights on disk
@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of the shipped d=2 weights and model card, loaded by ``pretrained`` from tmp_path."""
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"discoformer_d2{suffix}").write_bytes((dmod.WEIGHTS_DIR / f"discoformer_d2{suffix}").read_bytes())
    monkeypatch.setattr(dmod, "WEIGHTS_DIR", tmp_path)
    assert ps.DiScoFormer.pretrained(dim=2).sha256 == dmod.recorded_sha256(2)     # the intact copy loads
    return tmp_path / "discoformer_d2.safetensors"


@pytest.mark.parametrize("damage", ["flip a byte in the header", "flip the last byte", "truncate",
                                    "garbage", "empty", "append a byte"])
def test_pretrained_refuses_a_damaged_copy_of_the_shipped_weights(shipped_copy, damage):
    data = bytearray(shipped_copy.read_bytes())
    if damage == "flip a byte in the header":
        data[20] ^= 0x01
    elif damage == "flip the last byte":
        data[-1] ^= 0x80
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"not a safetensors file at all" * 10)
    elif damage == "empty":
        data = bytearray()
    else:
        data += b"\x00"
    shipped_copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"discoformer_d2.safetensors is corrupt or was modified: its sha256 is "
                                         r"[0-9a-f]{64}, but [0-9a-f]{64} was recorded"):
        ps.DiScoFormer.pretrained(dim=2)


def test_pretrained_with_a_broken_model_card_is_a_clear_error(shipped_copy):
    card = shipped_copy.with_suffix(".json")
    card.write_text("{ not json")
    with pytest.raises(ValueError, match="cannot read the checksum of the shipped weights"):
        ps.DiScoFormer.pretrained(dim=2)
    card.write_text('{"sha256": "abc"}')
    with pytest.raises(ValueError, match="records no valid sha256"):
        ps.DiScoFormer.pretrained(dim=2)


def test_missing_shipped_weights_file_is_a_clear_error(shipped_copy):
    shipped_copy.unlink()
    with pytest.raises(ValueError, match="no pretrained DiScoFormer weights for dim=2"):
        ps.DiScoFormer.pretrained(dim=2)
