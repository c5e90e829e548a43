"""``[training] cuda_graph``: when the graph runs a step, when a step runs eagerly, and that the
graphed run is the eager run.

A CUDA graph cannot be captured without CUDA, so on the CPU the capture is emulated with what
matters to the trainer: capturing runs nothing that stays (weights, momentum, flags and the
random stream are as before), the lr is baked in at capture, and each replay writes its
results into the same output tensors. A trainer that forgot to re-capture after an lr change,
or kept a replay's loss without copying it, differs from the eager run here. On CUDA the real
graph is compared with two eager runs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from alexnet_mp.errors import ConfigError
from alexnet_mp.train import graph as step_graph
from alexnet_mp.train.trainer import Trainer

from train_fixtures import config, dataset  # noqa: F401


class EmulatedCapture:
    """A CUDA graph's semantics for the trainer, on the CPU."""

    def __init__(self) -> None:
        self.optimizer: torch.optim.Optimizer | None = None
        self.flags = lambda: []  # tensors the step updates in place besides weights and momentum
        self.body = None
        self.outputs = None
        self.baked: list[float] = []

    def _tensors(self) -> list[torch.Tensor]:
        opt = self.optimizer
        params = [p for g in opt.param_groups for p in g["params"]]
        state = [v for p in params for v in opt.state.get(p, {}).values() if torch.is_tensor(v)]
        return [p.data for p in params] + state + [t for t in self.flags() if t is not None]

    def capture(self, body):
        saved = [t.clone() for t in self._tensors()]
        rng = torch.get_rng_state()
        self.outputs = body()  # a real capture records the kernels without running them...
        with torch.no_grad():  # ...so put back everything running it changed
            for t, v in zip(self._tensors(), saved, strict=True):
                t.copy_(v)
        torch.set_rng_state(rng)
        self.body = body
        self.baked = [g["lr"] for g in self.optimizer.param_groups]
        return self.outputs

    def replay(self):
        live = [g["lr"] for g in self.optimizer.param_groups]
        for g, lr in zip(self.optimizer.param_groups, self.baked):
            g["lr"] = lr  # the captured kernels hold the lr of the capture
        try:
            fresh = self.body()
        finally:
            for g, lr in zip(self.optimizer.param_groups, live):
                g["lr"] = lr
        with torch.no_grad():
            for out, new in zip(self.outputs, fresh, strict=True):
                out.copy_(new)  # a replay writes into the captured outputs

    def eager(self):
        return contextlib.nullcontext()


def graphed_trainer(cfg, monkeypatch) -> Trainer:
    emulated = EmulatedCapture()
    monkeypatch.setattr(step_graph, "refusal", lambda **_: None)
    monkeypatch.setattr(step_graph, "CudaCapture", lambda: emulated)
    trainer = Trainer(cfg)
    emulated.optimizer = trainer.optimizer
    emulated.flags = lambda: [trainer._skip]
    return trainer


def _run(trainer: Trainer):
    try:
        trainer.train()
        return list(trainer.losses), trainer.model.whole()
    finally:
        trainer.close()


# lr warm-up over 4 steps, then a drop at the end of epoch 1 (12 steps of 4 images each)
SCHEDULE = {"training.epochs": 2, "lr_scheduler.kind": "epochs", "lr_scheduler.at_epochs": [1],
            "lr_scheduler.warmup_steps": 4, "optimizer.lr": 0.002, "model.dropout": 0.5, "checkpoint.enable": False}


@pytest.mark.slow
def test_the_graphed_run_is_the_eager_run(dataset, tmp_path, monkeypatch):  # noqa: F811
    eager_losses, eager_weights = _run(Trainer(config(dataset, tmp_path / "eager", **SCHEDULE)))
    trainer = graphed_trainer(config(dataset, tmp_path / "graph", **SCHEDULE, **{"training.cuda_graph": True}),
                              monkeypatch)
    graph = trainer.graph
    losses, weights = _run(trainer)
    # Steps 1-3 warm up; step 4's lr is new (the warm-up's last), so step 5 captures and 5-12
    # replay; step 13 runs at the dropped lr eagerly, step 14 captures again and 14-24 replay.
    assert (graph.eager_steps, graph.captures, graph.replays) == (5, 2, 8 + 11)
    assert len(losses) == 24 and losses == eager_losses  # bit for bit: the same step, replayed
    assert all(torch.equal(weights[k], eager_weights[k]) for k in eager_weights)


class _Toy:
    def __init__(self):
        torch.manual_seed(0)
        self.model = nn.Linear(3, 2)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, fused=True)

    def body(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return (loss.detach(),)


def test_steps_the_graph_cannot_hold_run_eagerly():
    toy, emulated = _Toy(), EmulatedCapture()
    emulated.optimizer = toy.opt
    g = step_graph.StepGraph(toy.body, toy.opt, capture=emulated, warmup=2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    ran = []
    for i, (xb, yb) in enumerate([(x, y)] * 4 + [(x[:3], y[:3])] + [(x, y)] * 2):
        out = g.step(xb, yb)
        if out is None:
            with g.eager():
                toy.body(xb, yb)
        ran.append("eager" if out is None else "graph")
    # two warm-up steps, a partial batch (step 5) eagerly, the rest replayed from one capture
    assert ran == ["eager", "eager", "graph", "graph", "eager", "graph", "graph"]
    assert (g.eager_steps, g.captures, g.replays) == (3, 1, 4)
    toy.opt.param_groups[0]["lr"] = 0.05
    assert g.step(x, y) is None  # a new lr: eagerly once...
    with g.eager():
        toy.body(x, y)
    assert g.step(x, y) is not None and g.captures == 2  # ...then captured again at it


def test_cuda_graph_is_refused_where_it_cannot_apply(dataset, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match=r"\[training\] cuda_graph = true .* on the CPU"):
        Trainer(config(dataset, tmp_path, **{"training.cuda_graph": True}))
    ok = dict(cuda=True, distributed=False, whole=True, compiled=False)
    assert step_graph.refusal(**ok) is None
    for key, words in (("distributed", "one column per process"), ("whole", "column by column"),
                       ("compiled", "torch.compile")):
        assert words in step_graph.refusal(**{**ok, key: not ok[key]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_graph_equals_eager_within_what_two_eager_runs_differ_by(dataset, tmp_path):  # noqa: F811
    """Dropout off (the masks are drawn at other offsets of the generator); 24 steps with a
    warm-up and a drop, so there are two captures."""
    sets = {**SCHEDULE, "model.dropout": 0.0, "training.device": "cuda"}
    _, e1 = _run(Trainer(config(dataset, tmp_path / "e1", **sets)))
    _, e2 = _run(Trainer(config(dataset, tmp_path / "e2", **sets)))
    trainer = Trainer(config(dataset, tmp_path / "g", **sets, **{"training.cuda_graph": True}))
    graph = trainer.graph
    _, g = _run(trainer)
    assert graph.captures == 2 and graph.replays == 19
    steps = 24
    for k in e1:
        spread = (e1[k] - e2[k]).abs().max().item()
        floor = steps * 2.0**-24 * e1[k].abs().max().item()  # an ulp of the weight per update
        assert (g[k] - e1[k]).abs().max().item() <= 4 * spread + floor, k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_replayed_step_never_makes_the_host_wait(tmp_path, monkeypatch):
    """The synthetic source and a replayed step together, under CUDA's sync debug mode."""
    real, guarded = Trainer.train_step, []

    def train_step(self, images, labels):
        if self.graph.replays < 1:  # warm-up, the estimate's timed forwards and the capture may wait
            return real(self, images, labels)
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = real(self, images, labels)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        guarded.append(self.position.global_step + 1)
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)
    sets = {"data.source": "synthetic", "data.synthetic_images": 64, "data.synthetic_val_images": 8,
            "training.max_steps": 12, "training.device": "cuda", "training.cuda_graph": True,
            "checkpoint.enable": False, "metrics.log_freq": 100}
    trainer = Trainer(config("unused", tmp_path, **sets))
    try:
        trainer.train()
    finally:
        trainer.close()
    assert guarded and trainer.graph.replays >= len(guarded)
