"""A whole training step — forward, loss, backward, optimizer update — as one CUDA graph.

At batch 128 an AlexNet step on a modern GPU is a few milliseconds of a few hundred
kernels, with gaps between them while Python launches the next. Capturing the step once
and replaying it removes the launches and the gaps (the pattern of the PyTorch CUDA-graphs
"whole network capture" recipe; the gain measured is in docs/benchmarks.md). What the capture
needs, and this class takes care of:

* warm-up steps on a side stream before capture (cuDNN autotuning, lazy allocations); they
  would change the weights and optimizer state, so both are saved first and put back after
  the capture — the first replay is the first real step;
* inputs and targets at fixed addresses: each call copies the batch into them;
* autocast with its weight-cast cache off (a cached cast would be a stale tensor in replay);
* an optimizer whose hyper-parameters are plain numbers baked into the captured kernels:
  when a learning rate changes (a schedule step), the step is captured again.

Randomness (dropout) stays random: the CUDA generator advances its offset on every replay.
Warm-up draws are not rewound, so a graphed run is not bit-identical to an eager one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class GraphedStep:
    """``step(x, y)`` runs one captured training step on a copy of ``(x, y)`` and returns the loss.

    The returned loss tensor is overwritten by the next call; read it (``.item()``) or clone it
    first. ``x`` and ``y`` must have the shape, dtype, layout and device of the examples.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 example_input: torch.Tensor, example_target: torch.Tensor, *,
                 bf16: bool = False, warmup: int = 3) -> None:
        if not torch.cuda.is_available() or example_input.device.type != "cuda":
            raise RuntimeError(
                "GraphedStep captures a CUDA graph and needs the model and the batch on a CUDA device "
                f"(the example input is on {example_input.device}); on the CPU run the step eagerly.")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.bf16 = bf16
        self.x = example_input.detach().clone(memory_format=torch.preserve_format)
        self.y = example_target.detach().clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captures = 0
        self._lrs: list[float] = []
        self._capture(warmup)

    def _body(self) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return loss

    def _capture(self, warmup: int) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: (v.detach().clone() if torch.is_tensor(v) else v)
                           for k, v in self.optimizer.state[p].items()} for p in params if p in self.optimizer.state}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(stream)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.loss = self._body()
        # Put back what warm-up changed, in place: the graph holds these addresses.
        with torch.no_grad():
            for p, v in zip(params, saved_params):
                p.copy_(v)
            for p in params:
                for k, v in self.optimizer.state[p].items():
                    if not torch.is_tensor(v):
                        continue
                    before = saved_state.get(p, {}).get(k)
                    if before is None:
                        # SGD with dampening 0: a zero momentum buffer makes the first replayed
                        # update buf = grad, exactly what a fresh optimizer does.
                        v.zero_()
                    else:
                        v.copy_(before)
        self.graph = graph
        self.captures += 1
        self._lrs = [g["lr"] for g in self.optimizer.param_groups]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(f"a graphed step takes batches of {tuple(self.x.shape)} and {tuple(self.y.shape)}; "
                             f"got {tuple(x.shape)} and {tuple(y.shape)} (drop the last partial batch)")
        if [g["lr"] for g in self.optimizer.param_groups] != self._lrs:
            self._capture(warmup=0)
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        assert self.graph is not None
        self.graph.replay()
        return self.loss
