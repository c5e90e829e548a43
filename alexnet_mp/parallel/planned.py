"""A plan (:mod:`.plans`) placed on this worker: the whole network cut as the plan says, run by
the one :meth:`AlexNet.network`, its exchanges the mapping Functions (:mod:`.mappings`).

The whole network is built on every worker from the same seed and each layer is then cut: kept
whole (``replicated``: its weight passes :func:`~.mappings.copy_to_workers`, so backward sums its
gradient over the workers), narrowed along dim 0 (``outputs``) or dim 1 (``inputs``: its partial
products pass :func:`~.mappings.reduce_from_workers`, then the bias is added once). At each meeting
place of ``network()`` the plan's crossing, if any, brings the maps to what the next layer reads.
Dropout draws the whole layer's mask from the same generator state on every worker and applies
this worker's slice, so the masks are the single-device network's under the same seed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import layers as L
from ..errors import DistributedError
from ..model import AlexNet, run
from .mappings import copy_to_workers, gather_batch, gather_from_columns, gather_logits, reduce_from_workers
from .placements import Placement, Shard
from .plans import OPS, Crossing, Plan, crossings
from .stats import ExchangeStats, record_crossing

_EXCHANGE = {"gather": gather_from_columns, "batch": gather_batch, "reduce": reduce_from_workers,
             "copy": copy_to_workers, "grads": copy_to_workers}


class _Recorder:
    """Runs a crossing's Function on ``group`` and records it in ``stats`` under this worker's rank."""

    def __init__(self, group: dist.ProcessGroup, stats: ExchangeStats, rank: int, world: int) -> None:
        self.group, self.stats, self.rank, self.world = group, stats, rank, world

    def __call__(self, c: Crossing, x: torch.Tensor) -> torch.Tensor:
        fn = gather_logits if c.name == L.LOGITS else _EXCHANGE[c.kind]
        factor = {"gather": self.world - 1, "batch": self.world - 1}.get(c.kind, 1)
        ops = OPS[c.kind]
        return record_crossing(self.stats, self.rank, c.name, x, lambda t: fn(t, self.group),
                               factor if ops["forward"] else 0, factor if ops["backward"] else 0)


class _Replicated(nn.Module):
    """A whole layer on every worker, run on the worker's own samples; backward sums its gradients."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, crossing: Crossing, recorder: _Recorder) -> None:
        super().__init__()
        self.weight, self.bias = layer.weight, layer.bias
        self.conv = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups) \
            if isinstance(layer, nn.Conv2d) else None
        self.crossing, self.recorder = crossing, recorder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # view_as: a fresh non-leaf each step, so the recording hooks do not pile up on the parameter
        w, b = (self.recorder(self.crossing, p.view_as(p)) for p in (self.weight, self.bias))
        return F.conv2d(x, w, b, **self.conv) if self.conv is not None else F.linear(x, w, b)


class _ByInputs(nn.Module):
    """A fully connected layer split by inputs: this worker's slice of the inputs times its columns of
    the weight, the partial products summed over the workers, then the (replicated) bias."""

    def __init__(self, layer: nn.Linear, crossing: Crossing, recorder: _Recorder) -> None:
        super().__init__()
        self.weight, self.bias = layer.weight, layer.bias
        self.crossing, self.recorder = crossing, recorder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.recorder(self.crossing, F.linear(x, self.weight)) + self.bias


class WholeMaskDropout(nn.Module):
    """Dropout with the mask of the whole layer (``width`` features, every sample here), drawn as
    ``nn.Dropout`` draws it on the CPU (``bernoulli_(1 - p)`` then ``/ (1 - p)``); a worker holding a
    slice of the features applies its slice. Same generator state on every worker: same masks."""

    def __init__(self, p: float, width: int, rank: int) -> None:
        super().__init__()
        self.p, self.width, self.rank = p, width, rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty((x.shape[0], self.width), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        mask.div_(1 - self.p)
        if x.shape[1] != self.width:
            mask = mask.narrow(1, self.rank * x.shape[1], x.shape[1])
        return x * mask


def _narrow(t: torch.Tensor, dim: int, rank: int, world: int) -> nn.Parameter:
    size = t.shape[dim] // world
    return nn.Parameter(t.detach().narrow(dim, rank * size, size).clone())


def _cut(layer: nn.Conv2d | nn.Linear, placed: str, rank: int, world: int) -> dict[str, tuple[int, ...]]:
    """Narrow ``layer`` in place as ``placed`` says; the offsets of its weight and bias in the whole tensors."""
    zero = (0,) * layer.weight.dim()
    if placed == "replicated":
        return {"weight": zero, "bias": (0,)}
    if placed == "outputs":
        out = layer.weight.shape[0] // world * rank
        layer.weight, layer.bias = _narrow(layer.weight, 0, rank, world), _narrow(layer.bias, 0, rank, world)
        if isinstance(layer, nn.Conv2d):
            layer.out_channels = layer.weight.shape[0]
            if layer.groups > 1:  # grouped over the paper's columns: now one column's maps, densely
                layer.in_channels //= layer.groups
                layer.groups = 1
        else:
            layer.out_features = layer.weight.shape[0]
        return {"weight": (out, *zero[1:]), "bias": (out,)}
    start = layer.weight.shape[1] // world * rank
    layer.weight = _narrow(layer.weight, 1, rank, world)
    layer.in_features = layer.weight.shape[1]
    return {"weight": (0, start), "bias": (0,)}


class Planned(Placement):
    """This worker's share of ``plan`` over ``group``: ``forward(images)`` takes this worker's images
    (its part of the batch where the plan splits the batch, else the whole batch) and returns their
    logits, every class."""

    def __init__(self, net: AlexNet, plan: Plan, group: dist.ProcessGroup, device: torch.device | str,
                 stats: ExchangeStats | None = None) -> None:
        super().__init__()
        self.plan, self.group = plan, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.devices = [torch.device(device)]
        self.stats = stats if stats is not None else ExchangeStats()
        self.crossings = {c.name: c for c in crossings(plan, self.world, net.num_classes)}
        self._record = _Recorder(group, self.stats, self.rank, self.world)
        self.offsets: dict[str, tuple[int, ...]] = {}
        self.net = self._place(net).to(self.devices[0])

    def _place(self, net: AlexNet) -> AlexNet:
        for name, layer in net.weight_layers():
            placed = self.plan.of(name)
            for p, offsets in _cut(layer, placed, self.rank, self.world).items():
                self.offsets[f"{name}.{p}"] = offsets
            if placed == "replicated":
                setattr(net, name, _Replicated(layer, self.crossings[f"{name}.grad"], self._record))
            elif placed == "inputs":
                setattr(net, name, _ByInputs(layer, self.crossings[f"{name}.out"], self._record))
        if self.plan.of("conv1") == "outputs":
            net.lrn.groups = 1  # the paper's columns: LRN over this column's maps
            net.columns, net.index = 1, self.rank
        widths = {s.layer.out for s in net.shapes if s.layer.dropout}
        (width,) = widths  # fc6 and fc7 alike
        net.dropout = WholeMaskDropout(net.dropout.p, width, self.rank)
        return net

    def modules_held(self):
        return [(self.rank if self.plan.splits_convolutions else None, self.net)]

    def shards(self) -> list[Shard]:
        """Each parameter with its offsets in the whole network's tensor; of a replicated one (held
        whole by every worker, or a bias beside a weight split by inputs) only rank 0 is the writer."""
        out = []
        for n, p in self.net.named_parameters():
            replica = tuple(p.shape) == whole_shapes(self.net.num_classes)[n]
            half = self.world == L.COLUMNS and self.plan.of(n.split(".")[0]) == "outputs"  # the paper's column
            out.append(Shard(n, self.rank if half else None, p, offsets=self.offsets[n],
                             writer=not replica or self.rank == 0))
        return out

    def whole(self, of=lambda p: p) -> dict[str, torch.Tensor]:
        raise ValueError("a worker of a plan holds part of the network: assemble every worker's writer shards "
                         "with alexnet_mp.parallel.planned.assemble")

    def own(self, of=lambda p: p) -> dict[int | None, dict[str, torch.Tensor]]:
        """``of(parameter)`` for every parameter held here, on the CPU, under this worker's column
        (None where the convolutions are whole)."""
        return {self.modules_held()[0][0]: {s.name: of(s.param).detach().cpu() for s in self.shards()}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = run(self.net.network(x.to(self.devices[0], non_blocking=True)), self._meet)
        if self.plan.splits_batch:  # every worker's samples went through fc6-fc8: keep this worker's
            logits = logits.narrow(0, self.rank * x.shape[0], x.shape[0])
        return logits

    def _meet(self, name: str, maps: torch.Tensor) -> torch.Tensor:
        c = self.crossings.get(name)
        return maps if c is None else self._record(c, maps)


_SHAPES: dict[int, dict[str, tuple[int, ...]]] = {}


def whole_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """The single-device network's parameter shapes."""
    if num_classes not in _SHAPES:
        with torch.device("meta"):
            _SHAPES[num_classes] = {k: tuple(v.shape) for k, v in AlexNet(num_classes).state_dict().items()}
    return _SHAPES[num_classes]


def place_plan(net: AlexNet, plan: Plan, group: dist.ProcessGroup | None, device: torch.device | str,
               stats: ExchangeStats | None = None) -> Planned:
    """This rank's share of the whole network ``net`` under ``plan`` (the rank in ``group`` is the worker)."""
    if group is None or not dist.is_initialized():
        raise DistributedError(f"Plan {plan.name!r} needs a process group of its workers (torchrun, or "
                               "alexnet-mp's own workers); none is initialised.")
    world = dist.get_world_size(group)
    why = plan.workers_allowed(world, net.num_classes)
    if why:
        raise DistributedError(f"Plan {plan.name!r} cannot run on {world} workers: {why}. "
                               f"Run it with another number of processes (torchrun --nproc_per_node).")
    return Planned(net, plan, group, device, stats)


def assemble(parts: list[tuple[str, tuple[int, ...], torch.Tensor]], num_classes: int) -> dict[str, torch.Tensor]:
    """The whole network's tensors from every writer's (name, offsets, tensor); each element must be
    written exactly once, or a ``ValueError`` names the tensor."""
    shapes = whole_shapes(num_classes)
    whole = {n: torch.zeros(shape, dtype=torch.float64) for n, shape in shapes.items()}
    count = {n: torch.zeros(shape, dtype=torch.int32) for n, shape in shapes.items()}
    for name, offsets, tensor in parts:
        shard = Shard(name, None, tensor, offsets=offsets)
        shard.of(whole[name]).copy_(tensor)
        shard.of(count[name]).add_(1)
    for name, c in count.items():
        if not bool((c == 1).all()):
            raise ValueError(f"{name}: the parts cover {int((c == 0).sum())} elements 0 times and "
                             f"{int((c > 1).sum())} more than once")
    return whole
