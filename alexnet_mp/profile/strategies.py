"""The ways to place AlexNet on devices that the profiler runs, one registry entry each.

A :class:`Strategy` says how many processes it needs, how it splits the batch, and builds
a :class:`Replica` on each rank: the model, the loss, what runs after backward (the
data-parallel all-reduce) and the record of what crossed. A new strategy is one more
entry in ``STRATEGIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import layers as L
from ..errors import ConfigError, UserError
from ..model import AlexNet
from ..parallel import ExchangeStats, place_column, place_on_device, plans
from ..parallel.planned import place_plan
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
        model = place_column(AlexNet(ctx.num_classes), ctx.group, ctx.device, stats, overlap=ctx.overlap)
        super().__init__(model, stats)
        self.column = model.column.index


def _data_parallel(placement, group: dist.ProcessGroup, stats: ExchangeStats, key: int) -> nn.Module:
    """``placement`` under DDP on ``group``, every gradient bucket's all-reduce recorded per layer.

    DDP is the one gradient sync, as in training; its comm hook times each bucket and splits
    the bytes among the layers whose gradients the bucket holds (``conv1.grad`` ...)."""
    from torch.nn.parallel import DistributedDataParallel

    device = placement.devices[0]
    layer_of = {id(sh.param): sh.name.split(".")[0] for sh in placement.shards()}
    ddp = DistributedDataParallel(placement, process_group=group, broadcast_buffers=False,
                                  device_ids=[device.index] if device.type == "cuda" else None)
    ddp.register_comm_hook((group, stats, key, layer_of), _recorded_allreduce)
    return ddp


def _recorded_allreduce(state, bucket):
    group, stats, key, layer_of = state
    buffer = bucket.buffer()
    params = bucket.parameters()
    start = stats.clock([buffer])
    work = dist.all_reduce(buffer.div_(dist.get_world_size(group)), group=group, async_op=True)

    def done(fut):
        seconds = stats.clock([buffer]) - start
        total = sum(p.numel() for p in params)
        for p in params:
            stats.record(key, f"{layer_of[id(p)]}.grad", "backward", p.numel() * buffer.element_size(),
                         seconds * p.numel() / total)
        return fut.value()[0]

    return work.get_future().then(done)


class HybridReplica(Replica):
    """One column of one replica on a (dp, mp) = (W/2, 2) mesh: the paper's exchanges on
    the pair, and this column's gradients averaged over its replicas by DDP (docs/scaling.md).

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
        column = place_column(AlexNet(ctx.num_classes), mesh.get_group("mp"), ctx.device, stats, overlap=ctx.overlap)
        self.column = self.stats_key = column.column.index
        super().__init__(_data_parallel(column, mesh.get_group("dp"), stats, self.column), stats)


class SingleReplica(Replica):
    """The whole single-device AlexNet; nothing crosses."""

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(place_on_device(AlexNet(ctx.num_classes), ctx.device), ExchangeStats())


class DataParallelReplica(Replica):
    """A whole AlexNet per rank on its part of the batch; gradients averaged by DDP.

    Every rank builds the weights from the same seed, which is what DDP's initial broadcast
    gives; the mean over ranks makes the step identical to one device on the whole batch."""

    def __init__(self, ctx: RankContext) -> None:
        stats = ExchangeStats(sync_cuda=ctx.device.type == "cuda")
        whole = place_on_device(AlexNet(ctx.num_classes), ctx.device)
        super().__init__(_data_parallel(whole, ctx.group, stats, ctx.rank), stats)


class PlanReplica(Replica):
    """One worker of a plan (:mod:`alexnet_mp.parallel.plans`): the 2014 scheme or the Megatron pairing."""

    def __init__(self, ctx: RankContext, plan: str) -> None:
        stats = ExchangeStats(sync_cuda=ctx.device.type == "cuda")
        model = place_plan(AlexNet(ctx.num_classes), plans.get(plan), ctx.group, ctx.device, stats)
        super().__init__(model, stats)
        self.column = model.modules_held()[0][0]


def _plan_strategy(plan: str, workers: int, name: str | None = None) -> "Strategy":
    p = plans.get(plan)
    return Strategy(name=name or plan, summary=f"{p.summary}, {workers} workers", processes=workers,
                    batch_parts=workers if p.splits_batch else 1, build=lambda ctx: PlanReplica(ctx, plan),
                    transfers=lambda b, c: analytic.plan_transfers(plan, b, workers, num_classes=c), plan=plan)


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
    plan: str | None = None
    """The plan (:mod:`alexnet_mp.parallel.plans`) it runs, for the plans other than the paper's."""

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
    _plan_strategy("one-weird-trick", 2),
    _plan_strategy("megatron", 2),
    Strategy(name="data-parallel-4", summary="the whole net on each of 4 devices, a quarter of the batch each, "
                                             "gradients all-reduced",
             processes=4, batch_parts=4, build=DataParallelReplica,
             transfers=lambda b, c: analytic.data_parallel_transfers(4, num_classes=c)),
    _plan_strategy("one-weird-trick", 4, "one-weird-trick-4"),
)}
"""Every strategy the profiler knows, in the order the comparison lists them."""


def available() -> list[str]:
    return [n for n, s in STRATEGIES.items() if s.build is not None]


def get(name: str) -> Strategy:
    """The strategy called ``name``, or a :class:`ConfigError` naming what is accepted."""
    accepted = ", ".join(available())
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise ConfigError(f"--strategy {name!r} is not accepted: one of {accepted}.")
    if strategy.build is None:
        raise ConfigError(f"--strategy {name!r} ({strategy.summary}) is not available yet: {strategy.coming}. "
                          f"Accepted now: {accepted}.")
    return strategy


def device_memory(strategy: str, batch_size: int, *, num_classes: int = 1000,
                  element_size: int = 4) -> list[dict[str, int]]:
    """Bytes each device of ``strategy`` holds, from the layer table, one dict per rank.

    ``parameters``, ``gradients`` and ``optimizer_state`` (SGD's momentum) are exact: a
    column's share of the net on a device that holds one column (``paper``, ``hybrid``), the
    whole net otherwise. ``layer_outputs`` is the device's share of every layer's output at its
    batch (:func:`~alexnet_mp.profile.analytic.layer_output_floats`) — a lower bound on the
    activations backward keeps (the profiler measures those: ReLU and LRN intermediates come on top).
    """
    s = get(strategy)
    if s.plan is not None:
        return [analytic.plan_memory(s.plan, batch_size, s.processes, num_classes=num_classes,
                                     element_size=element_size) for _ in range(s.processes)]
    devices_per_replica = s.processes // s.batch_parts  # 2 for the split's columns, 1 for a whole net
    params = (L.total_params(num_classes) if devices_per_replica == 1 else L.column_params(num_classes))
    outputs = analytic.layer_output_floats(num_classes) // devices_per_replica * s.local_batch(batch_size)
    one = {"parameters": params * element_size, "gradients": params * element_size,
           "optimizer_state": params * element_size, "layer_outputs": outputs * element_size}
    return [dict(one) for _ in range(s.processes)]
