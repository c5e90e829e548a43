"""Checkpoints with ``torch.distributed.checkpoint``, written so a crash never loses the last one.

Layout: ``<run>/checkpoints/step-0000123/`` holds DCP's files and ``meta.json``. DCP is not
atomic (it overwrites data files in place), so every save goes into a fresh
``step-….partial`` folder that rank 0 renames into place once every rank has finished;
a folder counts only when it has its ``meta.json`` and no ``.partial`` suffix.

State keys carry the column (``model.columns.column1.conv1.weight``, optimizer state by
the same names): DCP treats equal keys on different ranks as one replicated tensor, and
the two columns' weights must never be mixed (DESIGN.md section 7). Data-parallel
replicas of a column hold equal values under equal keys, which is what DCP expects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ..convert import from_columns
from ..errors import CheckpointError

FORMAT = "alexnet-mp/checkpoint/1"
META = "meta.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and p.is_dir() and (p / META).is_file()]
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json``; a clear error for anything that is not one of ours."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (expected <run>/checkpoints/step-N/ "
                              "written by launch/train.py).")
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {META}: it is incomplete (a save that did not finish) or not an "
                              "alexnet-mp checkpoint.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / META} is damaged ({err}); use an earlier checkpoint.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by this version of alexnet-mp "
                              f"(format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT}).")
    return meta


def _rng_state(devices: list[torch.device]) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    for d in {d for d in devices if d.type == "cuda"}:
        state[f"cuda{d.index}"] = torch.cuda.get_rng_state(d)
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    for key, value in state.items():
        if key.startswith("cuda"):
            torch.cuda.set_rng_state(value, int(key[4:]))


def _state(model, optimizer, rank: int, devices, trainer: dict, scheduler: dict) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd, "trainer": dict(trainer), "scheduler": dict(scheduler),
            f"rng.rank{rank}": _rng_state(devices)}


def _barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()


def save(run_dir: str | Path, *, model, optimizer, trainer: dict, scheduler: dict, meta: dict, rank: int,
         distributed: bool, devices, keep_latest: int = 0) -> Path:
    """Save atomically as ``step-<global_step>``; returns the folder."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{trainer['global_step']:07d}"
    partial = final.with_name(final.name + ".partial")
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier(distributed)
    dcp.save(_state(model, optimizer, rank, devices, trainer, scheduler), checkpoint_id=str(partial),
             no_dist=not distributed)
    _barrier(distributed)
    if rank == 0:
        tmp = partial / (META + ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, **meta, **trainer}, indent=2))
        os.replace(tmp, partial / META)
        if final.exists():  # the same step saved again (e.g. SIGTERM right after an interval save)
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(root)
        if keep_latest:
            for old in complete_checkpoints(run_dir)[:-keep_latest]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(distributed)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_compatible(path: Path, meta: dict, expected: dict) -> None:
    """A checkpoint of another network shape cannot be resumed: say which value differs."""
    for key, want in expected.items():
        if meta.get(key) != want:
            raise CheckpointError(f"{path} was written with {key} = {meta.get(key)!r}, but this run has "
                                  f"{key} = {want!r}; resume it with the same setting or use another [job] name.")


def load(path: str | Path, *, model, optimizer, rank: int, devices) -> tuple[dict, dict]:
    """Restore model, optimizer and this rank's RNG; returns (trainer, scheduler) states."""
    path = Path(path)
    read_meta(path)
    state = _state(model, optimizer, rank, devices, {}, {})
    trainer_keys = ("epoch", "step_in_epoch", "global_step", "samples_seen", "lr")
    state["trainer"] = {k: 0 for k in trainer_keys}
    state["scheduler"] = {}
    try:
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    except BaseException as err:  # CheckpointException derives from BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"{path} could not be read ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
                              "It may be truncated or from a different model or world layout; nothing was "
                              "overwritten. Remove it to fall back to an earlier checkpoint.") from None
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    # Across processes the loaded param_groups came back without some hyperparameters
    # (KeyError 'momentum' after a restart); the run's own values fill the gaps, and the
    # lr — the one the schedule changes — is restored from the trainer state.
    for group, own in zip(optimizer.param_groups, hyper):
        for k, v in own.items():
            group.setdefault(k, v)
        if "lr" in state["trainer"]:
            group["lr"] = float(state["trainer"]["lr"])
    rng = state.get(f"rng.rank{rank}")
    if rng:
        _set_rng_state(rng)
    return state["trainer"], state["scheduler"]


def reference_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The single-device ``AlexNet`` state dict of a checkpoint, read without a process group."""
    from ..parallel import split_in_one_process

    path = Path(path)
    meta = read_meta(path)
    split = split_in_one_process(["cpu", "cpu"], num_classes=meta["num_classes"])
    state = {"model": split.state_dict()}
    try:
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    except BaseException as err:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"{path} could not be read ({type(err).__name__}: {str(err).splitlines()[0][:300]}); "
                              "it may be truncated.") from None
    columns = [{k.split(".", 2)[2]: v for k, v in state["model"].items() if k.startswith(f"columns.column{c}.")}
               for c in range(2)]
    return from_columns(columns), meta
