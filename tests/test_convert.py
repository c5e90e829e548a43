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
    state = AlexNet(10).state_dict()
    parts = to_columns(state)
    assert torch.equal(parts[1]["conv1.weight"], state["conv1.weight"][48:])
    assert torch.equal(parts[0]["fc8.bias"], state["fc8.bias"][:5])
    assert parts[0]["conv3.weight"].shape == (192, 256, 3, 3)


def test_foreign_state_is_rejected_by_name():
    with pytest.raises(CheckpointError, match="fc8.bias"):
        to_columns({"features.0.weight": torch.zeros(1)})
    state = AlexNet(10).state_dict()
    state.pop("conv4.bias")
    with pytest.raises(CheckpointError, match="conv4.bias"):
        to_columns(state)
