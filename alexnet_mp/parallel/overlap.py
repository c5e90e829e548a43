"""Exchanges overlapped with compute: conv3 and fc6-fc8 computed while their input travels.

``place_column(..., overlap=True)`` swaps each of those layers for an :class:`Overlapped`
module taking only this column's own part: it starts the all-gather, computes the layer on
the own part, and adds the other parts as they arrive; in backward the input gradient's
reduce-scatter travels while the weight gradient is computed. The same collectives and bytes
as the plain gather, with the time hidden behind compute recorded beside the time waited.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .mappings import all_gather_dim0, gather_buffer, reduce_scatter_dim0, scatter_buffer, side_by_side, stacked
from .stats import ExchangeStats, nbytes


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
    :func:`~.mappings.gather_from_columns`; the weight gradient is one op over the whole input, so nothing
    weight-sized is materialised per part.
    """

    @staticmethod
    def forward(ctx, own, weight, bias, pending: _Pending, conv):
        group = pending.group
        world, c = dist.get_world_size(group), dist.get_rank(group)
        own = own.contiguous()
        gathered = gather_buffer(own, world)
        pending.start(all_gather_dim0(gathered, own, group=group, async_op=True), gathered)
        width, sent = own.shape[1], nbytes(own) * (world - 1)

        def part(x, j, b):
            w = weight.narrow(1, j * width, width)
            return F.conv2d(x, w, b, *conv) if conv else F.linear(x, w, b)

        out = part(own, c, bias)
        parts = pending.wait("forward", sent).chunk(world, dim=0)
        for j in range(world):
            if j != c:
                out = out.add_(part(parts[j], j, None))
        ctx.save_for_backward(side_by_side(gathered, world), weight)
        ctx.pending, ctx.conv, ctx.world, ctx.has_bias, ctx.nbytes = pending, conv, world, bias is not None, sent
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
        own_grad, grads = scatter_buffer(grad_in, world), stacked(grad_in, world)  # alive until the wait
        pending.start(reduce_scatter_dim0(own_grad, grads, op=dist.ReduceOp.SUM, group=pending.group,
                                      async_op=True), own_grad)
        if conv:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(g, *args, (False, True, ctx.has_bias))
        else:
            grad_w = g.t() @ full.to(g.dtype)
            grad_b = g.sum(0) if ctx.has_bias else None
        grad_w = grad_w.to(weight.dtype)
        grad_b = grad_b.to(weight.dtype) if grad_b is not None else None
        return pending.wait("backward", ctx.nbytes), grad_w, grad_b, None, None


class Overlapped(nn.Module):
    """``layer`` (conv3 or fc6-fc8) applied to the gathered input of exchange ``name``, taking this
    column's own part and overlapping the exchange with compute both ways. It holds the layer's
    own parameters under the same names, so state dicts and optimizers do not change."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, name: str, group: dist.ProcessGroup, stats: ExchangeStats,
                 column: int) -> None:
        super().__init__()
        self.weight, self.bias = layer.weight, layer.bias
        self.conv = (layer.stride, layer.padding) if isinstance(layer, nn.Conv2d) else None
        self.name, self.group, self.stats, self.column = name, group, stats, column

    def forward(self, own: torch.Tensor) -> torch.Tensor:
        pending = _Pending(self.group, self.stats, self.column, self.name)
        return _OverlappedLayer.apply(own, self.weight, self.bias, pending, self.conv)

    def extra_repr(self) -> str:
        return f"{self.name}: {tuple(self.weight.shape)}, exchange overlapped with compute"
