"""Values that used to be taken without a word, or ended in a traceback: each named in one line."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from alexnet_mp.commands import main
from alexnet_mp.config import load_config
from alexnet_mp.errors import ConfigError

from train_fixtures import config, dataset, run_trainer  # noqa: F401


def test_a_synthetic_pool_larger_than_memory_is_named_before_any_allocation():
    with pytest.raises(ConfigError, match=r"synthetic_images = 1000000000 is not accepted: a whole number from 1 to "
                                          r"[\d,]+: the pool is made in memory, 196,608 bytes an image"):
        load_config(None, ['data.source="synthetic"', "data.synthetic_images=1000000000"])
    load_config(None, ['data.source="synthetic"', "data.synthetic_images=512"])  # the default still fits


def test_make_dataset_starts_at_most_one_worker_per_cpu(tmp_path):
    result = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "d"), "--workers", "100000", "--quiet"])
    assert result.exit_code == 2 and f"0<=x<={os.cpu_count()}" in result.output, result.output
    assert not (tmp_path / "d").exists()


def test_num_classes_beyond_the_bound_is_refused():
    with pytest.raises(ConfigError, match=r"num_classes = 1000000 is not accepted.*even number from 2 to 100,000"):
        load_config(None, ["model.num_classes=1000000"])


def test_fused_kernels_on_the_cpu_are_refused(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"fused_relu_lrn_pool = true runs .* this run is on cpu"):
        run_trainer(config(dataset, tmp_path, **{"training.max_steps": 1, "model.fused_relu_lrn_pool": True}))


@pytest.mark.parametrize("sets, needle", [
    ({"lr_scheduler.kind": "epochs", "lr_scheduler.at_epochs": [1, 2]},
     "at_epochs = [1, 2]: the run has 1 epoch(s) ([training] epochs), so the drop(s) after epoch(s) [2] will not happen"),
    ({"lr_scheduler.warmup_steps": 100},
     "warmup_steps = 100 is longer than the whole run (1 epoch(s) of 12 steps): the lr never reaches 0.01"),
])
def test_schedule_steps_the_run_never_reaches_are_said_at_the_start(dataset, tmp_path, capsys, sets, needle):
    run_trainer(config(dataset, tmp_path, **{"training.max_steps": 1, **sets}))
    assert needle in capsys.readouterr().err


def test_export_and_filters_do_not_replace_a_file_unless_asked(tmp_path, monkeypatch):
    from alexnet_mp import AlexNet
    from alexnet_mp.train import checkpoint as ckpt

    monkeypatch.setattr(ckpt, "reference_state", lambda path: (AlexNet(4).state_dict(), {"num_classes": 4,
                                                                                         "global_step": 1}))
    (tmp_path / "c" / ckpt.META).parent.mkdir()
    (tmp_path / "c" / ckpt.META).write_text("{}")
    for command in ("export", "filters"):
        out = tmp_path / f"{command}.out"
        out.write_bytes(b"keep me")
        refused = CliRunner().invoke(main, [command, str(tmp_path / "c"), "--out", str(out)])
        assert refused.exit_code == 2 and "the file exists; add --force" in refused.output, refused.output
        assert out.read_bytes() == b"keep me"
        forced = CliRunner().invoke(main, [command, str(tmp_path / "c"), "--out", str(out), "--force"])
        assert forced.exit_code == 0, forced.output
        assert out.read_bytes() != b"keep me"
    assert torch.load(tmp_path / "export.out", weights_only=True).keys() == AlexNet(4).state_dict().keys()
