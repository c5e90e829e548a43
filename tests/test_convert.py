"""Conversion between the single-device state and the columns' states is exact both ways."""

import pytest
import torch

from alexnet_mp import AlexNet, Column
from alexnet_mp.convert import from_columns, to_columns
from alexnet_mp.errors import CheckpointError


def test_round_trip_is_exact():
    torch.manual_seed(0)
    state = AlexNet(10).state_dict()
    parts = to_columns(state)
    for i, part in enumerate(parts):
        Column(i, 10).load_state_dict(part)  # shapes fit a column
    merged = from_columns(parts)
    assert merged.keys() == state.keys()
    assert all(torch.equal(merged[k], state[k]) for k in state)


def test_columns_take_output_halves():
    # Every entry distinct (AlexNet's zero biases would hide swapped halves): entry i of each tensor is i.
    state = {k: torch.arange(v.numel(), dtype=torch.float64).reshape(v.shape) for k, v in AlexNet(10).state_dict().items()}
    parts = to_columns(state)
    # The paper's split by output maps/features: (column 0, column 1) rows of each layer; the
    # grouped convs keep their per-group input width, conv3 and the fc layers all inputs.
    halves = {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128, "fc6": 2048, "fc7": 2048, "fc8": 5}
    assert [k.split(".")[0] for k in state][::2] == list(halves)
    for layer, rows in halves.items():
        for suffix in ("weight", "bias"):
            whole = state[f"{layer}.{suffix}"]
            assert torch.equal(parts[0][f"{layer}.{suffix}"], whole[:rows]), (layer, suffix)
            assert torch.equal(parts[1][f"{layer}.{suffix}"], whole[rows:]), (layer, suffix)
    assert parts[0]["conv3.weight"].shape == (192, 256, 3, 3) and parts[1]["conv4.weight"].shape == (192, 192, 3, 3)
    assert parts[0]["fc6.weight"].shape == (2048, 9216)


def test_foreign_state_is_rejected_by_name():
    with pytest.raises(CheckpointError, match="fc8.bias"):
        to_columns({"features.0.weight": torch.zeros(1)})
    state = AlexNet(10).state_dict()
    state.pop("conv4.bias")
    with pytest.raises(CheckpointError, match="conv4.bias"):
        to_columns(state)
