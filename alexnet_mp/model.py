"""The network as ``nn.Module``s: the single-device equivalent and one column.

Both are built from the layer table in :mod:`alexnet_mp.layers`. How columns are placed on
devices and how they exchange activations lives in :mod:`alexnet_mp.parallel`; nothing
here knows about processes or devices.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import layers as L
from .lrn import ColumnLRN

INITS = ("paper", "kaiming")


class _Layers(nn.Module):
    """Weight layers conv1..fc8 (registered in that order) plus what follows each one."""

    def __init__(self, *, num_classes: int, columns_here: int, dropout: float,
                 lrn_alpha: float, lrn_impl: Literal["fast", "eager", "triton", "torch"], init: Literal["paper", "kaiming"]) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init
        self.num_classes = num_classes
        self.dropout = dropout
        self.shapes = L.shapes(num_classes)
        for s in self.shapes:
            layer = s.layer
            out = s.column_out * columns_here
            if layer.kind == "conv":
                # A layer that sees only its own column is a grouped conv when several
                # columns live in this module; a layer that sees both is dense.
                grouped = layer.sees == "own" and s.column_in != s.in_shape[0]
                groups = columns_here if grouped else 1
                module = nn.Conv2d(s.column_in * groups, out, layer.kernel, stride=layer.stride,
                                   padding=layer.padding, groups=groups)
            else:
                module = nn.Linear(s.column_in, out)
            self.add_module(layer.name, module)
        self.lrn = ColumnLRN(columns_here, alpha=lrn_alpha, impl=lrn_impl)
        self.layer_names = [s.layer.name for s in self.shapes]
        self._spec = {s.layer.name: s.layer for s in self.shapes}
        # Flatten where a conv layer feeds a fully connected one (after conv5's pool).
        kinds = [s.layer.kind for s in self.shapes] + ["fc"]
        self._flatten_after = {n: a == "conv" and b == "fc"
                               for n, a, b in zip(self.layer_names, kinds, kinds[1:])}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``paper``: weights N(0, 0.01^2), biases 1 or 0 per the table.
        ``kaiming``: He-normal weights for ReLU (std sqrt(2 / fan_in)), zero biases — not the
        paper's; it starts learning within a few steps where the paper's needs many epochs."""
        for s in self.shapes:
            module = getattr(self, s.layer.name)
            if self.init == "paper":
                nn.init.normal_(module.weight, mean=0.0, std=L.INIT_STD)
                nn.init.constant_(module.bias, s.layer.bias_init)
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def block(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Layer ``name`` and what follows it: ReLU, LRN, overlapping pool, flatten, dropout."""
        return self.after(name, getattr(self, name)(x))

    def after(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """What follows layer ``name``'s output: ReLU, LRN, overlapping pool, flatten, dropout."""
        layer = self._spec[name]
        if layer.relu:
            x = F.relu(x)
        if layer.lrn:
            x = self.lrn(x)
        if layer.pool:
            x = F.max_pool2d(x, L.POOL_KERNEL, L.POOL_STRIDE)
        if self._flatten_after[name]:
            x = torch.flatten(x, 1)
        if layer.dropout and self.dropout > 0:
            x = F.dropout(x, self.dropout, self.training)
        return x


class AlexNet(_Layers):
    """The paper's network on one device: both columns side by side.

    conv2, conv4 and conv5 are grouped convolutions (each column sees its own maps), LRN
    runs within each column's maps, conv3 and the FC layers see both columns. It computes
    exactly the function of the two-column split.
    """

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.5,
                 lrn_alpha: float = L.LRN.alpha, lrn_impl: Literal["fast", "eager", "triton", "torch"] = "fast",
                 init: Literal["paper", "kaiming"] = "paper") -> None:
        super().__init__(num_classes=num_classes, columns_here=L.COLUMNS, dropout=dropout,
                         lrn_alpha=lrn_alpha, lrn_impl=lrn_impl, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.layer_names:
            x = self.block(name, x)
        return x


class Column(_Layers):
    """One column: half of every layer. Layers that see both columns take the gathered input.

    A column is run block by block by :class:`alexnet_mp.parallel.SplitAlexNet`, which
    performs the exchanges in between; on its own it has no ``forward``.
    """

    def __init__(self, index: int, num_classes: int = 1000, *, dropout: float = 0.5,
                 lrn_alpha: float = L.LRN.alpha, lrn_impl: Literal["fast", "eager", "triton", "torch"] = "fast",
                 init: Literal["paper", "kaiming"] = "paper") -> None:
        if not 0 <= index < L.COLUMNS:
            raise ValueError(f"column index must be in 0..{L.COLUMNS - 1}, got {index}")
        super().__init__(num_classes=num_classes, columns_here=1, dropout=dropout,
                         lrn_alpha=lrn_alpha, lrn_impl=lrn_impl, init=init)
        self.index = index

    def extra_repr(self) -> str:
        return f"index={self.index}"
