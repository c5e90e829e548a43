"""What the notebook computes (alexnet_mp/explore.py), against figures typed from the paper."""

from __future__ import annotations

import pytest
import torch

from alexnet_mp import explore
from alexnet_mp.errors import CheckpointError, UserError
from alexnet_mp.model import AlexNet


def test_lrn_within_the_columns_differs_from_lrn_across_only_at_the_boundary():
    torch.manual_seed(0)
    result = explore.lrn_within_vs_across(AlexNet(init="kaiming"), explore.sample_images(2))
    conv1, conv2 = result["layers"]
    # n = 5: the two maps on each side of the boundary between the columns' 48 | 48 and 128 | 128 maps
    assert (conv1["name"], conv1["maps"], conv1["changed_maps"]) == ("conv1", 96, [46, 47, 48, 49])
    assert (conv2["name"], conv2["maps"], conv2["changed_maps"]) == ("conv2", 256, [126, 127, 128, 129])
    assert 0 < conv1["max_rel"] < 0.1 and 0 < result["logits_rel"] < 0.1
    # across all maps, a column would fetch the other's 2 boundary maps at each LRN: 2x55x55 and 2x27x27
    assert result["boundary_floats"] == {"conv1": 6_050, "conv2": 1_458}


def test_lrn_comparison_leaves_the_model_as_it_was():
    model = AlexNet()
    lrn = model.lrn
    explore.lrn_within_vs_across(model, torch.randn(1, 3, 224, 224))
    assert model.lrn is lrn and lrn.groups == 2 and not lrn._forward_pre_hooks


def test_sample_images_are_standardised_generated_images():
    x = explore.sample_images(3, seed=1)
    assert x.shape == (3, 3, 224, 224)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    assert not torch.equal(x[0], x[1])


def test_conv1_of_an_exported_state_dict(tmp_path):
    state = AlexNet(4).state_dict()
    torch.save(state, tmp_path / "w.pt")
    weight, where = explore.load_conv1(tmp_path / "w.pt")
    assert torch.equal(weight, state["conv1.weight"]) and "w.pt" in where


@pytest.mark.parametrize("make,error,words", [
    (lambda p: p / "missing", UserError, ["missing", "does not exist", "run folder"]),
    (lambda p: (p / "x.pt").write_bytes(b"not a pickle") and p / "x.pt", CheckpointError, ["x.pt", "state dict"]),
    (lambda p: torch.save({"fc8.bias": torch.zeros(2)}, p / "y.pt") or p / "y.pt", CheckpointError,
     ["y.pt", "conv1.weight"]),
    (lambda p: (p / "run").mkdir() or p / "run", UserError, ["holds no complete checkpoint"]),
])
def test_a_path_that_is_not_a_run_is_named(tmp_path, make, error, words):
    path = make(tmp_path)
    with pytest.raises(error) as info:
        explore.load_conv1(path)
    for w in words:
        assert w in str(info.value), w


def test_run_folder_is_found_from_a_checkpoint_inside_it(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step-0000001"
    step.mkdir(parents=True)
    assert explore.run_folder(step) == tmp_path / "run"
    assert explore.run_folder(tmp_path / "run") == tmp_path / "run"
    assert explore.run_folder(tmp_path) is None
    assert explore.run_scalars(tmp_path / "run") == {}
