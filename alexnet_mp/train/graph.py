"""``[training] cuda_graph``: the trainer's whole step — forward, loss, backward, update — as one CUDA graph.

At batch 128 an AlexNet step on a modern GPU is a few milliseconds of a few hundred kernels,
with gaps while Python launches the next; replaying a captured step removes the launches and
the gaps (measured with ``benchmarks/step.py``: docs/benchmarks.md). :class:`StepGraph` holds the
capture and decides, step by step, whether the graph can run it:

* **Warm-up.** The first :data:`WARMUP_STEPS` steps after a start or resume run eagerly on a
  side stream (cuDNN autotuning, lazy allocations, the optimizer's momentum buffers) — real
  steps, so nothing has to be put back.
* **Learning rate.** Fused SGD bakes the lr into the captured kernels. A step whose lr differs
  from the captured one runs eagerly; once the same lr holds for a second step the graph is
  captured again. A drop in the schedule costs one eager step and one capture; a warm-up
  whose lr changes every step runs eagerly throughout and is never captured.
* **Shapes.** A batch of another shape (an epoch's last partial batch) runs eagerly.
* **What the graph returns is overwritten by the next replay**: the caller clones the loss it
  keeps (a device copy, no host wait).

Randomness (dropout) stays random: the CUDA generator is advanced on every replay, as for an
eager step. The capture itself is swappable (:class:`CudaCapture`; the tests use an
emulation that bakes the lr the same way, on the CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

WARMUP_STEPS = 3
"""Eager steps on a side stream before the first capture."""

Body = Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]


class CudaCapture:
    """One CUDA graph of ``body`` (``torch.cuda.graph``), in a memory pool shared by re-captures."""

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.side = torch.cuda.Stream()

    def capture(self, body: Callable[[], Sequence[torch.Tensor]]) -> Sequence[torch.Tensor]:
        self.graph = None  # the previous capture's memory goes back to the pool first
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's threads (nvJPEG, DALI) may allocate and synchronise on their own
        # streams meanwhile; only this thread's calls must be capturable
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = body()
        self.graph = graph
        return outputs

    def replay(self) -> None:
        assert self.graph is not None
        self.graph.replay()

    @contextlib.contextmanager
    def eager(self):
        """An eager step on the side stream, ordered after and before the default stream's work."""
        current = torch.cuda.current_stream()
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            yield
        current.wait_stream(self.side)


class StepGraph:
    """``step(images, labels)``: the graphed step's outputs, or None where the step must run eagerly
    (then run it inside :meth:`eager`)."""

    def __init__(self, body: Body, optimizer: torch.optim.Optimizer, *, capture=None,
                 warmup: int = WARMUP_STEPS) -> None:
        """``body(images, labels)`` is the step; ``capture`` the capturer (default: :class:`CudaCapture`)."""
        self.body, self.optimizer = body, optimizer
        self.capturer = capture if capture is not None else CudaCapture()
        self.warmup = warmup
        self.eager_steps = 0
        self.captures = 0
        self.replays = 0
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._outputs: Sequence[torch.Tensor] | None = None
        self._captured_lrs: list[float] | None = None
        self._last_lrs: list[float] | None = None

    def _lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def _fits(self, images: torch.Tensor, labels: torch.Tensor) -> bool:
        x, y = self._x, self._y
        return (x is not None and y is not None and images.shape == x.shape and labels.shape == y.shape
                and images.dtype == x.dtype and labels.dtype == y.dtype and images.device == x.device
                and images.stride() == x.stride())

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> Sequence[torch.Tensor] | None:
        lrs, last = self._lrs(), self._last_lrs
        self._last_lrs = lrs
        if self.eager_steps < self.warmup or lrs != last:
            return None  # warming up, or the lr just changed: eager this once
        capture = self._outputs is None or self._captured_lrs != lrs  # first, or the lr settled anew
        if not self._fits(images, labels):
            if not capture:
                return None  # not the captured shape
            self._x = torch.empty_like(images, memory_format=torch.preserve_format)
            self._y = torch.empty_like(labels)
        self._x.copy_(images, non_blocking=True)
        self._y.copy_(labels, non_blocking=True)
        if capture:
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates its own grads
            self._outputs = self.capturer.capture(lambda: self.body(self._x, self._y))
            self._captured_lrs = lrs
            self.captures += 1
        self.capturer.replay()
        self.replays += 1
        return self._outputs

    def eager(self):
        """Context for a step run eagerly (counted towards the warm-up)."""
        self.eager_steps += 1
        return self.capturer.eager()


def refusal(*, cuda: bool, distributed: bool, whole: bool, compiled: bool) -> str | None:
    """Why ``[training] cuda_graph = true`` cannot apply to this run, or None when it can."""
    if not cuda:
        return ("[training] cuda_graph = true captures the step as a CUDA graph and needs the network on a CUDA "
                "device; this run is on the CPU. Set cuda_graph = false (the default), or run where CUDA is.")
    if distributed:
        return ("[training] cuda_graph = true needs one process holding the whole network on one GPU; this run "
                "has one column per process (torchrun), whose exchanges and stop flags the graph cannot hold. "
                "Set cuda_graph = false, or run one process (python launch/train.py).")
    if not whole:
        return ("[training] cuda_graph = true needs the whole network on one GPU ([parallelism] one_process = "
                "\"auto\" or \"whole\" with one GPU visible); this process holds it column by column, whose "
                "exchange records the graph would not replay. Set one_process = \"whole\" or cuda_graph = false.")
    if compiled:
        return ("[training] cuda_graph = true and compile = true both want to own the step; torch.compile "
                "has its own CUDA graphs (mode=\"reduce-overhead\"). Set one of them to false.")
    return None
