"""Exact conversion between the single-device state dict and the two columns' states.

Every layer is split by its outputs, so column ``c`` holds the ``c``-th half, along
dim 0, of every weight and bias of :class:`~alexnet_mp.model.AlexNet`: grouped convs
(conv2, conv4, conv5) keep their per-group input width, dense layers (conv3, fc6-fc8)
keep all inputs. Merging is the concatenation; both directions are exact copies.
"""

from __future__ import annotations

import torch

from . import layers as L
from .errors import CheckpointError

_SUFFIXES = ("weight", "bias")


def _keys(num_classes: int) -> list[str]:
    return [f"{s.layer.name}.{p}" for s in L.shapes(num_classes) for p in _SUFFIXES]


def _num_classes(state: dict[str, torch.Tensor], columns: int) -> int:
    if "fc8.bias" not in state:
        raise CheckpointError(
            "The state dict has no 'fc8.bias', so it is not an AlexNet state "
            f"(keys: {', '.join(list(state)[:6])}{'...' if len(state) > 6 else ''})."
        )
    return state["fc8.bias"].shape[0] * columns


def _check_keys(state: dict, expected: list[str], what: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{what} does not match the layer table: missing {missing or 'none'}, "
            f"unexpected {unexpected or 'none'}. Expected exactly {', '.join(expected)}."
        )


def to_columns(state: dict[str, torch.Tensor], columns: int = L.COLUMNS) -> list[dict[str, torch.Tensor]]:
    """Split an :class:`AlexNet` state dict into one state dict per :class:`Column`."""
    num_classes = _num_classes(state, 1)
    _check_keys(state, _keys(num_classes), "The single-device state dict")
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(columns)]
    for key in _keys(num_classes):
        for c, chunk in enumerate(state[key].chunk(columns, dim=0)):
            parts[c][key] = chunk.clone()
    return parts


def from_columns(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Merge the columns' state dicts (in column order) into one :class:`AlexNet` state dict."""
    if len(states) != L.COLUMNS:
        raise CheckpointError(f"Merging needs {L.COLUMNS} column states, got {len(states)}.")
    num_classes = _num_classes(states[0], len(states))
    for c, s in enumerate(states):
        _check_keys(s, _keys(num_classes), f"Column {c}'s state dict")
    return {key: torch.cat([s[key].cpu() for s in states], dim=0) for key in _keys(num_classes)}
