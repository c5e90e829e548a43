"""Every crossing between the columns, as an autograd Function whose backward is its dual.

Megatron's ``mappings.py`` pattern, with channel/feature gathers on dim 1: a layer that sees
both columns multiplies *all* the gathered maps by *its own* output kernels, so the gradient
each column computes for the gathered tensor is partial — all-gather forward, reduce-scatter
backward. The logits, gathered so that every column computes the same loss, pass 1/W of
their gradient each, or the reduce-scatter would add W copies of it.

The other plans (:mod:`.plans`) add the rest of Megatron's set: the batch gathered along dim 0
(the 2014 scheme's exchange before fc6, reduce-scatter backward), all-reduce forward with identity
backward (a layer split by inputs) and identity forward with all-reduce backward (a tensor every
worker holds whole whose users each give back part of its gradient: a replicated weight, or the
input of a layer split by outputs after an all-reduce).

Across processes the Functions take ``(input_, group)`` and nothing else; within one process
(every column held here, on its own device or all on one) a gather is a copy between
devices. What crossed is recorded around them (:mod:`.stats`), not inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

# torch 2.14 renamed the tensor collectives; the old names remain as deprecated aliases.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def needs_host_staging(t: torch.Tensor, group: dist.ProcessGroup | None) -> bool:
    """gloo all-reduces and broadcasts CUDA tensors but neither all-gathers nor reduce-scatters
    them: with gloo on a GPU (two ranks sharing one, where NCCL refuses) those go through host memory."""
    return t.device.type != "cpu" and dist.get_backend(group) == "gloo"


class _Done:
    """The handle of a collective that already finished (``async_op=True`` on a staged one)."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def _run(collective, out: torch.Tensor, input_: torch.Tensor, group, async_op: bool, **kwargs):
    """``collective(out, input_)`` as asked, or, where :func:`needs_host_staging`, on host copies
    (synchronously; an ``async_op`` caller gets a finished handle) with the result copied back."""
    if not needs_host_staging(input_, group):
        return collective(out, input_, group=group, async_op=async_op, **kwargs)
    host = torch.empty(out.shape, dtype=out.dtype)
    collective(host, input_.cpu(), group=group, **kwargs)
    out.copy_(host)
    return _Done() if async_op else None


def all_gather_dim0(out: torch.Tensor, input_: torch.Tensor, *, group=None, async_op: bool = False):
    """``all_gather_into_tensor``: the world stacked into dim 0."""
    return _run(_all_gather, out, input_, group, async_op)


def reduce_scatter_dim0(out: torch.Tensor, input_: torch.Tensor, *, op=dist.ReduceOp.SUM, group=None,
                        async_op: bool = False):
    """``reduce_scatter_tensor`` of dim 0."""
    return _run(_reduce_scatter, out, input_, group, async_op, op=op)


# gloo and NCCL want the world stacked into dim 0, (W*B, C, ...); the layers want the columns'
# parts side by side in dim 1, (B, W*C, ...). These convert, and make the buffers.

def gather_buffer(part: torch.Tensor, world: int) -> torch.Tensor:
    return part.new_empty((world * part.shape[0], *part.shape[1:]))


def side_by_side(stacked: torch.Tensor, world: int) -> torch.Tensor:
    return torch.cat(stacked.chunk(world, dim=0), dim=1)


def stacked(full: torch.Tensor, world: int) -> torch.Tensor:
    return torch.cat(full.chunk(world, dim=1), dim=0).contiguous()


def scatter_buffer(full: torch.Tensor, world: int) -> torch.Tensor:
    return full.new_empty((full.shape[0], full.shape[1] // world, *full.shape[2:]))


class _GatherFromColumns(torch.autograd.Function):
    """All-gather along dim 1 forward; reduce-scatter of the partial gradient backward."""

    @staticmethod
    def forward(ctx, input_: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        out = gather_buffer(input_, world)
        all_gather_dim0(out, input_.contiguous(), group=group)
        return side_by_side(out, world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = dist.get_world_size(ctx.group)
        out = scatter_buffer(grad, world)
        reduce_scatter_dim0(out, stacked(grad, world), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, input_: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return input_.view_as(input_)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def gather_from_columns(input_: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every column's maps side by side on every column; the identity for a group of one."""
    if group is None or dist.get_world_size(group) == 1:
        return input_
    return _GatherFromColumns.apply(input_, group)


def gather_logits(input_: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """All the logits on every column, each copy carrying 1/W of the loss's gradient."""
    if group is None or dist.get_world_size(group) == 1:
        return input_
    return _ScaleGradient.apply(gather_from_columns(input_, group), 1.0 / dist.get_world_size(group))


class _GatherBatch(torch.autograd.Function):
    """All-gather of the batch (dim 0) forward; reduce-scatter of the partial gradient backward
    (every worker's slice of the next layer used every sample)."""

    @staticmethod
    def forward(ctx, input_: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = gather_buffer(input_, dist.get_world_size(group))
        all_gather_dim0(out, input_.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = dist.get_world_size(ctx.group)
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        reduce_scatter_dim0(out, grad.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


class _ReduceFromWorkers(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward: the output of a layer split by inputs."""

    @staticmethod
    def forward(ctx, input_: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        out = input_.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _CopyToWorkers(torch.autograd.Function):
    """Identity forward; all-reduce (sum) backward: a tensor every worker holds whole whose users
    each give back a partial gradient (a layer split by outputs, a replicated weight)."""

    @staticmethod
    def forward(ctx, input_: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return input_.view_as(input_)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def _single(group: dist.ProcessGroup | None) -> bool:
    return group is None or dist.get_world_size(group) == 1


def gather_batch(input_: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every worker's samples stacked in rank order on every worker; the identity for a group of one."""
    return input_ if _single(group) else _GatherBatch.apply(input_, group)


def reduce_from_workers(input_: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The sum of every worker's partial tensor on every worker."""
    return input_ if _single(group) else _ReduceFromWorkers.apply(input_, group)


def copy_to_workers(input_: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``input_`` itself, its gradient summed over the workers in backward."""
    return input_ if _single(group) else _CopyToWorkers.apply(input_, group)


class _GatherOnDevices(torch.autograd.Function):
    """Within one process: every part concatenated on every part's device; backward, each
    part's slice of every copy's gradient, summed on the part's own device."""

    @staticmethod
    def forward(ctx, devices: Sequence[torch.device], *parts: torch.Tensor):
        ctx.devices, ctx.widths = devices, [p.shape[1] for p in parts]
        return tuple(torch.cat([p.to(d) for p in parts], dim=1) for d in devices)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        # Autograd materialises the gradient of an unused copy as zeros, so none is None.
        slices = [g.split(ctx.widths, dim=1) for g in grads]
        return (None, *[sum(s[i].to(d) for s in slices) for i, d in enumerate(ctx.devices)])


def gather_on_devices(parts: Sequence[torch.Tensor], devices: Sequence[torch.device]) -> tuple[torch.Tensor, ...]:
    """Every column's maps side by side, a copy on each column's device."""
    return _GatherOnDevices.apply(list(devices), *parts)


def mean_of_copies(copies: Sequence[torch.Tensor]) -> torch.Tensor:
    """The logits for the loss from every column's identical copy: each carries 1/W of the
    gradient, the same contract as across processes ((a + a) / 2 == a exactly)."""
    first = copies[0].device
    return sum(c.to(first) for c in copies) / len(copies)
