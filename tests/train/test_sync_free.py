"""The training step reads nothing on the host: the loss, the non-finite check and the skipped
update stay on the device until the logged steps, checkpoints and epoch ends read them."""

from __future__ import annotations

import contextlib

import pytest
import torch

from alexnet_mp.train.metrics import ESTIMATE_AFTER_STEPS
from alexnet_mp.train.trainer import Trainer, TrainingError

from train_fixtures import config, dataset  # noqa: F401

HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


@contextlib.contextmanager
def host_reads_fail(monkeypatch):
    """Every way a tensor's value reaches Python raises inside the block."""
    with monkeypatch.context() as m:
        def refuse(name):
            def read(self, *args, **kwargs):
                raise AssertionError(f"Tensor.{name} in a steady-state training step: the host waits for the device")
            return read
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, refuse(name))
        yield


def _guard_steps(monkeypatch, guarded: list[int]):
    real = Trainer.train_step

    def train_step(self, images, labels):
        if self.position.global_step < ESTIMATE_AFTER_STEPS:  # the estimate's steps time the forward
            return real(self, images, labels)
        with host_reads_fail(monkeypatch):
            out = real(self, images, labels)
        guarded.append(self.position.global_step + 1)
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.slow
def test_a_steady_state_step_performs_no_host_read(dataset, tmp_path, monkeypatch):  # noqa: F811
    guarded: list[int] = []
    _guard_steps(monkeypatch, guarded)
    cfg = config(dataset, tmp_path, **{"training.max_steps": 10, "metrics.log_freq": 4, "checkpoint.interval": 8})
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    assert guarded == list(range(ESTIMATE_AFTER_STEPS + 1, 11))
    assert len(trainer.losses) == 10 and all(v == v for v in trainer.losses)  # every loss read, later


@pytest.mark.slow
def test_a_nan_skips_the_update_on_the_device_and_stops_at_the_next_read(dataset, tmp_path, monkeypatch):  # noqa: F811
    """The NaN at step 7 is not read until the log at step 8: step 7 and 8 update nothing, and
    the error names step 7; the weights are those after step 6."""
    guarded: list[int] = []
    _guard_steps(monkeypatch, guarded)
    cfg = config(dataset, tmp_path, **{"training.max_steps": 10, "metrics.log_freq": 4, "checkpoint.enable": False,
                                       "debug.inject_nan_at_step": 7})
    reference = Trainer(config(dataset, tmp_path / "ref", **{"training.max_steps": 6, "metrics.log_freq": 4,
                                                             "checkpoint.enable": False}))
    try:
        reference.train()
        after_six = {k: v.clone() for k, v in reference.model.whole().items()}
    finally:
        reference.close()
    guarded.clear()
    trainer = Trainer(cfg)
    try:
        with pytest.raises(TrainingError, match=r"not finite at step 7 \(epoch 1, step 7 of 12\)"):
            trainer.train()
        assert guarded == [6, 7, 8] and trainer.position.global_step == 8
        weights = trainer.model.whole()
        assert all(torch.equal(weights[k], after_six[k]) for k in after_six)
    finally:
        trainer.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_steady_state_step_never_synchronises(dataset, tmp_path, monkeypatch):  # noqa: F811
    real = Trainer.train_step

    def train_step(self, images, labels):
        if self.position.global_step < ESTIMATE_AFTER_STEPS:
            return real(self, images, labels)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(self, images, labels)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "train_step", train_step)
    cfg = config(dataset, tmp_path, **{"training.max_steps": 9, "training.device": "cuda", "metrics.log_freq": 100,
                                       "checkpoint.enable": False})
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    assert len(trainer.losses) == 9
