"""A checkpoint is data: hostile folders, made here, refused by every reader in one line — no
code run, no file outside the folder read, nothing written, no hang, no allocation the file's
bytes did not back — and genuine ones read without any unpickler."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from alexnet_mp import AlexNet
from alexnet_mp.commands import main
from alexnet_mp.errors import CheckpointError
from alexnet_mp.parallel import place_on_device
from alexnet_mp.train import checkpoint as ckpt
from alexnet_mp.train import tensorfile as tf
from alexnet_mp.train.schedule import EpochSchedule
from alexnet_mp.train.trainer import Position

from train_fixtures import dataset  # noqa: F401

CLASSES = 4
MARKER = "alexnet_mp_payload_ran"


def _meta(step: int, **extra) -> dict:
    return {"num_classes": CLASSES, "world_size": 1, "placement": "WholeNetwork", "global_batch": 4, "seed": 0,
            "global_step": step, "optimizer": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005},
            "states": {"position": {"epoch": 0, "step_in_epoch": step, "global_step": step, "samples_seen": 4 * step},
                       "schedule": {"reductions": 0}},
            "healthy": True, "loss": 1.0, "config": {"optimizer": {"lr": 0.01}}, **extra}


def _placement(step: bool = True):
    """The network and its optimizer, after one step (momentum buffers and all) when ``step``."""
    torch.manual_seed(0)
    model = place_on_device(AlexNet(CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if step:
        model(torch.randn(2, 3, 224, 224)).sum().backward()
        optimizer.step()
    return model, optimizer


def _save(run: Path, step: int, model, optimizer) -> Path:
    return ckpt.save(run, pieces=ckpt.pieces_to_save(model, optimizer, 0, model.devices), meta=_meta(step), rank=0)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """Two runs: ``victim`` (what each case alters) and ``other`` (what an attacker would point at)."""
    root = tmp_path_factory.mktemp("genuine")
    model, optimizer = _placement(step=False)  # weights and RNG: half the bytes each case copies
    _save(root / "victim", 2, model, optimizer)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    _save(root / "other", 2, model, optimizer)
    return root


def _copy(genuine: Path, tmp_path: Path) -> Path:
    """The victim's run, its tensor files hard links (each case rewrites a file by :func:`_put`)."""
    run = tmp_path / "run"
    shutil.copytree(genuine / "victim", run, copy_function=lambda a, b: os.link(a, b) if a.endswith(
        ".safetensors") else shutil.copy2(a, b))
    return ckpt.latest(run)


def _put(file: Path, data: bytes | str) -> None:
    """Replace ``file`` (a new inode: the genuine file it may link to stays as it was)."""
    file.unlink()
    file.write_bytes(data.encode() if isinstance(data, str) else data)


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / ckpt.META).read_text())
    edit(meta)
    _put(path / ckpt.META, json.dumps(meta))


def _edit_header(file: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header through ``edit(header)``, the data kept (a new inode)."""
    with open(file, "rb") as old:
        n = int.from_bytes(old.read(8), "little")
        header = json.loads(old.read(n))
        edit(header)
        text = json.dumps(header).encode()
        file.unlink()
        with open(file, "wb") as new:
            new.write(len(text).to_bytes(8, "little") + text)
            shutil.copyfileobj(old, new, 1 << 24)


def _states(meta, **position):
    meta["states"]["position"].update(position)


HOSTILE = {
    # a file named outside the folder, by path or link
    "traversal": lambda p, g: _edit_meta(p, lambda m: m.update(files=["../../../other/checkpoints/step-0000002/"
                                                                       "rank-0.safetensors"])),
    "absolute path": lambda p, g: _edit_meta(p, lambda m: m.update(
        files=[str(ckpt.latest(g / "other") / "rank-0.safetensors")])),
    "symlink out": lambda p, g: ((p / "rank-0.safetensors").unlink(),
                                 (p / "rank-0.safetensors").symlink_to(ckpt.latest(g / "other") / "rank-0.safetensors")),
    "meta.json a symlink to /dev/zero": lambda p, g: ((p / "meta.json").unlink(),
                                                      (p / "meta.json").symlink_to("/dev/zero")),
    # files that would block a reader
    "FIFO as meta.json": lambda p, g: ((p / "meta.json").unlink(), os.mkfifo(p / "meta.json")),
    "FIFO as tensor file": lambda p, g: ((p / "rank-0.safetensors").unlink(), os.mkfifo(p / "rank-0.safetensors")),
    # sizes the bytes do not back
    "meta.json over 1 MB": lambda p, g: _put(p / "meta.json", (p / "meta.json").read_text() + " " * (1 << 20)),
    "header length 2^62": lambda p, g: _poke(p / "rank-0.safetensors", 0, (1 << 62).to_bytes(8, "little")),
    "shape 2^40 (a 4 TiB claim)": lambda p, g: _edit_header(p / "rank-0.safetensors", lambda h: h["model.fc8.bias"].update(
        shape=[1 << 40], data_offsets=[h["model.fc8.bias"]["data_offsets"][0],
                                       h["model.fc8.bias"]["data_offsets"][0] + (4 << 40)])),
    "negative shape": lambda p, g: _edit_header(p / "rank-0.safetensors",
                                                lambda h: h["model.fc8.bias"].update(shape=[-4])),
    "record past the file's end (a bomb)": lambda p, g: _edit_header(p / "rank-0.safetensors", lambda h: h[
        "model.fc8.bias"].update(shape=[1 << 28], data_offsets=[h["model.fc8.bias"]["data_offsets"][0],
                                                                 h["model.fc8.bias"]["data_offsets"][0] + (1 << 30)])),
    "dtype outside the list": lambda p, g: _edit_header(p / "rank-0.safetensors",
                                                        lambda h: h["model.fc8.bias"].update(dtype="OBJECT")),
    "block placed outside its tensor": lambda p, g: _edit_header(p / "rank-0.safetensors", lambda h: h[
        "__metadata__"].update(pieces=json.dumps({**json.loads(h["__metadata__"]["pieces"]), "model.fc8.bias": {
            "key": "model.fc8.bias", "offsets": [2], "shape": [CLASSES]}}))),
    "JSON nested 100,000 deep": lambda p, g: _put(p / "meta.json", "[" * 100_000 + "]" * 100_000),
    # meta.json values alexnet-mp never writes
    "reductions = -3": lambda p, g: _edit_meta(p, lambda m: m["states"]["schedule"].update(reductions=-3)),
    "reductions = 10**400": lambda p, g: _edit_meta(p, lambda m: m["states"]["schedule"].update(reductions=10**400)),
    "negative epoch": lambda p, g: _edit_meta(p, lambda m: _states(m, epoch=-1)),
    "position past the step": lambda p, g: _edit_meta(p, lambda m: _states(m, global_step=10**6)),
    "num_classes = 10**6": lambda p, g: _edit_meta(p, lambda m: m.update(num_classes=10**6)),
    "num_classes = 2*10**12": lambda p, g: _edit_meta(p, lambda m: m.update(num_classes=2 * 10**12)),
    "world_size = 0": lambda p, g: _edit_meta(p, lambda m: m.update(world_size=0)),
    "config.optimizer a string": lambda p, g: _edit_meta(p, lambda m: m["config"].update(optimizer="sgd")),
    "optimizer lr a string": lambda p, g: _edit_meta(p, lambda m: m["optimizer"].update(lr="0.01")),
    "files a string": lambda p, g: _edit_meta(p, lambda m: m.update(files="rank-0.safetensors")),
    "more files than ranks": lambda p, g: _edit_meta(p, lambda m: m.update(files=["rank-0.safetensors"] * 2)),
    "healthy = 'yes'": lambda p, g: _edit_meta(p, lambda m: m.update(healthy="yes")),
    "loss = NaN": lambda p, g: _put(p / "meta.json", (p / "meta.json").read_text().replace('"loss": 1.0', '"loss": NaN')),
}

DAMAGED = {
    "truncated tensor file": lambda p, g: _put(p / "rank-0.safetensors", (p / "rank-0.safetensors").read_bytes()[:-1000]),
    "bytes appended": lambda p, g: _put(p / "rank-0.safetensors", (p / "rank-0.safetensors").read_bytes() + b"\0" * 64),
    "truncated meta.json": lambda p, g: _put(p / "meta.json", (p / "meta.json").read_text()[:100]),
    "tensor file missing": lambda p, g: (p / "rank-0.safetensors").unlink(),
}


def _poke(file: Path, at: int, data: bytes) -> None:
    raw = bytearray(file.read_bytes())
    raw[at:at + len(data)] = data
    _put(file, bytes(raw))


def _resume(path: Path) -> None:
    model, optimizer = _placement(step=False)
    layout = type("L", (), {"rank": 0, "world_size": 1, "dp_rank": 0, "devices": model.devices, "is_main": True,
                            "distributed": False, "control_group": None})()
    position, schedule = Position(), EpochSchedule(base_lr=0.01, factor=0.1, at_epochs=(2,))
    ckpt.Checkpointer(path.parent.parent, placement=model, optimizer=optimizer, layout=layout,
                      states={"position": position, "schedule": schedule}, keep_latest=0,
                      facts={"num_classes": CLASSES, "world_size": 1, "placement": "WholeNetwork", "global_batch": 4,
                             "seed": 0, "config": {}}).resume()


def _readers(path: Path, dataset: Path, tmp_path: Path):
    """Every command that reads a checkpoint, and resume; each raises CheckpointError with its message."""
    for args in (["export", str(path), "--out", str(tmp_path / "m.pt")],
                 ["filters", str(path), "--out", str(tmp_path / "f.png")],
                 ["eval", str(path), "--data", str(dataset), "--loader", "torchvision"]):
        def invoke(args=args):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 2, f"{args[0]} exited {result.exit_code}: {result.output}"
            raise CheckpointError(result.output.strip())
        yield args[0], invoke
    yield "resume", lambda: _resume(path)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(case, genuine, dataset, tmp_path) -> list[str]:
    path = _copy(genuine, tmp_path)
    case(path, genuine)
    before = _tree(tmp_path)
    messages = []
    for name, read in _readers(path, dataset, tmp_path):
        start = time.monotonic()
        with pytest.raises(CheckpointError) as err:
            read()
        message = str(err.value).strip()
        assert time.monotonic() - start < 10, f"{name} took {time.monotonic() - start:.1f}s"
        assert "\n" not in message and "Traceback" not in message, (name, message)
        assert _tree(tmp_path) == before, f"{name} wrote {_tree(tmp_path) - before}"
        messages.append(message)
    return messages


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_checkpoint_is_refused_by_every_reader_in_one_line(name, genuine, dataset, tmp_path):
    for message in _refused(HOSTILE[name], genuine, dataset, tmp_path):
        assert "altered or crafted" in message or "not a regular file" in message, message


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_damaged_checkpoint_is_named_damaged_not_hostile(name, genuine, dataset, tmp_path):
    for message in _refused(DAMAGED[name], genuine, dataset, tmp_path):
        assert "is damaged" in message and "crafted" not in message, message


def test_a_file_of_another_run_is_never_read(genuine, tmp_path):
    """The traversal, absolute and symlink cases would load the *other* run's weights: refused,
    where a reader that followed them would return tensors that differ from the victim's."""
    for name in ("traversal", "absolute path", "symlink out"):
        path = _copy(genuine, tmp_path / name.replace(" ", "_"))
        HOSTILE[name](path, genuine)
        with pytest.raises(CheckpointError, match="inside the folder|symbolic link|plain file name"):
            ckpt.reference_state(path)


def test_an_old_format_checkpoint_with_a_code_gadget_is_refused_unread(genuine, tmp_path):
    """The earlier format's pickled ``.metadata``, here carrying builtins.exec: never unpickled,
    and the message says how to convert a trusted one."""
    path = _copy(genuine, tmp_path)
    marker = tmp_path / MARKER
    code = f"open({str(marker)!r}, 'w').write('ran')"
    payload = b"\x80\x04cbuiltins\nexec\n(X" + len(code).to_bytes(4, "little") + code.encode() + b"tR."
    pickle.loads(payload)  # the gadget is live: plain pickle runs it ...
    assert marker.exists()
    marker.unlink()
    (path / ".metadata").write_bytes(payload)  # a new file: nothing linked
    _edit_meta(path, lambda m: m.update(format="alexnet-mp/checkpoint/3"))
    for command in ("export", "filters"):
        result = CliRunner().invoke(main, [command, str(path), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and "convert-checkpoint" in result.output and "--trust-pickle" in result.output
        assert not marker.exists()
    refused = CliRunner().invoke(main, ["convert-checkpoint", str(path), str(tmp_path / "new")])
    assert refused.exit_code == 2 and "--trust-pickle" in refused.output and not marker.exists()


def test_no_reader_unpickles_anything(genuine, dataset, tmp_path, monkeypatch):
    """The defence as a whole: with every unpickler and torch.load made to fail, a genuine checkpoint
    still exports, draws its filters, evaluates and resumes."""
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint reader unpickled")

    for target, attr in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, attr, refuse)
    path = ckpt.latest(genuine / "victim")
    for args in (["export", str(path), "--out", str(tmp_path / "m.pt")],
                 ["filters", str(path), "--out", str(tmp_path / "f.png")],
                 ["eval", str(path), "--data", str(dataset), "--loader", "torchvision"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    _resume(path)


def test_resume_reads_back_exactly_what_was_saved(genuine):
    model, optimizer = _placement(step=False)
    state, _ = ckpt.reference_state(ckpt.latest(genuine / "victim"))
    for k, v in model.net.state_dict().items():
        assert torch.equal(state[k], v), k


def test_an_unjudged_checkpoint_is_not_the_last_good_one(tmp_path):
    """``healthy: null`` (saved, no loss computed with it yet) is not healthy: after a divergence the
    run resumes from the older, judged one, and the unjudged one is set aside."""
    model, optimizer = _placement(step=False)
    for step, healthy in ((1, True), (2, None), (3, False)):
        path = _save(tmp_path, step, model, optimizer)
        _edit_meta(path, lambda m, h=healthy: m.update(healthy=h))
    assert ckpt.latest_healthy(tmp_path).name == "step-0000001"
    keep, moved = ckpt.set_aside_unhealthy(tmp_path)
    assert keep.name == "step-0000001" and sorted(p.name for p in moved) == [
        "step-0000002" + ckpt.DIVERGED, "step-0000003" + ckpt.DIVERGED]


def test_a_read_blocked_in_resume_ends_on_sigterm(dataset, tmp_path, monkeypatch):
    """A checkpoint on a file system that stops answering: SIGTERM ends the trainer's resume with
    one line, instead of the flag the training loop would check after the read."""
    from train_fixtures import config, run_trainer

    cfg = config(dataset, tmp_path, **{"training.max_steps": 1})
    run_trainer(cfg)
    def blocked(*args):
        time.sleep(15)
        raise AssertionError("SIGTERM did not end the blocked read")

    monkeypatch.setattr(tf, "read_into", blocked)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(CheckpointError, match="stopped by signal 15 while reading"):
            run_trainer(config(dataset, tmp_path, **{"training.max_steps": 2}))
    finally:
        timer.cancel()
    assert time.monotonic() - start < 20


_RSS = """
import resource, sys
from click.testing import CliRunner
from alexnet_mp.commands import main
for path in sys.argv[2:]:
    result = CliRunner().invoke(main, ["export", path, "--out", sys.argv[1]])
    assert result.exit_code == (2 if sys.argv[1] == "-" else 0), result.output
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_bombs_cost_no_more_than_a_genuine_load(genuine, tmp_path):
    """Peak RSS of refusing every size bomb, in one process, within 1.5x that of exporting the genuine
    checkpoint in another: nothing is allocated before its size is compared with the network's."""
    bombs = []
    for name in ("header length 2^62", "shape 2^40 (a 4 TiB claim)", "record past the file's end (a bomb)",
                 "num_classes = 10**6", "num_classes = 2*10**12", "meta.json over 1 MB"):
        path = _copy(genuine, tmp_path / name.replace(" ", "_").replace("*", "x").replace("'", ""))
        HOSTILE[name](path, genuine)
        bombs.append(str(path))

    def peak(out: str, paths: list[str]) -> int:
        run = subprocess.run([sys.executable, "-c", _RSS, out, *paths], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return int(run.stdout.split()[-1])

    genuine_peak = peak(str(tmp_path / "m.pt"), [str(ckpt.latest(genuine / "victim"))])
    assert peak("-", bombs) <= 1.5 * genuine_peak


def test_a_trusted_old_format_checkpoint_converts_exactly(genuine, tmp_path):
    """An earlier version's checkpoint (DCP files, pickled index, format 3, top-level lr), converted
    with --trust-pickle, exports the same weights; the conversion refuses to overwrite."""
    import torch.distributed.checkpoint as dcp

    state, meta = ckpt.reference_state(ckpt.latest(genuine / "victim"))
    old = tmp_path / "old"
    dcp.save({f"model.{k}": v for k, v in state.items()} | {"rng.rank0.cpu": torch.get_rng_state()},
             checkpoint_id=str(old), no_dist=True)
    legacy = {k: v for k, v in meta.items() if k not in ("format", "files", "placement", "global_batch")}
    legacy["batch_size"] = meta["global_batch"]
    (old / ckpt.META).write_text(json.dumps({**legacy, "format": "alexnet-mp/checkpoint/3", "lr": 0.01}))
    result = CliRunner().invoke(main, ["convert-checkpoint", str(old), str(tmp_path / "new"), "--trust-pickle"])
    assert result.exit_code == 0, result.output
    converted, new_meta = ckpt.reference_state(tmp_path / "new")
    assert new_meta["global_step"] == meta["global_step"] and "lr" not in new_meta
    for k, v in state.items():
        assert torch.equal(converted[k], v), k
    again = CliRunner().invoke(main, ["convert-checkpoint", str(old), str(tmp_path / "new"), "--trust-pickle"])
    assert again.exit_code == 2 and "exists" in again.output
