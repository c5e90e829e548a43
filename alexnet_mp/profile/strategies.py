"""The ways to place AlexNet on devices that the profiler runs, one registry entry each.

A :class:`Strategy` says how many processes it needs, how it splits the batch, and builds
a :class:`Replica` on each rank: the model, the loss, what runs after backward (the
data-parallel all-reduce) and the record of what crossed. A new strategy (``hybrid``,
DESIGN.md section 4) is one more entry in ``STRATEGIES``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import layers as L
from ..errors import UserError
from ..exchange import ExchangeStats
from ..model import AlexNet
from ..parallel import split_across_processes
from . import analytic


@dataclass(frozen=True, slots=True)
class RankContext:
    """Where one rank of a strategy runs."""

    rank: int
    world: int
    group: dist.ProcessGroup | None
    device: torch.device
    num_classes: int
    seed: int
    overlap: bool = False
    """Overlap the split's exchanges with compute."""


class Replica:
    """What one rank holds of a strategy: the module it trains and its communication."""

    column: int | None = None
    """The paper's column this rank holds, or None when it holds whole layers."""
    stats_key: int | None = None
    """The key this rank's traffic is recorded under in ``stats``; None means its rank."""

    def __init__(self, model: nn.Module, stats: ExchangeStats) -> None:
        self.model = model
        self.stats = stats

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def after_backward(self) -> None:
        """Communication between backward and the optimizer step (none by default)."""

    def comm_seconds(self) -> float:
        return sum(t[d].seconds for per in self.stats.records.values() for t in per.values() for d in t)


class PaperReplica(Replica):
    """One column of the paper's split: exchanges inside forward and backward."""

    def __init__(self, ctx: RankContext) -> None:
        stats = ExchangeStats(sync_cuda=ctx.device.type == "cuda")
        model = split_across_processes(ctx.group, device=ctx.device, num_classes=ctx.num_classes, stats=stats,
                                       overlap=ctx.overlap)
        super().__init__(model, stats)
        self.column = model.exchange.column_indices[0]


def _allreduce_layers(layers, group, stats: ExchangeStats, key: int) -> None:
    """Average each layer's gradients over ``group``, one timed all-reduce per layer."""
    world = dist.get_world_size(group)
    for name, params in layers:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        sync = flat.is_cuda and stats.sync_cuda
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        if sync:
            torch.cuda.synchronize()
        stats.record(key, f"{name}.grad", "backward", flat.numel() * flat.element_size(), time.perf_counter() - start)
        flat.div_(world)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


class HybridReplica(Replica):
    """One column of one replica on a (dp, mp) = (W/2, 2) mesh: the paper's exchanges on
    the pair, and this column's gradients averaged over its replicas (DESIGN.md section 4).

    The strategy must own the whole world: the mesh's sub-groups are made by every rank.
    """

    def __init__(self, ctx: RankContext) -> None:
        if dist.get_world_size() != ctx.world:
            raise UserError(f"Strategy 'hybrid' builds its own ('dp', 'mp') mesh and needs the whole world: run it "
                            f"with exactly {ctx.world} ranks under torchrun (this world has {dist.get_world_size()}), "
                            "or let alexnet-mp profile start its own workers.")
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(ctx.device.type, (ctx.world // L.COLUMNS, L.COLUMNS), mesh_dim_names=("dp", "mp"))
        stats = ExchangeStats(sync_cuda=ctx.device.type == "cuda")
        model = split_across_processes(mesh.get_group("mp"), device=ctx.device, num_classes=ctx.num_classes,
                                       stats=stats, overlap=ctx.overlap)
        super().__init__(model, stats)
        self.column = self.stats_key = model.exchange.column_indices[0]
        self.dp_group = mesh.get_group("dp")
        (column,) = model.columns.values()
        self.layers = [(name, list(getattr(column, name).parameters())) for name in reversed(column.layer_names)]

    def after_backward(self) -> None:
        _allreduce_layers(self.layers, self.dp_group, self.stats, self.column)


class SingleReplica(Replica):
    """The whole single-device AlexNet; nothing crosses."""

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(AlexNet(ctx.num_classes).to(ctx.device), ExchangeStats())


class DataParallelReplica(Replica):
    """A whole AlexNet per rank on its part of the batch; gradients all-reduced per layer.

    An explicit all-reduce per layer, in the order backward finishes them (fc8 first, as
    DDP's buckets would), so each payload is timed and counted; the mean over ranks makes
    the step identical to one device on the whole batch. Every rank builds the weights
    from the same seed, which is what DDP's initial broadcast would give.
    """

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(AlexNet(ctx.num_classes).to(ctx.device), ExchangeStats(sync_cuda=ctx.device.type == "cuda"))
        self.ctx = ctx
        self.layers = [(name, [p for p in getattr(self.model, name).parameters()])
                       for name in reversed(self.model.layer_names)]

    def after_backward(self) -> None:
        _allreduce_layers(self.layers, self.ctx.group, self.stats, self.ctx.rank)


@dataclass(frozen=True, kw_only=True, slots=True)
class Strategy:
    """One way to place the net: its processes, its batch split and its analytic traffic."""

    name: str
    summary: str
    """One line for the table and ``--help``."""
    processes: int
    """Ranks (devices) it runs on."""
    batch_parts: int
    """The global batch is cut into this many equal parts, one per data-parallel replica."""
    ranks_per_part: int = 1
    """Ranks that share one part (the two columns of a hybrid replica)."""
    build: Callable[[RankContext], Replica] | None
    """Builds this rank's replica; None for a strategy that is announced but not built yet."""
    transfers: Callable[[int, int], list[analytic.Transfer]] = lambda batch, classes: []
    """Analytic transfers per step for (global batch, classes)."""
    coming: str = ""
    """Where a not-yet-available strategy will come from."""

    def threads(self, total: int) -> int:
        """Intra-op threads per process on CPU: ``total`` cores shared by the ranks."""
        return max(1, total // self.processes)

    def local_batch(self, batch_size: int) -> int:
        return batch_size // self.batch_parts

    def part(self, rank: int) -> int:
        """Which part of the global batch ``rank`` trains on."""
        return rank // self.ranks_per_part if self.batch_parts > 1 else 0


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy(name="paper", summary="the paper's two columns, one per device (model parallel)",
             processes=L.COLUMNS, batch_parts=1, build=PaperReplica,
             transfers=lambda b, c: analytic.paper_transfers(b, num_classes=c)),
    Strategy(name="single", summary="the whole net on one device",
             processes=1, batch_parts=1, build=SingleReplica),
    Strategy(name="data-parallel", summary="the whole net on each of 2 devices, half the batch each, "
                                           "gradients all-reduced",
             processes=2, batch_parts=2, build=DataParallelReplica,
             transfers=lambda b, c: analytic.data_parallel_transfers(2, num_classes=c)),
    Strategy(name="hybrid", summary="2 replicas of the paper's split on a ('dp', 'mp') = (2, 2) mesh",
             processes=2 * L.COLUMNS, batch_parts=2, ranks_per_part=L.COLUMNS, build=HybridReplica,
             transfers=lambda b, c: analytic.hybrid_transfers(b, 2, num_classes=c)),
)}
"""Every strategy the profiler knows, in the order the comparison lists them."""


def available() -> list[str]:
    return [n for n, s in STRATEGIES.items() if s.build is not None]


def get(name: str) -> Strategy:
    """The strategy called ``name``, or a :class:`UserError` naming what is accepted."""
    accepted = ", ".join(available())
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise UserError(f"Unknown strategy {name!r}; accepted: {accepted}.")
    if strategy.build is None:
        raise UserError(f"Strategy {name!r} ({strategy.summary}) is not available yet: {strategy.coming}. "
                        f"Accepted now: {accepted}.")
    return strategy
