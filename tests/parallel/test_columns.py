"""The split as a transformation: each column holds exactly its half of every layer."""

import copy

import pytest
import torch

from alexnet_mp import AlexNet
from alexnet_mp.errors import CheckpointError
from alexnet_mp.parallel import place_columns, split_columns, take_column
from alexnet_mp.parallel.columns import check_reference_state, column_of, merge_columns

HALVES = {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128, "fc6": 2048, "fc7": 2048, "fc8": 5}
"""The paper's split by output maps/features at 10 classes: the rows of each layer column 0 holds."""


def distinct_whole():
    """A whole network whose every entry is distinct (zero biases would hide swapped halves)."""
    net = AlexNet(10)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape))
    return net


def test_take_column_keeps_its_rows_of_every_layer():
    whole = distinct_whole()
    state = {k: v.clone() for k, v in whole.state_dict().items()}
    columns = [take_column(copy.deepcopy(whole), c) for c in (0, 1)]
    assert [k.split(".")[0] for k in state][::2] == list(HALVES)
    for layer, rows in HALVES.items():
        for suffix in ("weight", "bias"):
            key = f"{layer}.{suffix}"
            assert torch.equal(columns[0].state_dict()[key], state[key][:rows]), key
            assert torch.equal(columns[1].state_dict()[key], state[key][rows:]), key


def test_a_column_sees_its_own_maps_where_the_paper_says_and_both_elsewhere():
    column = take_column(AlexNet(10), 1)
    # grouped layers become dense over the own column's maps; conv3 and the fc layers see all inputs
    expected_inputs = {"conv1": 3, "conv2": 48, "conv3": 256, "conv4": 192, "conv5": 192}
    for name, inputs in expected_inputs.items():
        layer = getattr(column, name)
        assert (layer.in_channels, layer.groups, layer.weight.shape[1]) == (inputs, 1, inputs), name
    assert column.fc6.weight.shape == (2048, 9216) and column.fc8.weight.shape == (5, 4096)
    assert column.lrn.groups == 1 and column.columns == 1 and column.index == 1


def test_split_columns_is_exact_both_ways():
    torch.manual_seed(0)
    whole = AlexNet(10)
    state = {k: v.clone() for k, v in whole.state_dict().items()}
    columns = split_columns(whole)
    for key, value in state.items():
        assert torch.equal(merge_columns([c.state_dict()[key] for c in columns]), value), key
        assert torch.equal(column_of(value, 1), columns[1].state_dict()[key]), key


def test_a_column_does_not_run_alone():
    with pytest.raises(RuntimeError, match="one column cannot run alone"):
        take_column(AlexNet(10), 0)(torch.zeros(1, 3, 224, 224))


def test_load_reference_state_gives_each_column_its_half():
    whole = distinct_whole()
    placement = place_columns(AlexNet(10), ["cpu", "cpu"])
    placement.load_reference_state(whole.state_dict())
    for key, value in placement.whole().items():
        assert torch.equal(value, whole.state_dict()[key]), key


def test_foreign_state_is_rejected_by_name():
    with pytest.raises(CheckpointError, match="fc8.bias"):
        check_reference_state({"features.0.weight": torch.zeros(1)})
    state = AlexNet(10).state_dict()
    state.pop("conv4.bias")
    with pytest.raises(CheckpointError, match="conv4.bias"):
        check_reference_state(state)
