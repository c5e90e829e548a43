"""The README's first command with the quick start's own config, on a smaller generated set:
what a new user runs — no --config, two processes — every part of it on the way."""

from __future__ import annotations

import re

import pytest

from train_fixtures import ROOT, torchrun


@pytest.mark.multiprocess
def test_the_quick_start_config_as_typed_generates_trains_drops_the_lr_and_estimates(tmp_path):
    # only where the files go and how many images are generated differ from configs/quickstart.toml:
    # 10 classes x 8 = 80 images = 2 steps of 32 per epoch, 3 epochs
    sets = ["job.dump_folder=" + repr(str(tmp_path / "runs")).replace("'", '"'),
            "data.path=" + repr(str(tmp_path / "data")).replace("'", '"'),
            "data.cache_dir=" + repr(str(tmp_path / "cache")).replace("'", '"'),
            "data.generate_train_per_class=8", "data.generate_val_per_class=2", "metrics.log_freq=1"]
    args = ["--standalone", "--nproc_per_node=2", str(ROOT / "launch" / "train.py")]
    for s in sets:
        args += ["--set", s]
    proc = torchrun(args, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "generating the quick-start dataset" in log
    assert len(list((tmp_path / "data" / "train").rglob("*.jpg"))) == 80
    assert "world 2 = 1 data-parallel x 2 columns" in log and "loader dali" in log
    assert "lr x0.1 after epoch 2" in log
    # warm-up over 20 steps: step 1 runs at 1/20 of 0.01; the drop after epoch 2 leaves 0.001
    lrs = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"\(global (\d+)\) \| .* lr ([0-9.e+-]+) \|", log)}
    assert lrs[1] == pytest.approx(0.0005) and lrs[4] == pytest.approx(0.002) and lrs[6] == pytest.approx(0.0003)
    assert re.search(r"estimate: \dm\d\ds more -- 1 steps at", log), log[-3000:]
    # the ten patches of min(100, 20) validation images at the end, every class kept
    assert "top1_error_10crop" in log and "finished at step 6" in log
