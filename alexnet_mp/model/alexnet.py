"""The paper's network, written out as its Figure 2.

:class:`AlexNet` holds ``columns`` of the paper's two columns ("towers"). With ``columns=2``
(the default) it is the whole network on one device — the single-device equivalent:
conv2, conv4 and conv5 are grouped convolutions (each column sees its own maps) and the LRN
runs within each column's maps. With ``columns=1`` it is one column, half of every layer:
:func:`alexnet_mp.parallel.take_column` makes one from a whole network.

The network is one function, :meth:`AlexNet.network`. It ``yield``s at every place where the
columns meet (before conv3, fc6, fc7 and fc8, and the logits) and receives both columns'
maps there. On one device the whole network already holds both, and :meth:`forward` hands
them straight back; a placement that holds one column gathers the other column's half
(:mod:`alexnet_mp.parallel`). Every shape and count comes from the layer table,
:mod:`alexnet_mp.layers`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import layers as L
from .lrn import ColumnLRN, relu_lrn_pool

Init = Literal["paper", "kaiming"]
LRNImpl = Literal["fast", "eager", "triton", "torch"]
Network = Generator[tuple[str, torch.Tensor], torch.Tensor, torch.Tensor]
""":meth:`AlexNet.network`: yields (meeting place, this module's maps), receives every column's maps."""


class AlexNet(nn.Module):
    """The two-column AlexNet of 2012 (60,965,224 parameters with 1000 classes).

    ``fused_relu_lrn_pool=True`` runs ReLU, LRN and max-pool after conv1 and conv2 as one fused
    Triton kernel each way where ``lrn_impl`` picks Triton (``"fast"`` on CUDA, ``"triton"``),
    else as the three modules in a row (always on the CPU). Off by default until it is measured
    on a GPU (docs/benchmarks.md); see :func:`alexnet_mp.model.lrn.relu_lrn_pool`.
    """

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.5, lrn_alpha: float = L.LRN.alpha,
                 lrn_impl: LRNImpl = "fast", init: Init = "paper", columns: int = L.COLUMNS,
                 fused_relu_lrn_pool: bool = False) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if init not in ("paper", "kaiming"):
            raise ValueError(f"init must be 'paper' or 'kaiming', got {init!r}")
        if columns not in (1, L.COLUMNS):
            raise ValueError(f"an AlexNet holds one column or all {L.COLUMNS}, not {columns}")
        self.num_classes, self.columns, self.init = num_classes, columns, init
        self.fused_relu_lrn_pool = fused_relu_lrn_pool
        self.shapes = L.shapes(num_classes)
        for s in self.shapes:  # conv1 … fc8, registered in the table's order
            self.add_module(s.layer.name, _weight_layer(s, columns))
        self.lrn = ColumnLRN(columns, alpha=lrn_alpha, impl=lrn_impl)
        self.pool = nn.MaxPool2d(L.POOL_KERNEL, L.POOL_STRIDE)  # overlapping: 3x3 windows, stride 2
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def network(self, x: torch.Tensor) -> Network:
        """Figure 2: each ``yield`` is a place where the two columns meet."""
        # pool(lrn(relu(.))), fused into one kernel each way where the LRN would run Triton's
        x = relu_lrn_pool(self.conv1(x), self.lrn, self.pool, fuse=self.fused_relu_lrn_pool)
        x = relu_lrn_pool(self.conv2(x), self.lrn, self.pool, fuse=self.fused_relu_lrn_pool)
        x = yield "conv3", x
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool(F.relu(self.conv5(x)))
        x = yield "fc6", torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc6(x)))
        x = yield "fc7", x
        x = self.dropout(F.relu(self.fc7(x)))
        x = yield "fc8", x
        return (yield L.LOGITS, self.fc8(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.columns != L.COLUMNS:
            raise RuntimeError("one column cannot run alone: place it with alexnet_mp.parallel, which brings "
                               "the other column's maps where the columns meet")
        return run(self.network(x), lambda _name, maps: maps)  # both columns are already here

    def reset_parameters(self) -> None:
        """``paper``: weights N(0, 0.01^2), biases 1 or 0 per the table. ``kaiming``: He-normal
        weights for ReLU (std sqrt(2 / fan_in)) and zero biases — not the paper's; it starts
        learning within a few steps where the paper's needs many epochs (docs/training.md)."""
        for s in self.shapes:
            module = getattr(self, s.layer.name)
            if self.init == "paper":
                nn.init.normal_(module.weight, mean=0.0, std=L.INIT_STD)
                nn.init.constant_(module.bias, s.layer.bias_init)
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def weight_layers(self) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
        """conv1 … fc8, in the table's order."""
        return [(s.layer.name, getattr(self, s.layer.name)) for s in self.shapes]

    def extra_repr(self) -> str:
        return f"columns={self.columns}, num_classes={self.num_classes}, init={self.init}"


def run(network: Network, gather: Callable[[str, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Drive :meth:`AlexNet.network` to its end, answering each meeting place with ``gather(name, maps)``."""
    try:
        name, maps = next(network)
        while True:
            name, maps = network.send(gather(name, maps))
    except StopIteration as end:
        return end.value


def _weight_layer(s: L.LayerShape, columns: int) -> nn.Conv2d | nn.Linear:
    """The layer for ``columns`` columns: a layer that sees only its own column is grouped
    when several columns share the module; one that sees both is dense."""
    out = s.column_out * columns
    if s.layer.kind == "fc":
        return nn.Linear(s.column_in, out)
    groups = columns if s.layer.sees == "own" and s.column_in != s.in_shape[0] else 1
    return nn.Conv2d(s.column_in * groups, out, s.layer.kernel, stride=s.layer.stride, padding=s.layer.padding,
                     groups=groups)
