"""One rank's measurements: real training steps, timed, then one step inspected.

The timed steps (after the warm-up ones) give the step, data, communication and compute
times and the traffic per exchange. One further step, not timed, is run under the
inspectors: ``FlopCounterMode`` for FLOPs, a saved-tensors hook for activation memory
(what autograd keeps from forward for backward, parameters excluded), and on CPU the
profiler's memory events for the tensors' peak. On CUDA the allocator's own peaks are read
over all measured steps instead.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..parallel import DIRECTIONS
from . import data
from .strategies import RankContext, Strategy

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
"""The paper's SGD (docs/paper.md)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSpec:
    """What every rank of every strategy runs: the same for all of them."""

    batch_size: int
    steps: int
    warmup: int
    data: str
    num_classes: int
    seed: int
    cpu_threads: int
    """Cores shared by a strategy's ranks on CPU (each rank gets its share)."""
    overlap: bool = False
    """Overlap the split's exchanges with compute (``paper`` and ``hybrid``)."""


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of a convolution's backward: one forward's worth per gradient asked for.

    torch 2.14's own formula counts a grouped convolution's weight gradient ``groups``
    times (it treats all input channels as seen by every kernel), which would inflate
    the single-device net (grouped conv2, conv4, conv5) against the split.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_rss_bytes() -> int:
    """This process's peak resident set size since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class SavedTensors:
    """Counts the distinct storages autograd saves for backward, except the parameters'."""

    def __init__(self, params) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in params}
        self.sizes: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.exclude:
            self.sizes[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def profiler_peak_delta(prof) -> int:
    """Highest rise of allocated CPU bytes over the profiled region, from its memory events."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak


class RankProfiler:
    """Trains one rank's replica for the spec's steps and returns what it measured."""

    def __init__(self, strategy: Strategy, ctx: RankContext, spec: RunSpec) -> None:
        self.strategy, self.ctx, self.spec = strategy, ctx, spec
        torch.manual_seed(spec.seed)  # data-parallel replicas start from the same weights
        self.replica = strategy.build(ctx)
        self.model = self.replica.model.train()
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        part = strategy.part(ctx.rank)
        self.batches = data.batches(spec.data, strategy.local_batch(spec.batch_size), device=ctx.device,
                                    num_classes=spec.num_classes, seed=spec.seed, part=part,
                                    parts=strategy.batch_parts)

    def step(self, after_backward=None) -> dict[str, float]:
        """One training step; returns its times. Ranks start it together (barrier not timed)."""
        device = self.ctx.device
        _sync(device)
        if self.ctx.world > 1:
            dist.barrier(group=self.ctx.group)
        start = time.perf_counter()
        comm_before = self.replica.comm_seconds()
        x, y = next(self.batches)
        _sync(device)
        data_s = time.perf_counter() - start
        loss = self.replica.loss(x, y)
        loss.backward()
        self.replica.after_backward()
        if after_backward is not None:
            after_backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        step_s = time.perf_counter() - start
        comm_s = self.replica.comm_seconds() - comm_before
        return {"step": step_s, "data": data_s, "communication": comm_s, "compute": step_s - data_s - comm_s}

    def run(self) -> dict:
        for _ in range(self.spec.warmup):
            self.step()
        cuda = self.ctx.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        self.replica.stats.reset()
        times = [self.step() for _ in range(self.spec.steps)]
        key = self.replica.stats_key if self.replica.stats_key is not None else self.ctx.rank
        traffic = self.replica.stats.as_dict().get(str(key), {})
        inspected = self.inspect(cuda)
        return {
            "rank": self.ctx.rank,
            "column": self.replica.column,
            "device": str(self.ctx.device),
            "threads": torch.get_num_threads() if not cuda else None,
            "batch": self.strategy.local_batch(self.spec.batch_size),
            "memory": inspected["memory"],
            "flops": inspected["flops"],
            "time": {k: statistics.median(t[k] for t in times) for k in times[0]} | {
                "steps": [t["step"] for t in times]},
            "traffic": {name: {d: {"bytes": per[d]["bytes"] // self.spec.steps,
                                   "calls": per[d]["calls"] // self.spec.steps,
                                   "seconds": per[d]["seconds"] / self.spec.steps,
                                   "hidden_seconds": per[d]["hidden_seconds"] / self.spec.steps,
                                   "exact_multiple": per[d]["bytes"] % self.spec.steps == 0}
                               for d in DIRECTIONS}
                        for name, per in traffic.items()},
        }

    def inspect(self, cuda: bool) -> dict:
        """One more step under the FLOP counter, the saved-tensors hook and (CPU) the profiler."""
        saved = SavedTensors(self.params)
        grads: list[int] = []
        resident = _nbytes(self.params) + self._optimizer_bytes() + _nbytes(self.model.buffers())
        flops = flop_counter()
        if cuda:
            prof_ctx = contextlib.nullcontext()
        else:
            prof_ctx = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        with prof_ctx as prof, flops, saved.hooks():
            self.step(after_backward=lambda: grads.append(_nbytes(p.grad for p in self.params if p.grad is not None)))
        memory = {
            "parameters": _nbytes(self.params),
            "gradients": grads[0],
            "optimizer_state": self._optimizer_bytes(),
            "activations": saved.bytes,
            "peak_rss": peak_rss_bytes(),
            "cuda_max_allocated": None,
            "cuda_max_reserved": None,
        }
        if cuda:
            memory["cuda_max_allocated"] = torch.cuda.max_memory_allocated(self.ctx.device)
            memory["cuda_max_reserved"] = torch.cuda.max_memory_reserved(self.ctx.device)
            memory["peak_tensors"] = memory["cuda_max_allocated"]
            memory["peak_source"] = "torch.cuda.max_memory_allocated"
        else:
            memory["peak_tensors"] = resident + profiler_peak_delta(prof)
            memory["peak_source"] = "resident tensors + torch.profiler memory events"
        return {"memory": memory, "flops": flops.get_total_flops()}

    def _optimizer_bytes(self) -> int:
        return _nbytes(t for state in self.optimizer.state.values() for t in state.values()
                       if isinstance(t, torch.Tensor))
