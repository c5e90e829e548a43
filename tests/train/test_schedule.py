"""The lr schedules: the paper's plateau rule, and drops at fixed epochs; both resume in place."""

from __future__ import annotations

import json

import pytest

from alexnet_mp.train import checkpoint as ckpt
from alexnet_mp.train.schedule import EpochSchedule, PlateauSchedule

from train_fixtures import config, dataset, run_trainer  # noqa: F401


def test_the_plateau_rule_waits_patience_evaluations_and_stops_after_max_reductions():
    s = PlateauSchedule(base_lr=0.01, factor=0.1, patience=1, threshold=1e-3, max_reductions=2)
    errors = [0.5, 0.4, 0.4005, 0.41, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    reduced = [s.after_epoch(e + 1, err) for e, err in enumerate(errors)]
    # 0.4005 is no improvement (threshold 1e-3); two bad evaluations in a row reduce, at most twice
    assert reduced == [False, False, False, True, False, False, True, False, False, False]
    assert s.lr == pytest.approx(0.01 * 0.1**2)
    assert not s.after_epoch(11, None)  # an epoch without validation changes nothing


def test_drops_at_fixed_epochs_whatever_the_error_and_once_each():
    s = EpochSchedule(base_lr=0.01, factor=0.1, at_epochs=(2, 4))
    reduced = [s.after_epoch(e, None if e % 2 else 0.1) for e in range(1, 6)]
    assert reduced == [False, True, False, True, False]
    assert s.lr == pytest.approx(1e-4)
    resumed = EpochSchedule(base_lr=0.02, factor=0.1, at_epochs=(2, 4))
    resumed.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert resumed.reductions == 2 and resumed.lr == pytest.approx(2e-4)
    # a run resumed after it missed an epoch end (stopped exactly there) still takes every drop due
    late = EpochSchedule(base_lr=1.0, factor=0.5, at_epochs=(1, 2))
    assert late.after_epoch(3, None) and late.reductions == 2


@pytest.mark.slow
def test_the_trainer_drops_the_lr_after_the_listed_epoch_and_a_resume_keeps_it(dataset, tmp_path):  # noqa: F811
    sets = {"training.epochs": 3, "lr_scheduler.kind": "epochs", "lr_scheduler.at_epochs": [2],
            "optimizer.lr": 0.004, "checkpoint.interval": 0}
    run_trainer(config(dataset, tmp_path, **{**sets, "training.max_steps": 24}))  # stops at the end of epoch 2
    meta = json.loads((ckpt.latest(tmp_path / "runs" / "t") / ckpt.META).read_text())
    assert meta["states"]["schedule"] == {"reductions": 1} and meta["optimizer"]["lr"] == pytest.approx(0.0004)
    run_trainer(config(dataset, tmp_path, **sets))  # resumes into epoch 3 at the reduced lr
    meta = json.loads((ckpt.latest(tmp_path / "runs" / "t") / ckpt.META).read_text())
    assert meta["global_step"] == 36 and meta["optimizer"]["lr"] == pytest.approx(0.0004)


@pytest.mark.slow
def test_warm_up_raises_the_lr_linearly_and_a_resume_continues_it(dataset, tmp_path, monkeypatch):  # noqa: F811
    from alexnet_mp.train import metrics as metrics_module

    lrs = []
    real_step = metrics_module.Metrics.step

    def step(self, *args, lr, **kwargs):
        lrs.append(lr)
        return real_step(self, *args, lr=lr, **kwargs)

    monkeypatch.setattr(metrics_module.Metrics, "step", step)
    sets = {"lr_scheduler.warmup_steps": 4, "optimizer.lr": 0.002, "training.max_steps": 2}
    run_trainer(config(dataset, tmp_path, **sets))
    run_trainer(config(dataset, tmp_path, **{**sets, "training.max_steps": 6}))  # resumes at step 2
    assert lrs == pytest.approx([0.0005, 0.001, 0.0015, 0.002, 0.002, 0.002])
