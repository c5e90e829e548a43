"""A checkpoint's ``meta.json``: every fact but the tensors, read as data against a schema.

Each field has a type and a range; a value outside them is named in one line as *altered or
crafted* (alexnet-mp never writes it), a missing field or JSON that does not parse as *damaged*
(what an interrupted write or a bad disk leaves). The file is opened like every file of a
checkpoint (:func:`~.tensorfile.open_inside`): a regular file inside its folder, at most
:data:`MAX_META_BYTES`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import layers as L
from ..errors import CheckpointError
from .tensorfile import damaged, hostile, is_whole, open_inside

FORMAT = "alexnet-mp/checkpoint/4"
OLD_FORMATS = ("alexnet-mp/checkpoint/3",)
"""Formats whose tensors are DCP files with a pickled ``.metadata``: converted, never read."""
META = "meta.json"
MAX_META_BYTES = 1 << 20
MAX_WORLD = 1 << 16
MAX_STEP = 1 << 53
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def whole_in(state: dict, key: str, lo: int, hi: int) -> int:
    """``state[key]`` when it is a whole number in ``[lo, hi]``; ``ValueError`` naming it otherwise."""
    value = state.get(key) if isinstance(state, dict) else None
    if not is_whole(value) or not lo <= value <= hi:
        raise ValueError(f"{key} = {str(value)[:40]} (a whole number from {lo:,} to {hi:,})")
    return value


MAX_REDUCTIONS = 64
"""More lr reductions than any schedule makes (the paper made three): 0.1^64 is below fp32's range."""


def check_position(state: object) -> dict[str, int]:
    """The trainer's position: counts from 0, none past the global step."""
    values = {k: whole_in(state, k, 0, MAX_STEP) for k in ("epoch", "step_in_epoch", "global_step", "samples_seen")}
    if max(values["epoch"], values["step_in_epoch"]) > values["global_step"]:
        raise ValueError(f"position {values} is past its own global_step")
    return values


def check_schedule(state: object) -> None:
    """An lr schedule's state: a reduction count within :data:`MAX_REDUCTIONS`; for the plateau rule
    also its count of evaluations without improvement and its best error rate (or null)."""
    whole_in(state, "reductions", 0, MAX_REDUCTIONS)
    if "bad_evals" in state:
        whole_in(state, "bad_evals", 0, MAX_STEP)
    best = state.get("best")
    if best is not None and (not _number(best) or not 0 <= best <= 1):
        raise ValueError(f"best = {str(best)[:40]} (an error rate from 0 to 1, or null)")


STATES: dict[str, Callable[[object], object]] = {"position": check_position, "schedule": check_schedule}
"""The trainer's JSON states and the rule each is checked by, whoever reads the checkpoint."""


def _check_states(where: Path, meta: dict) -> None:
    for name, check in STATES.items():
        try:
            if name in meta["states"]:
                check(meta["states"][name])
        except ValueError as err:
            raise hostile(where, f"states.{name}: {err}") from None
    position = meta["states"].get("position")
    if position is not None and position["global_step"] != meta["global_step"]:
        raise hostile(where, f"states.position.global_step = {position['global_step']} but global_step = "
                      f"{meta['global_step']}")


def _ints(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: is_whole(v) and lo <= v <= hi), f"a whole number from {lo:,} to {hi:,}"


def _optimizer(v: object) -> bool:
    return (isinstance(v, dict) and all(isinstance(x, (bool, int, float, str, type(None))) for x in v.values())
            and _number(v.get("lr")) and v["lr"] > 0
            and all(_number(v.get(k)) and v[k] >= 0 for k in ("momentum", "weight_decay")))


def _config(v: object) -> bool:
    optimizer = v.get("optimizer", {}) if isinstance(v, dict) else None
    return isinstance(optimizer, dict) and ("lr" not in optimizer or (_number(optimizer["lr"]) and optimizer["lr"] > 0))


FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": (L.classes_accepted, f"an even whole number from 2 to {L.MAX_CLASSES:,}"),
    "world_size": _ints(1, MAX_WORLD),
    "placement": (lambda v: isinstance(v, str) and bool(_NAME.match(v)), "a placement's name"),
    "global_batch": _ints(1, 1 << 30),
    "seed": _ints(0, 1 << 63),
    "global_step": _ints(0, MAX_STEP),
    "optimizer": (_optimizer, "a table of settings with lr > 0, momentum >= 0 and weight_decay >= 0"),
    "states": (lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()), "a table of tables"),
    "healthy": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "loss": (lambda v: v is None or (_number(v) and v >= 0), "a finite number >= 0, or null"),
    "config": (_config, "the run's config as a table, its [optimizer] lr a positive number"),
    "files": (lambda v: isinstance(v, list) and 1 <= len(v) <= MAX_WORLD, "a list of the checkpoint's tensor files"),
}
"""What ``meta.json`` holds besides ``format``: each field's test and, in words, what it accepts."""


def read_json(path: Path, name: str = META) -> Any:
    """``path/name`` parsed, the file opened as every checkpoint file is."""
    f, _ = open_inside(path, name, MAX_META_BYTES)
    with f:
        raw = f.read(MAX_META_BYTES + 1)
    try:
        return json.loads(raw)
    except RecursionError:
        raise hostile(path / name, "its JSON is nested deeper than Python parses") from None
    except ValueError as err:
        raise damaged(path / name, f"not JSON: {str(err)[:120]}") from None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json``, every field checked; one clear line for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (expected <run>/checkpoints/step-N/ "
                              "written by launch/train.py).")
    if not (path / META).exists() and not (path / META).is_symlink():
        raise CheckpointError(f"{path} has no {META}: it is incomplete (a save that did not finish) or not an "
                              "alexnet-mp checkpoint.")
    meta = read_json(path)
    where = path / META
    if not isinstance(meta, dict):
        raise hostile(where, f"it holds {type(meta).__name__}, not a table")
    fmt = meta.get("format")
    if fmt in OLD_FORMATS:
        raise CheckpointError(
            f"{path} is in the format of an earlier alexnet-mp ({fmt}), whose tensor index is a pickle that "
            "could run code when read; it is not loaded. If you trust where it came from, convert it once with "
            f"`alexnet-mp convert-checkpoint {path} NEW_FOLDER --trust-pickle` and use NEW_FOLDER.")
    if fmt != FORMAT:
        raise CheckpointError(f"{path} was not written by this version of alexnet-mp (format {str(fmt)[:60]!r}, "
                              f"expected {FORMAT}).")
    for key, (ok, accepted) in FIELDS.items():
        if key not in meta:
            raise damaged(where, f"{key!r} is missing")
        if not ok(meta[key]):
            raise hostile(where, f"{key} = {str(meta[key])[:80]} (accepted: {accepted})")
    _check_states(where, meta)
    if len(meta["files"]) > meta["world_size"] or len(set(map(str, meta["files"]))) != len(meta["files"]):
        raise hostile(where, f"it lists {len(meta['files'])} tensor files, some twice or more than the world of "
                      f"{meta['world_size']} writes")
    return meta


def is_healthy(path: Path) -> bool:
    """True only when ``meta.json`` says so: unjudged (null), unhealthy or unreadable is not healthy."""
    try:
        meta = read_json(path)
    except CheckpointError:
        return False
    return isinstance(meta, dict) and meta.get("healthy") is True
