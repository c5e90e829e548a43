"""Checkpoints with ``torch.distributed.checkpoint``: atomic, keyed by column, and safe to load.

Layout: ``<run>/checkpoints/step-0000123/`` holds DCP's files (``.metadata``,
``__<rank>_0.distcp``) and ``meta.json``.

**Loading never runs code**, whoever wrote the folder:

* DCP holds tensors only — weights, momentum buffers, each rank's RNG state. The trainer's
  position, the lr schedule, the optimizer's hyperparameters and the run's health are JSON
  in ``meta.json``. (DCP stores any non-tensor value with ``torch.save`` and reads it back with
  ``torch.load(weights_only=False)``: an alexnet-mp checkpoint has none, and one whose
  metadata lists one is refused before anything is read.)
* DCP's ``.metadata`` is a pickle; it is read by :class:`SafeReader`, whose unpickler admits
  only DCP's metadata classes, ``torch.Size``, dtypes and paths. Any other global
  (``builtins.exec``, ``os.system``, …) stops the read with a :class:`CheckpointError`
  naming the file, before the reference is ever called.

**Atomic**: DCP overwrites data files in place, so every save goes into a fresh
``step-….partial`` folder that rank 0 renames into place once every rank has finished and
``meta.json`` is written; a folder counts only when it has its ``meta.json`` and no suffix.

**One logical checkpoint, whatever the placement**: the keys are the whole network's
(``model.conv1.weight``, ``optimizer.conv1.weight.momentum_buffer``). One process holding the
whole network saves its tensors as they are; a process holding one column saves its half as a
``DTensor`` shard (``Shard(0)``) over the model-parallel mesh, and DCP reshards on load — so a
checkpoint of two processes resumes in one and back, and ``export`` is a load into the
single-device model. Data-parallel replicas of a column hold the same shard, which DCP writes
once. Each rank's RNG state is its own key (``rng.rank<r>.cpu``).

**Healthy**: a checkpoint's weights are judged by the first loss computed with them — the
next step's forward. ``meta.json`` says ``"healthy": null`` until then; true when every weight
was finite and that loss is finite and below :data:`DIVERGED_LOSS_FACTOR` x chance level,
false otherwise. Rotation (``keep_latest``) never removes the newest healthy checkpoint, and
after a NaN the trainer sets aside every checkpoint newer than it (:func:`set_aside_unhealthy`),
so the same command resumes from weights known to be good.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from ..parallel.columns import column_of
from ..errors import CheckpointError

FORMAT = "alexnet-mp/checkpoint/3"
META = "meta.json"
DIVERGED = ".diverged"
_NAME = re.compile(r"^step-(\d+)$")

DIVERGED_LOSS_FACTOR = 1000.0
"""A loss above this many times chance level (ln C) marks weights unhealthy: healthy runs stay
orders of magnitude below it, a diverging one passes it within a step or two (measurements:
docs/training.md, Failure and recovery)."""

META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str, "num_classes": int, "world_size": int, "batch_size": int, "seed": int, "global_step": int,
    "lr": float, "optimizer": dict, "states": dict, "healthy": (bool, type(None)), "loss": (float, type(None)),
    "config": dict,
}
"""What ``meta.json`` must hold, with the JSON type of each value."""


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


def _healthy(path: Path) -> bool:
    try:
        return json.loads((path / META).read_text()).get("healthy") is True
    except (OSError, ValueError, AttributeError):
        return False


def latest_healthy(run_dir: str | Path) -> Path | None:
    return next((p for p in reversed(complete_checkpoints(run_dir)) if _healthy(p)), None)


# -- reading safely ------------------------------------------------------------------------

def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json``, every field checked; a clear error for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (expected <run>/checkpoints/step-N/ "
                              "written by launch/train.py).")
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {META}: it is incomplete (a save that did not finish) or not an "
                              "alexnet-mp checkpoint.") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / META} is damaged ({err}); use an earlier checkpoint.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by this version of alexnet-mp "
                              f"(format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT}).")
    for key, kind in META_FIELDS.items():
        value = meta.get(key)
        if key not in meta or not _is_a(value, kind):
            raise CheckpointError(f"{path / META} is damaged: {key!r} is {'missing' if key not in meta else repr(value)}, "
                                  f"expected {_kind_name(kind)}; use an earlier checkpoint.")
    if meta["num_classes"] < 2 or meta["num_classes"] % 2:
        raise CheckpointError(f"{path / META} is damaged: num_classes = {meta['num_classes']} (an even number >= 2).")
    return meta


def _is_a(value: Any, kind) -> bool:
    """JSON typing: a bool is not a number, a whole number is a number."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "a whole number", float: "a number", str: "text", bool: "true/false", dict: "a table",
                        type(None): "null"}[k] for k in kinds)


_METADATA_CLASSES = {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                     "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"}
_ALLOWED = {
    **{("torch.distributed.checkpoint.metadata", n): getattr(dcp_metadata, n) for n in _METADATA_CLASSES
       if hasattr(dcp_metadata, n)},
    ("torch", "Size"): torch.Size,
    ("pathlib", "PosixPath"): Path,
    ("pathlib", "PurePosixPath"): Path,
    ("collections", "OrderedDict"): dict,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's own metadata classes, torch.Size, dtypes, layouts and paths — nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo":
            from torch.distributed.checkpoint.filesystem import _StorageInfo

            return _StorageInfo
        if module == "torch.serialization" and name == "_get_layout":
            return _get_layout
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _get_layout(name: str) -> torch.layout:
    layout = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(layout, torch.layout):
        raise pickle.UnpicklingError(f"layout {name!r}")
    return layout


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with ``.metadata`` read by a restricted unpickler, and no pickled values."""

    def read_metadata(self, *args, **kwargs):
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path} refers to {err}, which DCP metadata never holds; refusing to load "
                                  "it (unpickling it could run code). Use a checkpoint from a source you "
                                  "trust.") from None
        except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {err}); use an earlier "
                                  "checkpoint.") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise CheckpointError(f"{path} does not hold DCP metadata (found {type(metadata).__name__}).")
        pickled = sorted(k for k, v in metadata.state_dict_metadata.items()
                         if not isinstance(v, dcp_metadata.TensorStorageMetadata))
        if pickled:
            raise CheckpointError(f"{path} lists pickled (non-tensor) values ({', '.join(pickled[:5])}); an "
                                  "alexnet-mp checkpoint holds tensors only, and reading those values would "
                                  "unpickle them, which can run code. Refusing to load it.")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _TensorsOnly(DefaultLoadPlanner):
    def load_bytes(self, read_item, value) -> None:
        raise CheckpointError(f"refusing to unpickle the stored value {read_item.dest_index.fqn!r}.")


def _load(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Fill ``state``'s tensors in place from the checkpoint at ``path``."""
    tensor_keys(path)  # refuse unsafe metadata here, before DCP's own error handling wraps it
    try:
        dcp.load(state, storage_reader=SafeReader(str(path)), planner=_TensorsOnly(),
                 no_dist=not dist.is_initialized())
    except BaseException as err:  # CheckpointException derives from BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(f"{path} could not be read ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
                              "It may be truncated or from a different model or world layout; nothing was "
                              "overwritten. Remove it to fall back to an earlier checkpoint.") from None


def tensor_keys(path: str | Path) -> dict[str, dcp_metadata.TensorStorageMetadata]:
    """Every tensor a checkpoint holds, read through :class:`SafeReader`."""
    return dict(SafeReader(str(path)).read_metadata().state_dict_metadata)


# -- what is saved -----------------------------------------------------------------------

def _rng_state(rank: int, devices) -> dict[str, torch.Tensor]:
    state = {f"rng.rank{rank}.cpu": torch.get_rng_state()}
    for d in {d for d in devices if d.type == "cuda"}:
        state[f"rng.rank{rank}.cuda{d.index}"] = torch.cuda.get_rng_state(d)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], rank: int) -> None:
    for key, value in state.items():
        where = key.removeprefix(f"rng.rank{rank}.")
        if where == "cpu":
            torch.set_rng_state(value)
        else:
            torch.cuda.set_rng_state(value, int(where.removeprefix("cuda")))


def _logical(placement, mesh, of: Callable[[torch.nn.Parameter], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``of(parameter)`` for every parameter held here, as the whole network's tensors: as they
    are for the whole network, a DTensor shard for one column per process, concatenated copies
    for several columns in one process."""
    held = placement.modules_held()
    if held[0][0] is None:
        return {s.name: of(s.param) for s in placement.shards()}
    if len(held) == 1:
        mesh = mesh or DeviceMesh.from_group(placement.group, placement.devices[0].type)
        return {s.name: DTensor.from_local(of(s.param), mesh, [Shard(0)]) for s in placement.shards()}
    return placement.whole(of)


def _copy_back(placement, loaded: dict[str, torch.Tensor], of) -> None:
    """After loading into concatenated copies (several columns in one process): each column its half."""
    held = placement.modules_held()
    if held[0][0] is None or len(held) == 1:
        return  # loaded in place
    with torch.no_grad():
        for s in placement.shards():
            of(s.param).copy_(column_of(loaded[s.name], s.column))


def _weight(p: torch.nn.Parameter) -> torch.Tensor:
    return p.detach()  # the same storage: DCP loads into it in place


def _momentum(optimizer, create: bool = False) -> Callable[[torch.nn.Parameter], torch.Tensor]:
    def buffer(p: torch.nn.Parameter) -> torch.Tensor:
        state = optimizer.state[p]
        if "momentum_buffer" not in state and create:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]
    return buffer


def _has_momentum(optimizer) -> bool:
    return any(optimizer.state[p].get("momentum_buffer") is not None for g in optimizer.param_groups for p in g["params"])


def tensor_state(placement, optimizer, rank: int, devices, mesh=None) -> dict[str, torch.Tensor]:
    """Everything this rank saves through DCP: weights, momentum buffers, its RNG state."""
    state = {f"model.{k}": v for k, v in _logical(placement, mesh, _weight).items()}
    if _has_momentum(optimizer):
        state |= {f"optimizer.{k}.momentum_buffer": v for k, v in _logical(placement, mesh, _momentum(optimizer)).items()}
    return state | _rng_state(rank, devices)


def optimizer_hyperparameters(optimizer) -> dict[str, Any]:
    """The first param group's settings (lr, momentum, …) as JSON, for ``meta.json``."""
    (group,) = optimizer.param_groups
    return {k: v for k, v in group.items() if k != "params" and isinstance(v, (bool, int, float, str, type(None)))}


def weights_finite(model, distributed: bool) -> bool:
    """True when every weight on every rank is finite."""
    ok = torch.tensor([float(all(bool(torch.isfinite(p).all()) for p in model.parameters()))])
    if distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def loss_is_healthy(loss: float, num_classes: int) -> bool:
    return math.isfinite(loss) and loss < DIVERGED_LOSS_FACTOR * math.log(num_classes)


def mark_health(path: Path, healthy: bool, loss: float) -> None:
    """Record in ``meta.json`` what the first loss computed with the checkpoint's weights said."""
    meta = json.loads((path / META).read_text())
    meta.update(healthy=healthy, loss=loss if math.isfinite(loss) else None)
    _write_json(path / META, meta)


# -- save ----------------------------------------------------------------------------------

def _barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()


def save(run_dir: str | Path, *, tensors: dict[str, torch.Tensor], meta: dict[str, Any], rank: int,
         distributed: bool, keep_latest: int = 0) -> Path:
    """Save atomically as ``step-<global_step>``; returns the folder.

    A failed write (a full or read-only disk) removes the partial folder and raises a
    :class:`CheckpointError`; the checkpoints already there are untouched."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{meta['global_step']:07d}"
    partial = final.with_name(final.name + ".partial")
    try:
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier(distributed)
        dcp.save(tensors, checkpoint_id=str(partial), no_dist=not distributed)
        _barrier(distributed)
        if rank == 0:
            _write_json(partial / META, {"format": FORMAT, **meta})
            _replace_dir(partial, final)
            _fsync_dir(root)
            _rotate(run_dir, keep_latest)
    except BaseException as err:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        cause = _root_cause(err)
        first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
        previous = latest(run_dir)
        raise CheckpointError(
            f"could not write the checkpoint {final} ({type(cause).__name__}: {first}). "
            + (f"The previous checkpoint {previous} is untouched. " if previous else "")
            + f"Free space or make {root} writable (or set [job] dump_folder elsewhere), then run the same "
            "command to resume.") from None
    _barrier(distributed)
    return final


def _root_cause(err: BaseException) -> BaseException:
    """The error a rank actually met: DCP wraps each rank's failure in a CheckpointException whose
    text is a traceback, where the user needs "No space left on device"."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        wrapped = next(iter(failures.values()))
        inner = wrapped[0] if isinstance(wrapped, tuple) and wrapped else wrapped
        if isinstance(inner, BaseException):
            return _root_cause(inner)
    return err


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _replace_dir(partial: Path, final: Path) -> None:
    """Rename ``partial`` to ``final``; an existing ``final`` (the same step saved again, e.g. a
    SIGTERM right after an interval save) is moved aside first and removed only afterwards."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, final)


def _rotate(run_dir, keep_latest: int) -> None:
    """Keep the ``keep_latest`` newest checkpoints and the newest healthy one."""
    if not keep_latest:
        return
    keep = latest_healthy(run_dir)
    for old in complete_checkpoints(run_dir)[:-keep_latest]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def set_aside_unhealthy(run_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """After a divergence: rename the checkpoints newer than the newest healthy one to
    ``step-N.diverged`` so that the same command resumes from the healthy one.
    Returns (the healthy checkpoint or None, the folders set aside)."""
    keep = latest_healthy(run_dir)
    moved = []
    for path in complete_checkpoints(run_dir):
        if keep is None or int(path.name.split("-")[1]) > int(keep.name.split("-")[1]):
            target = path.with_name(path.name + DIVERGED)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(path, target)
            moved.append(target)
    return keep, moved


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- load ----------------------------------------------------------------------------------

def check_compatible(path: Path, meta: dict, expected: dict) -> None:
    """A checkpoint of another network shape cannot be resumed: say which value differs."""
    for key, want in expected.items():
        if meta.get(key) != want:
            raise CheckpointError(f"{path} was written with {key} = {meta.get(key)!r}, but this run has "
                                  f"{key} = {want!r}; resume it with the same setting or use another [job] name.")


def load(path: str | Path, *, placement, optimizer, rank: int, devices, mesh=None) -> dict[str, Any]:
    """Restore the weights, the momentum buffers and this rank's RNG; returns ``meta.json``."""
    path = Path(path)
    meta = read_meta(path)
    stored = tensor_keys(path)
    weights = _logical(placement, mesh, _weight)
    state = {f"model.{k}": v for k, v in weights.items()}
    momentum = {}
    if any(k.startswith("optimizer.") for k in stored):
        momentum = _logical(placement, mesh, _momentum(optimizer, create=True))
        state |= {f"optimizer.{k}.momentum_buffer": v for k, v in momentum.items()}
    rng = {k: torch.empty(tuple(v.size), dtype=torch.uint8) for k, v in stored.items()
           if k.startswith(f"rng.rank{rank}.")}
    _load(path, {**state, **rng})
    _copy_back(placement, weights, _weight)
    if momentum:
        _copy_back(placement, momentum, _momentum(optimizer))
    _set_rng_state(rng, rank)
    return meta


def reference_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The single-device ``AlexNet`` state dict of a checkpoint, read without a process group."""
    from ..model import AlexNet

    path = Path(path)
    meta = read_meta(path)
    with torch.device("meta"):
        shapes = AlexNet(meta["num_classes"]).state_dict()
    state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    _load(path, {f"model.{k}": v for k, v in state.items()})
    return state, meta


class Checkpointer:
    """A run's checkpoints: the placement's weights, the momentum buffers and each rank's RNG
    through DCP; the JSON ``states`` (each with ``state_dict``/``load_state_dict``, DCP's
    Stateful protocol) and the run's facts in ``meta.json``; and each checkpoint's health."""

    def __init__(self, run_dir: Path, *, placement, optimizer, states: dict, layout, facts: dict,
                 keep_latest: int) -> None:
        self.run_dir, self.placement, self.optimizer, self.states = run_dir, placement, optimizer, states
        self.layout, self.facts, self.keep_latest = layout, facts, keep_latest
        self.mesh = layout.mesh["mp"] if layout.mesh is not None else None
        self.saved_at: int | None = None
        self._unjudged: Path | None = None  # the last checkpoint, until a loss has been computed with it

    def save(self, step: int) -> tuple[Path, bool] | None:
        """Save as ``step-<step>`` unless this step is saved already; (folder, weights finite)."""
        if self.saved_at == step:
            return None
        lay = self.layout
        finite = weights_finite(self.placement, lay.distributed)
        meta = {**self.facts, "global_step": step, "lr": self.optimizer.param_groups[0]["lr"],
                "optimizer": optimizer_hyperparameters(self.optimizer),
                "states": {name: state.state_dict() for name, state in self.states.items()},
                "healthy": None if finite else False, "loss": None}
        path = save(self.run_dir, tensors=tensor_state(self.placement, self.optimizer, lay.rank, lay.devices, self.mesh),
                    meta=meta, rank=lay.rank, distributed=lay.distributed, keep_latest=self.keep_latest)
        self.saved_at, self._unjudged = step, (path if finite else None)
        return path, finite

    def judge(self, loss: float) -> None:
        """The first loss computed with the last saved weights says whether they are healthy."""
        if self._unjudged is not None and self.layout.is_main:
            mark_health(self._unjudged, loss_is_healthy(loss, self.facts["num_classes"]), loss)
        self._unjudged = None

    def resume(self) -> tuple[Path, dict] | None:
        """Load the latest checkpoint into the placement, the optimizer and the states."""
        path = latest(self.run_dir)
        if path is None:
            return None
        meta = read_meta(path)
        check_compatible(path, meta, {k: self.facts[k] for k in ("num_classes", "batch_size", "seed")})
        lay = self.layout
        load(path, placement=self.placement, optimizer=self.optimizer, rank=lay.rank, devices=lay.devices,
             mesh=self.mesh)
        try:
            for name, state in self.states.items():
                state.load_state_dict(meta["states"][name])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path / META} is damaged: its states lack {err}; use an earlier checkpoint.") from None
        self.saved_at = meta["global_step"]
        self._unjudged = path if meta["healthy"] is None else None
        return path, meta

    def set_aside_after_divergence(self) -> tuple[Path | None, int]:
        """After a NaN: the checkpoints newer than the newest healthy one are renamed (rank 0);
        returns the checkpoint the next run resumes from and how many were set aside."""
        moved = set_aside_unhealthy(self.run_dir)[1] if self.layout.is_main else []
        if self.layout.distributed:
            dist.barrier()
        return latest_healthy(self.run_dir), len(moved)
