"""The trainer on ``[data] source = "synthetic"``: no dataset folder, the run says so."""

from __future__ import annotations

import pytest

from train_fixtures import config, run_trainer


@pytest.mark.slow
def test_the_trainer_runs_on_the_device_made_pool_without_a_folder(tmp_path, capsys):
    cfg = config(tmp_path / "no-such-folder", tmp_path, **{
        "data.source": "synthetic", "data.synthetic_images": 16, "data.synthetic_val_images": 4,
        "data.synthetic_classes": 10, "training.max_steps": 3, "validation.ten_crop": "end"})
    losses, _ = run_trainer(cfg)
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    err = capsys.readouterr().err
    assert "data: <synthetic> (10 classes, 16 train / 4 val images), uint8 images made on the device" in err
    assert "top1_error_10crop" in err and "finished at step 3" in err
