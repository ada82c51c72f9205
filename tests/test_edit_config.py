"""``python -m particlescore.training.edit_config``: inference-only config edits of a weights file."""
import json

import pytest
import torch

from particlescore.discoformer import file_sha256, load_weights, save_weights
from particlescore.model import DiScoFormerConfig, DiScoFormerNet
from particlescore.training.edit_config import main


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    net = DiScoFormerNet(DiScoFormerConfig(dim=2, width=16, mixture_components=3, mixture_loo_covariances=True))
    path = tmp_path / "in.safetensors"
    save_weights(net, path, extra={"card": {"command": "test", "seed": 0}})
    path.with_suffix(".json").write_text(json.dumps({"command": "test", "seed": 0, "notes": "added later",
                                                           "config_edits": "an older edit, as one line of text"}))
    return path


def test_edit_keeps_the_tensors_and_records_the_edit(weights, tmp_path):
    out = tmp_path / "out.safetensors"
    assert main([str(weights), str(out), "--set", "mixture_tied=true", "--set", "mixture_tied_clustering=true",
                 "--set", "mixture_kmeans_start=true", "--set", "mixture_merge_test=true", "--set", "mixture_scale_split=true",
                 "--set", "mixture_kmeans_restarts=3", "--set", "mixture_birth=true", "--set", "mixture_loo_small_prior=true",
                 "--note", "tied clustering"]) == 0
    before, _ = load_weights(weights)
    after, meta = load_weights(out)
    for key, tensor in before.state_dict().items():
        assert torch.equal(tensor, after.state_dict()[key]), key
    assert after.config.mixture_tied and after.config.mixture_tied_clustering and after.config.mixture_kmeans_start
    assert after.config.mixture_merge_test and after.config.mixture_scale_split
    assert after.config.mixture_birth and after.config.mixture_loo_small_prior and after.config.mixture_kmeans_restarts == 3
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(out) and card["command"] == "test"
    assert card["notes"] == "added later"                     # from the JSON card beside the input
    assert card["config_edits"][0] == "an older edit, as one line of text" and len(card["config_edits"]) == 2
    edit = card["config_edits"][-1]
    assert edit["changed"] == {"mixture_tied": [False, True], "mixture_tied_clustering": [False, True],
                               "mixture_kmeans_start": [False, True], "mixture_merge_test": [False, True],
                               "mixture_scale_split": [False, True], "mixture_kmeans_restarts": [1, 3],
                               "mixture_birth": [False, True], "mixture_loo_small_prior": [False, True]}
    assert edit["from_sha256"] == file_sha256(weights) and edit["note"] == "tied clustering"
    assert json.loads(meta["card"])["config_edits"] == card["config_edits"]


@pytest.mark.parametrize("setting, message", [
    ("width=32", "FIELD one of"),                      # shapes the tensors
    ("elliptical_candidate=true", "FIELD one of"),     # what the network reads
    ("mixture_tied=1", "is a bool"),                   # wrong type
    ("mixture_tied_clustering=true", "needs mixture_tied"),
    ("mixture_kmeans_start=true", "needs mixture_tied"),
    ("mixture_tied=yes", "not JSON"),
])
def test_edit_refuses_what_it_cannot_change(weights, tmp_path, setting, message, capsys):
    out = tmp_path / "bad.safetensors"
    with pytest.raises(SystemExit):
        main([str(weights), str(out), "--set", setting, "--note", "x"])
    assert message in capsys.readouterr().err and not out.exists()


def test_edit_refuses_a_merge_test_without_the_loo_covariances(weights, tmp_path, capsys):
    out = tmp_path / "bad.safetensors"
    with pytest.raises(SystemExit):
        main([str(weights), str(out), "--set", "mixture_merge_test=true", "--set", "mixture_loo_covariances=false",
              "--note", "x"])
    assert "needs mixture_loo_covariances" in capsys.readouterr().err and not out.exists()
