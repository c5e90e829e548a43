"""Failure and recovery: stops that resume bit-identical, one run per folder, divergence, bad
input to the trainer, and checkpoints that cannot run code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from alexnet_mp.commands import main
from alexnet_mp.errors import CheckpointError, ConfigError
from alexnet_mp.parallel.spawn import run_workers
from alexnet_mp.train import checkpoint as ckpt
from alexnet_mp.train import tensorfile
from alexnet_mp.train.trainer import TrainingError

from train_fixtures import ROOT, config, dataset, overrides, run_trainer, torchrun  # noqa: F401

pytestmark = pytest.mark.slow  # nearly every test here trains the network

EXACT = {"training.epochs": 2, "training.max_steps": 17, "checkpoint.interval": 3, "model.dropout": 0.5,
         "optimizer.lr": 0.001}
"""Dropout on, so a resumed run is exact only if the RNG is restored from before the stop."""


def signal_on_call(monkeypatch, target, attr, call: int, sig=signal.SIGTERM):
    """Make ``target.attr``'s ``call``-th call (1-based) send this process ``sig`` first."""
    original, calls = getattr(target, attr), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attr, wrapper)


# --- a stop at any point, then the same command: bit-identical ---------------------------

@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    final = run_trainer(config(dataset, root, **EXACT))[1]
    shutil.rmtree(root)  # only the final weights are compared; its checkpoints would hold 0.9 GB of disk
    return final


@pytest.mark.parametrize("where,call,sig", [
    ("loss", 5, signal.SIGTERM),   # after step 5's forward: dropout has drawn its masks
    ("loss", 12, signal.SIGINT),   # the last step of epoch 1
    ("evaluate", 1, signal.SIGTERM),  # during the validation at the end of epoch 1
])
def test_a_stop_anywhere_resumes_bit_identical(dataset, tmp_path, monkeypatch, uninterrupted, where, call, sig):
    import alexnet_mp.train.trainer as trainer_module

    with monkeypatch.context() as m:
        if where == "loss":
            signal_on_call(m, F, "cross_entropy", call, sig)
        else:
            signal_on_call(m, trainer_module, "evaluate", call, sig)
        first, _ = run_trainer(config(dataset, tmp_path, **EXACT))
    assert len(first) < 17
    second, resumed = run_trainer(config(dataset, tmp_path, **EXACT))
    assert len(first) + len(second) == 17
    for k, v in uninterrupted.items():
        assert torch.equal(v, resumed[k]), k


def _stop_on_rank1(rank, world, cfg, call):
    if rank == 1:
        original, calls = F.cross_entropy, [0]

        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == call:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(*args, **kwargs)

        F.cross_entropy = wrapper
    return run_trainer(cfg)


@pytest.mark.multiprocess
def test_a_stop_on_one_of_two_processes_resumes_bit_identical(dataset, tmp_path):
    straight = run_workers(_stop_on_rank1, 2, (config(dataset, tmp_path / "a", **EXACT), 0), threads=1)
    cfg = config(dataset, tmp_path / "b", **EXACT)
    stopped = run_workers(_stop_on_rank1, 2, (cfg, 7), threads=1)
    assert [len(losses) for losses, _ in stopped] == [7, 7]  # step 7 completes on both, then both stop
    resumed = run_workers(_stop_on_rank1, 2, (cfg, 0), threads=1)
    for rank in range(2):
        for k, v in straight[rank][1].items():
            assert torch.equal(v, resumed[rank][1][k]), (rank, k)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.reference_state(ckpt.latest(run))[0]


def _torchrun_until(args, cwd, marker: str, stop) -> tuple[int, str]:
    """Start torchrun, call ``stop(proc)`` when ``marker`` appears in its output; (status, log)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            stop(proc)
            break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + rest


def _workers_of(proc: subprocess.Popen) -> list[int]:
    """torchrun's children: the worker processes."""
    return [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()]


@pytest.mark.multiprocess
def test_sigterm_under_torchrun_to_the_workers_or_to_torchrun_resumes_bit_identical(dataset, tmp_path):
    """SIGTERM to the workers: they save and torchrun exits 0. SIGTERM to torchrun: it forwards
    the signal, the workers save, and torchrun itself exits 1 with its SignalException (as
    docs/training.md says). Either way the same command resumes to the uninterrupted weights."""
    launch = ["--standalone", "--nproc_per_node=2", str(ROOT / "launch" / "train.py")]
    sets = {"training.epochs": 2, "training.max_steps": 14, "model.dropout": 0.5, "metrics.log_freq": 1,
            "checkpoint.interval": 0, "metrics.projector_images": 0, "validation.ten_crop": "never"}
    straight = torchrun([*launch, *overrides(dataset, tmp_path / "a", **sets)], cwd=tmp_path)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    args = [*launch, *overrides(dataset, tmp_path / "b", **sets)]

    def to_workers(proc):
        for pid in _workers_of(proc):
            os.kill(pid, signal.SIGTERM)

    status, log = _torchrun_until(args, tmp_path, "(global 3)", to_workers)
    assert status == 0 and "stopped by signal 15 after step" in log, log[-3000:]
    status, log = _torchrun_until(args, tmp_path, "(global 9)", lambda proc: proc.send_signal(signal.SIGTERM))
    assert "stopped by signal 15 after step" in log and status == 1 and "SignalException" in log, log[-3000:]
    done = torchrun(args, cwd=tmp_path)
    assert done.returncode == 0 and "finished at step 14" in done.stderr + done.stdout
    a, b = _final_weights(tmp_path / "a" / "runs" / "tr"), _final_weights(tmp_path / "b" / "runs" / "tr")
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


# --- one run per folder --------------------------------------------------------------------

@pytest.mark.multiprocess
def test_a_second_run_with_the_same_name_is_refused_until_the_first_ends(dataset, tmp_path):
    cfg = config(dataset, tmp_path, **{"training.max_steps": 1})
    run_dir = Path(cfg.job.dump_folder) / cfg.job.name
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, sys, time; from alexnet_mp.train.lock import RunLock; "
         f"RunLock(pathlib.Path({str(run_dir)!r})).acquire(); print('held', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {holder.pid} on "):
            run_trainer(cfg)
        assert not ckpt.checkpoint_dir(run_dir).exists() or not any(ckpt.checkpoint_dir(run_dir).iterdir())
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process, nothing is stale
        holder.wait()
    losses, _ = run_trainer(cfg)
    assert len(losses) == 1


def test_the_lock_is_released_on_every_exit(dataset, tmp_path, monkeypatch):
    import alexnet_mp.train.trainer as trainer_module

    cfg = config(dataset, tmp_path, **{"training.max_steps": 2, "debug.inject_nan_at_step": 1})
    with pytest.raises(TrainingError):
        run_trainer(cfg)
    monkeypatch.setattr(trainer_module, "index_dataset", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):  # fails inside the constructor, after the lock
        run_trainer(cfg)
    monkeypatch.undo()
    assert len(run_trainer(config(dataset, tmp_path, **{"training.max_steps": 1}))[0]) == 1


# --- where a run writes ------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["a_file", "/proc/alexnet-mp-cannot-write-here"])
def test_an_unusable_dump_folder_is_named_before_any_work(dataset, tmp_path, folder):
    if folder == "a_file":
        folder = tmp_path / "a_file"
        folder.write_text("not a folder")
    cfg = config(dataset, tmp_path, **{"job.dump_folder": str(folder), "training.max_steps": 1})
    with pytest.raises(ConfigError, match=r"\[job\] dump_folder: cannot create or write the run folder"):
        run_trainer(cfg)


def test_a_full_disk_at_save_names_the_folder_and_keeps_the_last_checkpoint(dataset, tmp_path, monkeypatch):
    run_trainer(config(dataset, tmp_path, **{"training.max_steps": 2}))
    run = tmp_path / "runs" / "t"
    before = ckpt.latest(run)

    def full(path, tensors, metadata):  # some bytes land, then the disk fills up
        Path(path).write_bytes(b"\0" * 4096)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorfile, "write", full)
    with pytest.raises(CheckpointError, match="No space left on device") as err:
        run_trainer(config(dataset, tmp_path, **{"training.max_steps": 4}))
    assert f"The previous checkpoint {before} is untouched" in str(err.value)
    assert ckpt.latest(run) == before and not list(ckpt.checkpoint_dir(run).glob("*.partial"))


def test_a_checkpoint_saved_twice_at_one_step_is_replaced_whole(dataset, tmp_path, monkeypatch):
    """Saving the same step again (a SIGTERM right after an interval save) writes a new folder
    and swaps it in: a crash in the middle leaves the first save intact, not half-overwritten."""
    run_trainer(config(dataset, tmp_path, **{"training.max_steps": 2}))
    latest = ckpt.latest(tmp_path / "runs" / "t")
    files = {p.name: p.read_bytes() for p in latest.iterdir()}
    real_write = tensorfile.write

    def crash(path, tensors, metadata):
        real_write(path, {k: torch.zeros_like(v) for k, v in tensors.items()}, metadata)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(tensorfile, "write", crash)
    meta = {k: v for k, v in json.loads((latest / ckpt.META).read_text()).items() if k not in ("format", "files")}
    model = torch.nn.Linear(1, 1)
    with pytest.raises(CheckpointError, match="Input/output error"):
        ckpt.save(latest.parent.parent, pieces=[ckpt.Piece("model.w", model.weight.detach(), (0, 0), (1, 1))],
                  meta=meta, rank=0)
    assert {p.name: p.read_bytes() for p in latest.iterdir()} == files


# --- divergence and the lr on resume --------------------------------------------------------

def test_a_divergence_sets_aside_the_bad_checkpoints_and_a_lower_lr_resumes_cleanly(dataset, tmp_path):
    diverging = config(dataset, tmp_path, **{"checkpoint.interval": 1, "optimizer.lr": 1.0,
                                             "training.max_steps": 8})
    with pytest.raises(TrainingError, match="not finite") as err:
        run_trainer(diverging)
    run = tmp_path / "runs" / "t"
    aside = sorted(p.name for p in ckpt.checkpoint_dir(run).iterdir())
    assert aside and all(name.endswith(ckpt.DIVERGED) for name in aside), aside  # lr 1.0 ruins step 1's weights
    assert "no healthy checkpoint exists, so the same command starts over" in str(err.value)
    assert "--set optimizer.lr=0.1" in str(err.value)
    losses, weights = run_trainer(config(dataset, tmp_path, **{"checkpoint.interval": 1, "optimizer.lr": 0.001,
                                                               "training.max_steps": 8}))
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    healthy = [ckpt.read_meta(p)["healthy"] for p in ckpt.complete_checkpoints(run)]
    assert healthy[:-1] == [True] * (len(healthy) - 1) and healthy[-1] is None  # the last one is not yet judged


def _weights_at_the_end(rank, world, cfg):
    """(the TrainingError's text or None, this rank's weights) after the run."""
    from alexnet_mp.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        try:
            trainer.train()
            raised = None
        except TrainingError as err:
            raised = str(err)
        return raised, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()


@pytest.mark.multiprocess
def test_a_nan_on_one_rank_only_stops_both_with_the_weights_from_before_it(dataset, tmp_path):
    """Rank 1's loss alone is NaN at step 3: its NaN gradients would reach rank 0 through the
    reduce-scatter, so both ranks must skip that update (the flag is all-reduced) and stop."""
    before = run_workers(_weights_at_the_end, 2, (config(dataset, tmp_path / "a", **{"training.max_steps": 2}),),
                         threads=1)
    nan = config(dataset, tmp_path / "b", **{"training.max_steps": 4, "debug.inject_nan_at_step": 3,
                                             "debug.inject_nan_rank": 1})
    after = run_workers(_weights_at_the_end, 2, (nan,), threads=1)
    for rank in range(2):
        assert before[rank][0] is None and "not finite at step 3" in after[rank][0], after[rank][0]
        for k, v in before[rank][1].items():
            assert torch.equal(v, after[rank][1][k]), (rank, k)


def test_on_resume_the_configs_lr_wins_and_the_run_says_so(dataset, tmp_path, capsys):
    run_trainer(config(dataset, tmp_path, **{"checkpoint.interval": 2, "training.max_steps": 4,
                                             "optimizer.lr": 0.01}))
    capsys.readouterr()
    from alexnet_mp.train.trainer import Trainer

    trainer = Trainer(config(dataset, tmp_path, **{"training.max_steps": 6, "optimizer.lr": 0.002}))
    try:
        trainer.metrics.open(purge_step=trainer.resume() + 1)
        assert trainer.optimizer.param_groups[0]["lr"] == 0.002
    finally:
        trainer.close()
    err = capsys.readouterr().err
    assert "[optimizer] lr = 0.002 in the config, 0.01 in the checkpoint: the config wins" in err


# --- bad input to the trainer and the checkpoint commands ----------------------------------

@pytest.mark.parametrize("make,needle", [
    (lambda p: p.mkdir(), "is a folder; give a TOML file"),
    (lambda p: p.write_bytes(bytes(range(256)) * 4), "is not valid TOML"),
])
@pytest.mark.multiprocess
def test_a_config_that_is_not_toml_is_named(tmp_path, make, needle, capsys):
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        from train import main as launch_main
    finally:
        sys.path.pop(0)
    path = tmp_path / "config.toml"
    make(path)
    assert launch_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and "Traceback" not in err


def test_export_and_filters_to_an_unwritable_place_are_named(dataset, tmp_path):
    run_trainer(config(dataset, tmp_path, **{"training.max_steps": 1}))
    for command in ("export", "filters"):
        out = "/proc/alexnet-mp/out.bin"
        result = CliRunner().invoke(main, [command, str(tmp_path / "runs" / "t"), "--out", out])
        assert result.exit_code == 2 and f"--out {out}: cannot write it" in result.output, result.output


# --- what a checkpoint holds ----------------------------------------------------------------

@pytest.fixture()
def trained(dataset, tmp_path):
    run_trainer(config(dataset, tmp_path, **{"training.max_steps": 2}))
    return tmp_path / "runs" / "t"


def test_checkpoints_are_written_with_tensors_only(trained):
    latest = ckpt.latest(trained)
    keys = ckpt.tensor_keys(latest)
    assert any(k.startswith("optimizer.") and k.endswith(".momentum_buffer") for k in keys)
    assert "rng.rank0.cpu" in keys and keys["model.fc8.weight"] == ((2, 4096), torch.float32)
    assert sorted(p.name for p in latest.iterdir()) == ["meta.json", "rank-0.safetensors"]
    meta = ckpt.read_meta(latest)
    assert meta["optimizer"]["momentum"] == 0.9 and meta["states"]["schedule"]["reductions"] == 0


# --- many machines ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_the_hybrid_trainer_runs_as_two_torchrun_nodes(dataset, tmp_path):
    """docs/scaling.md's multi-node command, with two "nodes" on this machine: a world of 4 =
    2 data-parallel replicas x 2 columns, rendezvous over c10d."""
    port = _free_port()
    sets = overrides(dataset, tmp_path, **{"training.max_steps": 4, "metrics.projector_images": 0,
                                          "validation.ten_crop": "never", "checkpoint.interval": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=drill",
           str(ROOT / "launch" / "train.py"), *sets]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-3000:]
    log = "".join(logs)
    assert "world 4 = 2 data-parallel x 2 columns" in log and "finished at step 4" in log
    meta = ckpt.read_meta(ckpt.latest(tmp_path / "runs" / "tr"))
    assert meta["world_size"] == 4 and meta["states"]["position"]["samples_seen"] == 4 * 4 * 2
