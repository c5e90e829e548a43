"""Placing the columns: the split model and the two ways to build it.

The model code is the same whether the columns live in two processes or in one; only
the :class:`~alexnet_mp.exchange.Exchange` differs. Exchanges happen exactly where the
layer table says a layer sees both columns (conv3, fc6, fc7, fc8), plus the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from . import layers as L
from .convert import to_columns
from .errors import DistributedError
from .exchange import Exchange, ExchangeStats, LocalExchange, ProcessGroupExchange
from .model import AlexNet, Column


class SplitAlexNet(nn.Module):
    """The two-column network: runs the columns this process holds, exchanging between them.

    ``state_dict`` keys carry the column (``column0.conv1.weight``), so a checkpoint of the
    two ranks never confuses the two columns' weights.
    """

    def __init__(self, columns: Sequence[Column], exchange: Exchange, *, overlap: bool = False,
                 fused: bool = False) -> None:
        super().__init__()
        if fused and not (isinstance(exchange, LocalExchange) and len(set(exchange.devices)) == 1):
            raise DistributedError(
                "fused = true runs the columns as one grouped network and needs every column in this "
                f"process on one device; this placement has {getattr(exchange, 'devices', '?')}. Use it "
                "for one GPU (or one CPU process), not with one column per process or per device.")
        if overlap and not isinstance(exchange, ProcessGroupExchange):
            raise DistributedError(
                "Overlapping exchanges with compute needs one column per process (torchrun "
                f"--nproc_per_node={L.COLUMNS} or 2 x D); with every column in one process an exchange is a "
                "device copy and there is nothing to overlap. Turn overlap off for this placement.")
        self.overlap = overlap
        indices = [c.index for c in columns]
        if indices != exchange.column_indices:
            raise ValueError(f"columns {indices} do not match the exchange's {exchange.column_indices}")
        self.columns = nn.ModuleDict({f"column{c.index}": c for c in columns})
        self.exchange = exchange
        first = columns[0]
        self.num_classes = first.num_classes
        self._sees_both = {s.layer.name: s.layer.sees == "both" for s in first.shapes}
        self.fused = fused
        if fused:
            # The single-device network's structure only (meta tensors, not a submodule, so it
            # is in no state dict): its weights are the columns' halves, concatenated per step.
            with torch.device("meta"):
                net = AlexNet(self.num_classes, dropout=first.dropout, lrn_alpha=first.lrn.alpha,
                              lrn_impl=first.lrn.impl)
            self._net = (net,)

    @property
    def stats(self) -> ExchangeStats:
        return self.exchange.stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = list(self.columns.values())
        if self.fused:
            return self._fused_forward(columns, x)
        hs = self.exchange.scatter_input(x)
        for name in columns[0].layer_names:
            if self._sees_both[name] and self.overlap:
                (col,), (h,) = columns, hs
                hs = [col.after(name, self._overlapped(col, name, h))]
                continue
            if self._sees_both[name]:
                hs = self.exchange.gather(name, hs)
            hs = [col.block(name, h) for col, h in zip(columns, hs)]
        return self.exchange.output(self.exchange.gather(L.LOGITS, hs))

    def _fused_forward(self, columns: list[Column], x: torch.Tensor) -> torch.Tensor:
        """Both columns as the single-device network (grouped conv2/4/5, per-column LRN):
        every weight is its column halves concatenated along dim 0 (alexnet_mp.convert's
        layout), so gradients flow back to the columns' own parameters. No exchange happens —
        the grouped layers read both halves from the same memory — so nothing is recorded in
        :attr:`stats`."""
        (net,) = self._net
        net.train(self.training)
        params = {f"{name}.{p}": torch.cat([getattr(getattr(c, name), p) for c in columns], dim=0)
                  for name in columns[0].layer_names for p in ("weight", "bias")}
        return torch.func.functional_call(net, params, (x.to(self.exchange.devices[0]),))

    def _overlapped(self, column: Column, name: str, own: torch.Tensor) -> torch.Tensor:
        """Layer ``name`` on this column's part while the other columns' parts are in flight."""
        return self.exchange.overlapped(name, own, getattr(column, name))

    def load_reference_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a single-device :class:`AlexNet` state dict into the columns held here."""
        parts = to_columns(state)
        for column in self.columns.values():
            column.load_state_dict(parts[column.index])


def _auto_devices() -> list[torch.device]:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n >= 2:
        return [torch.device("cuda", 0), torch.device("cuda", 1)]
    if n == 1:
        return [torch.device("cuda", 0)] * 2
    return [torch.device("cpu")] * 2


def split_in_one_process(devices: Sequence[torch.device | str] | None = None, *,
                         num_classes: int = 1000, stats: ExchangeStats | None = None, fused: bool = False,
                         **column_kwargs) -> SplitAlexNet:
    """Both columns in this process: on ``cuda:0`` and ``cuda:1`` when two GPUs are visible
    (as the paper ran), both on one GPU when there is one, else on the CPU.

    ``fused=True`` (both columns on one device only) runs them as the single-device grouped
    network — the same function and parameters, without per-column kernels or exchange
    copies; on one GPU that is what makes it fast (docs/benchmarks.md)."""
    devices = list(devices) if devices is not None else _auto_devices()
    exchange = LocalExchange(devices, stats)
    columns = [Column(i, num_classes, **column_kwargs).to(d) for i, d in enumerate(exchange.devices)]
    return SplitAlexNet(columns, exchange, fused=fused)


def default_backend() -> Literal["nccl", "gloo"]:
    """NCCL when CUDA is present, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def default_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device the backend of ``group`` drives: this rank's GPU under NCCL, else the CPU."""
    backend = dist.get_backend(group) if dist.is_initialized() else default_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def split_across_processes(group: dist.ProcessGroup | None, *, device: torch.device | str | None = None,
                           num_classes: int = 1000, stats: ExchangeStats | None = None, overlap: bool = False,
                           **column_kwargs) -> SplitAlexNet:
    """This rank's column of the split; the other column is the other rank of ``group``."""
    if group is None:
        raise DistributedError(
            "split_across_processes needs the model-parallel process group (2 ranks, one per "
            "column) and got None. Pass dist.group.WORLD when the world is 2, or a device mesh's "
            "'mp' sub-group; to hold both columns in one process use split_in_one_process()."
        )
    exchange = ProcessGroupExchange(group, device or default_device(group), stats)
    column = Column(exchange.column_indices[0], num_classes, **column_kwargs).to(exchange.devices[0])
    return SplitAlexNet([column], exchange, overlap=overlap)
