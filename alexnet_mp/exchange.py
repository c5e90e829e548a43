"""Every crossing between the columns, and the record of what crossed.

Each exchange is one autograd Function whose backward is the dual collective (Megatron's
``mappings.py`` pattern): the next layer on every column multiplies *all* the gathered
inputs by *its own* output kernels, so the gradient each column gets for the gathered
tensor is partial — all-gather forward, reduce-scatter backward.

Two implementations of the same contract:

* :class:`ProcessGroupExchange` — one column per process, collectives on a
  ``torch.distributed`` process group (NCCL on CUDA, gloo on CPU). The group is passed in,
  so it can be a device mesh's ``"mp"`` sub-group.
* :class:`LocalExchange` — every column in this process (on two devices, or both on one),
  where an exchange is a copy between devices.

Both record the same figures in :class:`ExchangeStats`: per column, per exchange and per
direction, the bytes it sent to the other columns, the number of calls and the seconds.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import DistributedError
from .layers import COLUMNS

DIRECTIONS = ("forward", "backward")

# torch 2.14 renamed the tensor collectives; the old names remain as deprecated aliases.
all_gather_dim0 = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
"""``all_gather_into_tensor`` under its current name: the world stacked into dim 0."""
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(slots=True)
class Traffic:
    """What one column sent in one direction of one exchange."""

    bytes: int = 0
    calls: int = 0
    seconds: float = 0.0
    """Time the column spent waiting for the exchange."""
    hidden_seconds: float = 0.0
    """Time the exchange was in flight while the column computed (overlapped exchanges only)."""


@dataclass(slots=True)
class ExchangeStats:
    """Bytes, calls and seconds per column, exchange and direction since the last reset.

    The profiler and TensorBoard read this object; ``layers.exchange_bytes`` gives the
    analytic figure each entry must equal.
    """

    sync_cuda: bool = False
    """Synchronise CUDA around each exchange so ``seconds`` is the transfer, not the launch."""
    records: dict = field(default_factory=dict)

    def record(self, column: int, name: str, direction: str, nbytes: int, seconds: float,
               hidden: float = 0.0) -> None:
        t = self.records.setdefault(column, {}).setdefault(name, {d: Traffic() for d in DIRECTIONS})[direction]
        t.bytes += nbytes
        t.calls += 1
        t.seconds += seconds
        t.hidden_seconds += hidden

    def reset(self) -> None:
        self.records.clear()

    def columns(self) -> list[int]:
        return sorted(self.records)

    def bytes(self, column: int, direction: str) -> dict[str, int]:
        """Bytes sent by ``column`` per exchange in one direction."""
        return {name: t[direction].bytes for name, t in self.records.get(column, {}).items()}

    def total_bytes(self, column: int | None = None) -> int:
        cols = self.columns() if column is None else [column]
        return sum(t[d].bytes for c in cols for t in self.records.get(c, {}).values() for d in DIRECTIONS)

    def as_dict(self) -> dict:
        """``{column: {exchange: {direction: {bytes, calls, seconds}}}}`` with string keys for JSON."""
        return {str(c): {n: {d: asdict(t[d]) for d in DIRECTIONS} for n, t in per.items()}
                for c, per in sorted(self.records.items())}


class _Timer:
    def __init__(self, stats: ExchangeStats, tensors: Sequence[torch.Tensor]) -> None:
        self.sync = stats.sync_cuda and any(t.is_cuda for t in tensors)

    def __enter__(self) -> "_Timer":
        if self.sync:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# gloo and NCCL want the world stacked into dim 0, (W*B, C, ...); the layers want the columns'
# parts side by side in dim 1, (B, W*C, ...). These convert, and make the buffers.

def _gather_buffer(part: torch.Tensor, world: int) -> torch.Tensor:
    return part.new_empty((world * part.shape[0], *part.shape[1:]))


def _side_by_side(stacked: torch.Tensor, world: int) -> torch.Tensor:
    return torch.cat(stacked.chunk(world, dim=0), dim=1)


def _stacked(full: torch.Tensor, world: int) -> torch.Tensor:
    return torch.cat(full.chunk(world, dim=1), dim=0).contiguous()


def _scatter_buffer(full: torch.Tensor, world: int) -> torch.Tensor:
    return full.new_empty((full.shape[0], full.shape[1] // world, *full.shape[2:]))


class Exchange(ABC):
    """How the columns held by this process reach the others."""

    stats: ExchangeStats
    column_indices: list[int]
    """Indices of the columns this process holds, in order."""
    devices: list[torch.device]
    """The device of each held column."""

    def scatter_input(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The whole input batch on each held column's device (both columns see it all)."""
        return [x.to(d, non_blocking=True) for d in self.devices]

    @abstractmethod
    def gather(self, name: str, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """All-gather along dim 1 (channels or features), reduce-scatter in backward."""

    @abstractmethod
    def output(self, fulls: list[torch.Tensor]) -> torch.Tensor:
        """One logits tensor for the loss from each column's identical gathered copy."""


# --- across processes ------------------------------------------------------------------

class _AllGather(torch.autograd.Function):
    """All-gather along dim 1 forward; reduce-scatter of the partial gradient backward."""

    @staticmethod
    def forward(ctx, x, group, stats, column, name):
        ctx.group, ctx.stats, ctx.column, ctx.name = group, stats, column, name
        world = dist.get_world_size(group)
        x = x.contiguous()
        stacked = _gather_buffer(x, world)
        with _Timer(stats, [x]) as t:
            all_gather_dim0(stacked, x, group=group)
        stats.record(column, name, "forward", _nbytes(x) * (world - 1), t.seconds)
        return _side_by_side(stacked, world)

    @staticmethod
    def backward(ctx, grad):
        world = dist.get_world_size(ctx.group)
        stacked = _stacked(grad, world)
        out = _scatter_buffer(grad, world)
        with _Timer(ctx.stats, [grad]) as t:
            _reduce_scatter(out, stacked, op=dist.ReduceOp.SUM, group=ctx.group)
        ctx.stats.record(ctx.column, ctx.name, "backward", _nbytes(out) * (world - 1), t.seconds)
        return out, None, None, None, None


class _Pending:
    """An all-gather (forward) or reduce-scatter (backward) in flight behind compute."""

    def __init__(self, group, stats: ExchangeStats, column: int, name: str) -> None:
        self.group, self.stats, self.column, self.name = group, stats, column, name
        self.work = self.started = self.result = None

    def start(self, work, result) -> None:
        self.work, self.result, self.started = work, result, time.perf_counter()

    def wait(self, direction: str, nbytes: int) -> torch.Tensor:
        blocked = time.perf_counter()
        self.work.wait()
        end = time.perf_counter()
        self.stats.record(self.column, self.name, direction, nbytes, end - blocked, hidden=blocked - self.started)
        return self.result


class _OverlappedLayer(torch.autograd.Function):
    """A layer over the gathered input (conv3, fc6-fc8), computed while the exchange is in flight.

    Forward: start the all-gather, apply the layer to this column's own part (its slice of
    the weight's input dim, plus the bias), wait, then add the other parts. Backward: the
    input gradient first, whose reduce-scatter is started at once; the weight and bias
    gradients are computed while it travels. The same collectives and bytes as
    :class:`_AllGather`; the weight gradient is one op over the whole input, so nothing
    weight-sized is materialised per part.
    """

    @staticmethod
    def forward(ctx, own, weight, bias, pending: _Pending, conv):
        group = pending.group
        world, c = dist.get_world_size(group), dist.get_rank(group)
        own = own.contiguous()
        stacked = _gather_buffer(own, world)
        pending.start(all_gather_dim0(stacked, own, group=group, async_op=True), stacked)
        width, nbytes = own.shape[1], _nbytes(own) * (world - 1)

        def part(x, j, b):
            w = weight.narrow(1, j * width, width)
            return F.conv2d(x, w, b, *conv) if conv else F.linear(x, w, b)

        out = part(own, c, bias)
        parts = pending.wait("forward", nbytes).chunk(world, dim=0)
        for j in range(world):
            if j != c:
                out = out.add_(part(parts[j], j, None))
        ctx.save_for_backward(_side_by_side(stacked, world), weight)
        ctx.pending, ctx.conv, ctx.world, ctx.has_bias, ctx.nbytes = pending, conv, world, bias is not None, nbytes
        return out

    @staticmethod
    def backward(ctx, g):
        full, weight = ctx.saved_tensors
        pending, world, conv = ctx.pending, ctx.world, ctx.conv
        w = weight.to(g.dtype)  # under autocast the layer ran in the compute dtype
        if conv:
            args = (full.to(g.dtype), w, [w.shape[0]] if ctx.has_bias else None, conv[0], conv[1], (1, 1),
                    False, (0, 0), 1)
            grad_in = torch.ops.aten.convolution_backward(g, *args, (True, False, False))[0]
        else:
            grad_in = g @ w
        own_grad, stacked = _scatter_buffer(grad_in, world), _stacked(grad_in, world)  # alive until the wait
        pending.start(_reduce_scatter(own_grad, stacked, op=dist.ReduceOp.SUM, group=pending.group,
                                      async_op=True), own_grad)
        if conv:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(g, *args, (False, True, ctx.has_bias))
        else:
            grad_w = g.t() @ full.to(g.dtype)
            grad_b = g.sum(0) if ctx.has_bias else None
        grad_w = grad_w.to(weight.dtype)
        grad_b = grad_b.to(weight.dtype) if grad_b is not None else None
        return pending.wait("backward", ctx.nbytes), grad_w, grad_b, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class ProcessGroupExchange(Exchange):
    """One column in this process; the other column is the other rank of ``group``."""

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device,
                 stats: ExchangeStats | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized() or group is None:
            raise DistributedError(
                "The split across processes needs a process group of 2 ranks, one per column, "
                "and none was given (torch.distributed is "
                f"{'initialised' if dist.is_available() and dist.is_initialized() else 'not initialised'}). "
                "Call torch.distributed.init_process_group (torchrun does the rendezvous) and pass "
                "the group — dist.group.WORLD for two processes, or a device mesh's 'mp' sub-group — "
                "or hold both columns in one process with split_in_one_process()."
            )
        size = dist.get_world_size(group)
        if size != COLUMNS:
            raise DistributedError(
                f"The split needs a model-parallel process group of exactly {COLUMNS} ranks, one per "
                f"column; the group given has {size}. Run with torchrun --nproc_per_node={COLUMNS}, "
                f"or pass a sub-group of {COLUMNS} ranks (a device mesh's 'mp' dimension) when the "
                "world is larger."
            )
        self.group = group
        self.stats = stats if stats is not None else ExchangeStats()
        self.column_indices = [dist.get_rank(group)]
        self.devices = [torch.device(device)]

    def gather(self, name, parts):
        (x,) = parts
        return [_AllGather.apply(x, self.group, self.stats, self.column_indices[0], name)]

    def overlapped(self, name: str, own: torch.Tensor, layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
        """``layer`` applied to the gathered input of exchange ``name``, with the exchange
        overlapped by compute both ways (see :class:`_OverlappedLayer`)."""
        pending = _Pending(self.group, self.stats, self.column_indices[0], name)
        conv = (layer.stride, layer.padding) if isinstance(layer, nn.Conv2d) else None
        return _OverlappedLayer.apply(own, layer.weight, layer.bias, pending, conv)

    def output(self, fulls):
        # Every rank computes the same loss from its copy; each backward would add the
        # whole gradient, so each copy carries 1/W of it into the reduce-scatter.
        (full,) = fulls
        return _ScaleGrad.apply(full, 1.0 / dist.get_world_size(self.group))


# --- within one process ----------------------------------------------------------------

class _LocalAllGather(torch.autograd.Function):
    """Every column gets the concatenation of all parts on its own device; backward sums."""

    @staticmethod
    def forward(ctx, stats, name, columns, devices, *parts):
        ctx.stats, ctx.name, ctx.columns, ctx.devices = stats, name, columns, devices
        ctx.widths = [p.shape[1] for p in parts]
        fulls = []
        with _Timer(stats, parts) as t:
            for dev in devices:
                fulls.append(torch.cat([p.to(dev) for p in parts], dim=1))
        for c, p in zip(columns, parts):
            stats.record(c, name, "forward", _nbytes(p) * (len(parts) - 1), t.seconds / len(parts))
        return tuple(fulls)

    @staticmethod
    def backward(ctx, *grads):
        # Autograd materialises the gradient of an unused copy as zeros, so none is None.
        offsets = [sum(ctx.widths[:i]) for i in range(len(ctx.widths))]
        with _Timer(ctx.stats, grads) as t:
            grad_parts = [
                sum(g.narrow(1, offsets[i], ctx.widths[i]).to(dev) for g in grads)
                for i, dev in enumerate(ctx.devices)
            ]
        for j, (c, g) in enumerate(zip(ctx.columns, grads)):
            # Column j sends every other column its slice of j's partial gradient.
            per_channel = _nbytes(g) // g.shape[1]
            sent = sum(per_channel * w for i, w in enumerate(ctx.widths) if i != j)
            ctx.stats.record(c, ctx.name, "backward", sent, t.seconds / len(grads))
        return (None, None, None, None, *grad_parts)


class LocalExchange(Exchange):
    """Every column in this process, each on its own device (or all on one)."""

    def __init__(self, devices: Sequence[torch.device | str], stats: ExchangeStats | None = None) -> None:
        if len(devices) != COLUMNS:
            raise DistributedError(
                f"One process holding the whole split needs {COLUMNS} devices, one per column "
                f"(the same device twice is fine); got {len(devices)}: {list(devices)}."
            )
        self.devices = [torch.device(d) for d in devices]
        self.column_indices = list(range(COLUMNS))
        self.stats = stats if stats is not None else ExchangeStats()

    def gather(self, name, parts):
        return list(_LocalAllGather.apply(self.stats, name, self.column_indices, self.devices, *parts))

    def output(self, fulls):
        # The same contract as across processes: each column's identical copy carries 1/W of
        # the loss. (a + a) / 2 == a exactly, so the value is untouched.
        first = self.devices[0]
        return sum(f.to(first) for f in fulls) / len(fulls)
