"""The paper's split as a transformation of the whole network.

Every layer is split by its outputs ("colwise"): column ``c`` holds the ``c``-th half, along
dim 0, of every weight and bias of the whole :class:`~alexnet_mp.model.AlexNet`. A grouped
layer (conv2, conv4, conv5) keeps its per-group input width and becomes dense over its own
column's maps; a layer that sees both columns (conv3, fc6-fc8) keeps all its inputs. So the
split is exact both ways: a slice one way, a concatenation the other.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .. import layers as L
from ..errors import CheckpointError
from ..model import AlexNet


def take_column(model: AlexNet, index: int) -> AlexNet:
    """Turn the whole network ``model`` into its column ``index``, in place: half of every layer."""
    if model.columns != L.COLUMNS:
        raise ValueError(f"take_column needs the whole network ({L.COLUMNS} columns); this one holds {model.columns}")
    if not 0 <= index < L.COLUMNS:
        raise ValueError(f"column index must be in 0..{L.COLUMNS - 1}, got {index}")
    for _, layer in model.weight_layers():
        half = layer.weight.shape[0] // L.COLUMNS
        with torch.no_grad():
            layer.weight = nn.Parameter(layer.weight.narrow(0, index * half, half).clone())
            layer.bias = nn.Parameter(layer.bias.narrow(0, index * half, half).clone())
        if isinstance(layer, nn.Conv2d):
            layer.out_channels = half
            if layer.groups > 1:  # grouped over the columns: now one column's maps, densely
                layer.in_channels //= layer.groups
                layer.groups = 1
        else:
            layer.out_features = half
    model.lrn.groups = 1
    model.columns, model.index = 1, index
    return model


def split_columns(model: AlexNet) -> list[AlexNet]:
    """Every column of the whole network ``model`` (which becomes the last of them)."""
    return [take_column(copy.deepcopy(model) if i < L.COLUMNS - 1 else model, i) for i in range(L.COLUMNS)]


def _keys(num_classes: int) -> list[str]:
    return [f"{s.layer.name}.{p}" for s in L.shapes(num_classes) for p in ("weight", "bias")]


def check_reference_state(state: dict[str, torch.Tensor], what: str = "The single-device state dict") -> int:
    """The number of classes of a whole-network state dict; a clear error for anything else."""
    if "fc8.bias" not in state:
        raise CheckpointError(f"{what} has no 'fc8.bias', so it is not an AlexNet state "
                              f"(keys: {', '.join(list(state)[:6])}{'...' if len(state) > 6 else ''}).")
    num_classes = state["fc8.bias"].shape[0]
    expected = _keys(num_classes)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{what} does not match the layer table: missing {missing or 'none'}, "
                              f"unexpected {unexpected or 'none'}. Expected exactly {', '.join(expected)}.")
    return num_classes


def column_of(tensor: torch.Tensor, index: int) -> torch.Tensor:
    """Column ``index``'s half of a whole-network tensor (a view)."""
    return tensor.chunk(L.COLUMNS, dim=0)[index]


def merge_columns(halves: list[torch.Tensor]) -> torch.Tensor:
    """The whole-network tensor from every column's half, in column order (on the CPU)."""
    return torch.cat([h.detach().cpu() for h in halves], dim=0)
