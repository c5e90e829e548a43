"""Training: configs, the split trains like one device, exact resume, faults, TensorBoard, exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alexnet_mp.config import load_config
from alexnet_mp.errors import CheckpointError, ConfigError, DistributedError
from alexnet_mp.parallel.spawn import run_workers

from train_fixtures import (ROOT, config, dataset, overrides, run_trainer, single_device_losses,  # noqa: F401
                            torchrun, within_fp32_noise)


# --- configuration ---------------------------------------------------------------------

def test_configs_in_the_repo_load():
    for name in ("paper", "quickstart"):
        cfg = load_config(ROOT / "configs" / f"{name}.toml")
        assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 5e-4
    paper = load_config(ROOT / "configs" / "paper.toml")
    assert (paper.training.batch_size, paper.optimizer.lr, paper.model.dropout, paper.lr_scheduler.max_reductions) == \
        (128, 0.01, 0.5, 3)


@pytest.mark.parametrize("text,needle", [
    ("[trainng]\nx = 1", "unknown section [trainng]; accepted: [job]"),
    ("[training]\nbatchsize = 3", "unknown key training.batchsize; [training] accepts: batch_size"),
    ("[training]\nbatch_size = \"big\"", "[training] batch_size = 'big' has the wrong type; it must be a whole number"),
    ("[training]\nbatch_size = 0", "[training] batch_size = 0 is not accepted"),
    ("[optimizer]\nlr = -1.0", "[optimizer] lr = -1.0 is not accepted: a positive number"),
    ("[data]\nloader = \"pil\"", "[data] loader = 'pil' is not accepted"),
    ("[parallelism]\ngrad_sync = \"ddp\"", "unknown key parallelism.grad_sync; [parallelism] accepts"),
    ("[training]\ndevice = \"tpu\"", "[training] device = 'tpu' is not accepted: 'auto' or 'cpu' or 'cuda'"),
    ("[parallelism]\nbucket_mb = 0", "[parallelism] bucket_mb = 0.0 is not accepted: a size in MiB > 0"),
    ("[parallelism]\none_process = \"split\"",
     "[parallelism] one_process = 'split' is not accepted: 'auto' or 'whole' or 'columns'"),
    ("[model]\nlrn_impl = \"cuda\"", "[model] lrn_impl = 'cuda' is not accepted: 'fast' or 'eager' or 'triton'"),
    ("[training\n", "is not valid TOML"),
])
def test_bad_config_is_named(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value) or "[" in str(err.value)


def test_overrides_and_missing_file(tmp_path):
    cfg = load_config(None, ["training.batch_size=64", "data.loader=torchvision", "validation.ten_crop=end"])
    assert cfg.training.batch_size == 64 and cfg.data.loader == "torchvision" and cfg.validation.ten_crop == "end"
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["batch_size=3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_world_size_the_model_cannot_use(monkeypatch):
    from alexnet_mp.train.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(DistributedError, match="3 processes.*multiple of 2"):
        setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="data_parallel = 3 does not match"):
        setup("cpu", data_parallel=3)


def test_overlap_in_one_process_is_refused_before_any_work(dataset, tmp_path):
    with pytest.raises(ConfigError, match="overlap = true needs one column per process"):
        run_trainer(config(dataset, tmp_path, **{"parallelism.overlap": True}))


def test_missing_data_is_reported_before_any_work(tmp_path):
    from alexnet_mp.errors import DataError

    cfg = config(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataError, match="nowhere"):
        run_trainer(cfg)


# --- the split trains like one device --------------------------------------------------

def _split_worker(rank, world, cfg):
    return run_trainer(cfg)[0]


@pytest.mark.multiprocess
def test_twenty_split_steps_give_the_single_device_losses(dataset, tmp_path):
    """Dropout off, same seed: 20 steps of the two-process split = 20 steps of AlexNet, judged
    against float64 within the single-device fp32 run's own rounding."""
    cfg = config(dataset, tmp_path, **{"training.max_steps": 20, "training.epochs": 2, "checkpoint.enable": False,
                                        "optimizer.lr": 0.001})
    split = run_workers(_split_worker, 2, (cfg,), threads=1)
    assert len(split[0]) == 20 and split[0] == split[1]
    # across the epoch boundary at step 12
    within_fp32_noise(split[0], single_device_losses(cfg, 20)[0], single_device_losses(cfg, 20, dtype=torch.float64)[0])


@pytest.mark.slow
def test_the_whole_network_trains_like_one_device_and_resumes_a_checkpoint_of_the_columns(dataset, tmp_path):
    """One process: the whole network (as itself) gives AlexNet's losses; and since checkpoints
    hold the whole network's tensors whatever the placement, a run made column by column
    resumes as the whole network."""
    base = {"checkpoint.interval": 3, "optimizer.lr": 0.001, "training.epochs": 2}
    whole, columns = {"parallelism.one_process": "whole"}, {"parallelism.one_process": "columns"}
    cfg = config(dataset, tmp_path / "w", **{**base, **whole, "training.max_steps": 12, "checkpoint.enable": False})
    losses, whole_weights = run_trainer(cfg)
    within_fp32_noise(losses, single_device_losses(cfg, 12)[0], single_device_losses(cfg, 12, dtype=torch.float64)[0])

    _, straight = run_trainer(config(dataset, tmp_path / "a", **{**base, **columns, "training.max_steps": 12}))
    first, _ = run_trainer(config(dataset, tmp_path / "b", **{**base, **columns, "training.max_steps": 6}))
    second, resumed = run_trainer(config(dataset, tmp_path / "b", **{**base, **whole, "training.max_steps": 12}))
    assert (len(first), len(second)) == (6, 6)
    # Column by column, whole, and half of each are three fp32 summation orders of the same
    # training: the resumed run may differ from the straight one by a few times what the
    # uninterrupted whole run does (a column mix-up would be off by O(1)).
    for k, v in straight.items():
        noise = (whole_weights[k] - v).norm().item()
        allowed = 4 * max(noise, 2.0**-24 * 64 * v.norm().item())
        assert (resumed[k] - v).norm().item() <= allowed, (k, noise)


# --- checkpoints and resume ------------------------------------------------------------

@pytest.mark.slow
def test_stopped_and_resumed_run_ends_with_the_same_weights(dataset, tmp_path):
    base = {"training.epochs": 2, "checkpoint.interval": 3, "model.dropout": 0.5,  # dropout on: RNG is restored too
            "optimizer.lr": 0.001}
    _, uninterrupted = run_trainer(config(dataset, tmp_path / "a", **{**base, "training.max_steps": 17}))
    first, _ = run_trainer(config(dataset, tmp_path / "b", **{**base, "training.max_steps": 7}))
    assert len(first) == 7
    from alexnet_mp.train import checkpoint as ckpt

    assert ckpt.latest(tmp_path / "b" / "runs" / "t").name == "step-0000007"
    second, resumed = run_trainer(config(dataset, tmp_path / "b", **{**base, "training.max_steps": 17}))
    assert len(second) == 10  # steps 8..17, across the epoch boundary at 12
    for k in uninterrupted:
        assert torch.equal(uninterrupted[k], resumed[k]), k


@pytest.mark.slow
def test_nan_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
    from alexnet_mp.train import checkpoint as ckpt
    from alexnet_mp.train.trainer import TrainingError

    cfg = config(dataset, tmp_path, **{"checkpoint.interval": 2, "debug.inject_nan_at_step": 5})
    with pytest.raises(TrainingError, match="not finite at step 5") as err:
        run_trainer(cfg)
    run = tmp_path / "runs" / "t"
    # step 4's weights gave the NaN at step 5: set aside; step 2's gave a finite loss at step 3
    assert ckpt.latest(run).name == "step-0000002" and "resumes from the last healthy checkpoint" in str(err.value)
    meta = ckpt.read_meta(ckpt.latest(run))
    assert meta["global_step"] == 2 and meta["healthy"] is True and meta["loss"] is not None
    assert (ckpt.checkpoint_dir(run) / "step-0000004.diverged").is_dir()


@pytest.mark.slow
def test_truncated_and_foreign_checkpoints_are_refused_untouched(dataset, tmp_path):
    from alexnet_mp.train import checkpoint as ckpt

    cfg = config(dataset, tmp_path, **{"training.max_steps": 2})
    run_trainer(cfg)
    latest = ckpt.latest(tmp_path / "runs" / "t")
    data = sorted(latest.glob("*.safetensors"))[0]
    data.write_bytes(data.read_bytes()[:1000])  # truncate a data file
    before = {p.name: p.stat().st_size for p in latest.iterdir()}
    with pytest.raises(CheckpointError, match="is damaged"):
        run_trainer(config(dataset, tmp_path, **{"training.max_steps": 4}))
    assert {p.name: p.stat().st_size for p in latest.iterdir()} == before
    genuine = json.loads((latest / "meta.json").read_text())
    (latest / "meta.json").write_text(json.dumps({"format": "someone-else/1"}))
    with pytest.raises(CheckpointError, match="not written by this version"):
        run_trainer(config(dataset, tmp_path, **{"training.max_steps": 4}))
    (latest / "meta.json").write_text(json.dumps({k: v for k, v in genuine.items() if k != "num_classes"}))
    with pytest.raises(CheckpointError, match=r"meta.json is damaged \('num_classes' is missing"):
        run_trainer(config(dataset, tmp_path, **{"training.max_steps": 4}))
    (latest / "meta.json").write_text(json.dumps({**genuine, "num_classes": 4}))
    with pytest.raises(CheckpointError, match="num_classes = 4"):
        run_trainer(config(dataset, tmp_path, **{"training.max_steps": 4}))


@pytest.mark.slow
def test_a_crash_mid_save_leaves_the_last_checkpoint(dataset, tmp_path):
    from alexnet_mp.train import checkpoint as ckpt

    run_trainer(config(dataset, tmp_path, **{"training.max_steps": 2}))
    run = tmp_path / "runs" / "t"
    partial = ckpt.checkpoint_dir(run) / "step-0000009.partial"
    partial.mkdir()
    (partial / "rank-0.safetensors").write_bytes(b"half")
    assert ckpt.latest(run).name == "step-0000002"
    losses, _ = run_trainer(config(dataset, tmp_path, **{"training.max_steps": 3}))
    assert len(losses) == 1  # resumed at step 2, not from the broken folder


# --- under torchrun ---------------------------------------------------------------------

@pytest.mark.multiprocess
def test_torchrun_restart_after_sigkill_completes_and_tensorboard_has_every_tag(dataset, tmp_path):
    proc = torchrun(["--standalone", "--nproc_per_node=2", "--max-restarts=1", str(ROOT / "launch" / "train.py"),
                     *overrides(dataset, tmp_path, **{"debug.kill_at_step": 5})], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "kills itself after step 5" in log and "resumed from" in log and "step-0000003" in log
    assert "finished at step 12" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "runs" / "tr" / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    for tag in ("loss/train", "lr", "error/train_top1", "error/train_top5", "throughput/images_per_s",
                "time/data_wait_s", "time/step_s", "error/val_top1_centre", "error/val_top5_centre",
                "error/val_top1_10crop", "error/val_top5_10crop", "memory/rank0/peak_rss_GiB",
                "memory/rank1/rss_GiB", "exchange/conv3/forward_bytes", "exchange/logits/backward_seconds",
                "exchange/total_bytes_per_step", "filters/colour_specificity/column0",
                "filters/colour_specificity/column1"):
        assert tag in scalars, tag
    assert {"filters/column0", "filters/column1"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]
    # one curve across the restart: the crashed attempt's steps 4-5 were purged when it resumed at 3
    steps = [e.step for e in acc.Scalars("loss/train")]
    assert steps == sorted(set(steps)) and steps[-1] == 12, steps
    total = acc.Scalars("exchange/total_bytes_per_step")[-1].value
    assert total == 2 * 4 * 4 * (21_632 + 4_608 + 2_048 + 2_048 + 1)  # batch 4, fp32, 2 classes -> 1 logit per column
    projector = list((tmp_path / "runs" / "tr" / "tb").rglob("projector_config.pbtxt"))
    assert projector, "no projector embedding"
    assert list((tmp_path / "runs" / "tr" / "tb").rglob("sprite.png"))


@pytest.mark.slow
def test_export_filters_and_eval_commands(dataset, tmp_path):
    from click.testing import CliRunner

    from alexnet_mp import AlexNet
    from alexnet_mp.commands import main

    run_trainer(config(dataset, tmp_path, **{"training.max_steps": 2}))
    run = tmp_path / "runs" / "t"
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    state = torch.load(out, weights_only=True)
    model = AlexNet(2)
    model.load_state_dict(state)
    _, trained = run_trainer(config(dataset, tmp_path / "again", **{"training.max_steps": 2}))
    assert torch.equal(state["conv1.weight"], trained["conv1.weight"])
    png = tmp_path / "conv1.png"
    result = CliRunner().invoke(main, ["filters", str(run), "--out", str(png)])
    assert result.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    assert "column 1 colour specificity" in result.output
    result = CliRunner().invoke(main, ["eval", str(run), "--data", str(dataset), "--loader", "torchvision"])
    assert result.exit_code == 0, result.output
    assert "12 images" in result.output and "top-1 error" in result.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nothing"), "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.multiprocess
def test_sigterm_saves_and_exits_cleanly(dataset, tmp_path):
    args = [sys.executable, str(ROOT / "launch" / "train.py"),
            *overrides(dataset, tmp_path, **{"training.epochs": 50, "metrics.log_freq": 1, "checkpoint.interval": 0,
                                             "metrics.enable_tensorboard": False})]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "(global 2)" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log[-3000:]
    assert "stopped by signal 15" in log
    from alexnet_mp.train import checkpoint as ckpt

    step = ckpt.read_meta(ckpt.latest(tmp_path / "runs" / "tr"))["global_step"]
    assert step >= 2


@pytest.mark.slow
def test_generate_if_missing_makes_the_dataset_first(tmp_path):
    root = tmp_path / "made"
    cfg = config(root, tmp_path, **{"data.generate_if_missing": True, "training.max_steps": 1,
                                    "data.generate_classes": 2, "data.generate_train_per_class": 8,
                                    "data.generate_val_per_class": 2})
    losses, _ = run_trainer(cfg)
    assert len(losses) == 1 and len(list((root / "train").rglob("*.jpg"))) == 16
    assert len(list((root / "val").rglob("*.jpg"))) == 4


def test_bf16_channels_last_training_sends_exchanges_in_the_compute_dtype(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(dataset, tmp_path, **{"training.max_steps": 2, "training.mixed_precision": "bf16",
                                        "parallelism.one_process": "columns",
                                        "training.channels_last": True, "metrics.enable_tensorboard": True,
                                        "metrics.log_freq": 1, "checkpoint.enable": False})
    losses, weights = run_trainer(cfg)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert all(w.dtype == torch.float32 for w in weights.values())  # fp32 master weights
    acc = EventAccumulator(str(tmp_path / "runs" / "t" / "tb"))
    acc.Reload()
    conv3 = acc.Scalars("exchange/conv3/forward_bytes")[-1].value
    assert conv3 == 4 * 21_632 * 2  # batch 4, bf16: half the fp32 figure
