"""The run-length estimate: what is left is counted as the trainer will run it, and timed."""

from __future__ import annotations

import pytest

from alexnet_mp.train import metrics as metrics_module
from alexnet_mp.train.eta import Estimate, Remaining, remaining

from train_fixtures import config, dataset, run_trainer  # noqa: F401

# The tiny dataset: 2 classes x 24 train (12 steps of 4 per epoch) and 2 x 6 = 12 val images.
STEPS, VAL = 12, 12


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    # three epochs, centre crop each, the ten patches of 4 images at the end
    {"training.epochs": 3, "validation.ten_crop": "end", "validation.ten_crop_images": 4},
    # max_steps stops inside epoch 2: epoch 1's validation, then the final one with every ten-patch image
    {"training.epochs": 3, "training.max_steps": 17, "validation.ten_crop": "end"},
    # every other epoch, ten patches at each: epochs 2 and 3 (the last)
    {"training.epochs": 3, "validation.freq_epochs": 2, "validation.ten_crop": "every",
     "validation.ten_crop_images": 5},
    # max_steps lands on an epoch end before the last epoch: that validation is the final one...
    {"training.epochs": 3, "training.max_steps": 12},
    # ...unless the ten patches were left for the end: then one more pass, with them
    {"training.epochs": 3, "training.max_steps": 12, "validation.ten_crop": "end", "validation.ten_crop_images": 2},
])
def test_what_is_left_at_the_start_is_what_the_trainer_then_runs(dataset, tmp_path, monkeypatch, overrides):  # noqa: F811
    cfg = config(dataset, tmp_path, **overrides)
    predicted = remaining(cfg, epoch=0, step_in_epoch=0, global_step=0, steps_per_epoch=STEPS, num_val=VAL)
    seen = {"steps": 0, "validations": 0, "forwards": 0}
    real_step, real_validation = metrics_module.Metrics.step, metrics_module.Metrics.validation

    def step(self, *args, **kwargs):
        seen["steps"] += 1
        return real_step(self, *args, **kwargs)

    def validation(self, *args, forwards=0, **kwargs):
        seen["validations"] += 1
        seen["forwards"] += forwards
        return real_validation(self, *args, forwards=forwards, **kwargs)

    monkeypatch.setattr(metrics_module.Metrics, "step", step)
    monkeypatch.setattr(metrics_module.Metrics, "validation", validation)
    run_trainer(cfg)
    assert predicted == Remaining(**seen)


def test_a_resumed_run_counts_only_what_is_left(dataset, tmp_path):  # noqa: F811
    cfg = config(dataset, tmp_path, **{"training.epochs": 4, "validation.ten_crop": "end",
                                       "validation.ten_crop_images": 3, "metrics.enable_tensorboard": True,
                                       "metrics.projector_images": 100})
    left = remaining(cfg, epoch=2, step_in_epoch=5, global_step=29, steps_per_epoch=STEPS, num_val=VAL)
    # 7 steps to finish epoch 3 and 12 for epoch 4; validations after 3 and 4 (the last with 3 x 10
    # patches); the projector takes at most the 12 validation images
    assert left == Remaining(steps=19, validations=2, forwards=2 * VAL + 30 + VAL)


def test_the_estimate_skips_the_warm_up_step_and_prefers_measured_validation():
    est = Estimate()
    assert est.seconds(Remaining(10, 1, 100)) is None
    est.training_step(9.0, 3.0, 10)   # the first step: warm-up, ignored once there are others
    est.training_step(1.0, 0.2, 10)
    est.training_step(1.0, 0.4, 10)
    assert est.seconds_per_step() == pytest.approx(1.0)
    assert est.seconds_per_forward() == pytest.approx(0.03)
    assert est.seconds(Remaining(10, 1, 100)) == pytest.approx((10.0, 3.0))
    est.validation(5.0, 100)
    assert est.seconds_per_forward() == pytest.approx(0.05)


@pytest.mark.slow
def test_the_banner_estimates_the_run_and_the_eta_includes_validation(dataset, tmp_path, capsys):  # noqa: F811
    cfg = config(dataset, tmp_path, **{"training.epochs": 2, "metrics.log_freq": 6,
                                       "validation.ten_crop": "end"})
    run_trainer(cfg)
    err = capsys.readouterr().err
    estimate = [line for line in err.splitlines() if line.strip().startswith("estimate:")]
    assert len(estimate) == 1, err
    # after 5 of 24 steps: 19 steps left, then 2 validations of 12 images and 120 ten-patch forwards
    assert "19 steps at" in estimate[0] and "2 validation pass(es) of 144 image forwards" in estimate[0]
    progress = [line for line in err.splitlines() if "ETA" in line]
    assert progress and all(line.endswith("(validation included)") for line in progress)
