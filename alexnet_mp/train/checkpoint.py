"""Checkpoints as data: tensors in safetensors files, every other fact in JSON — nothing pickled.

Layout: ``<run>/checkpoints/step-0000123/`` holds ``meta.json`` (the run's facts, its position,
the lr schedule, the optimizer's settings and the checkpoint's health, against a schema:
:mod:`.checkpoint_meta`) and one ``rank-<r>.safetensors`` per process (:mod:`.tensorfile`).

**One logical checkpoint, whatever the placement**: the keys are the whole network's
(``model.conv1.weight``, ``optimizer.conv1.weight.momentum_buffer``). Each process writes the
blocks of those tensors it holds, each at the offsets its ``Shard`` gives in the whole tensor —
the whole tensor for one process holding the network, the dim-0 half of its column for a column
per process, both halves for both columns in one process, a plan's slices by outputs or inputs.
Of blocks held alike by several processes (data-parallel replicas, a plan's replicated tensors)
one copy is written. Loading fills each tensor held here from whichever stored blocks overlap
it, so a checkpoint resumes under another process count or plan, and ``export`` is a load into
the single-device model. Each rank's RNG state is
its own key (``rng.rank<r>.cpu``).

**Read as data**: every file named is a regular file directly inside the folder (no path, no
symbolic link, no FIFO or device), within a size bound; every stored block's dtype and shape
are compared with those of the tensor the network holds *before* a byte is read into it; a
block's bytes are exactly what its shape says, so no record can claim more than the file holds.

**Atomic**: every save goes into a fresh ``step-….partial`` folder that rank 0 renames into
place once every rank has written its file and ``meta.json`` is written; a folder counts only
when it has its ``meta.json`` and no suffix.

**Healthy**: a checkpoint's weights are judged by the first loss computed with them — the
next step's forward. ``meta.json`` says ``"healthy": null`` until then; true when every weight
was finite and that loss is finite and below :data:`DIVERGED_LOSS_FACTOR` x chance level,
false otherwise. Rotation (``keep_latest``) never removes the newest healthy checkpoint, and
after a NaN the trainer sets aside every checkpoint newer than it (:func:`set_aside_unhealthy`),
so the same command resumes from weights known to be good.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.distributed as dist

from .. import layers as L
from ..errors import CheckpointError
from . import tensorfile as tf
from .checkpoint_meta import FORMAT, META, is_healthy, read_json, read_meta, whole_in

__all__ = ["FORMAT", "META", "read_meta", "whole_in", "Checkpointer", "reference_state", "save", "load",
           "write_json"]

DIVERGED = ".diverged"
_NAME = re.compile(r"^step-(\d+)$")

DIVERGED_LOSS_FACTOR = 1000.0
"""A loss above this many times chance level (ln C) marks weights unhealthy: healthy runs stay
orders of magnitude below it, a diverging one passes it within a step or two (measurements:
docs/training.md, Failure and recovery)."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first: folders with a ``meta.json`` of any kind, which
    :func:`read_meta` then accepts or refuses by name (a FIFO in its place is not skipped silently)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and p.is_dir() and os.path.lexists(p / META)]
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def latest_healthy(run_dir: str | Path) -> Path | None:
    return next((p for p in reversed(complete_checkpoints(run_dir)) if is_healthy(p)), None)


# -- what a process holds: blocks of the whole network's tensors ---------------------------

@dataclass(frozen=True, slots=True)
class Piece:
    """A tensor held here as the block of the whole tensor ``key`` that starts at ``offsets``."""

    key: str
    tensor: torch.Tensor
    offsets: tuple[int, ...]
    shape: tuple[int, ...]
    """The whole tensor's shape."""


def model_key(name: str) -> str:
    return f"model.{name}"


def momentum_key(name: str) -> str:
    return f"optimizer.{name}.momentum_buffer"


def _pieces(placement, key: Callable[[str], str], of: Callable[[torch.nn.Parameter], torch.Tensor], *,
            writers: bool = False) -> list[Piece]:
    """``of(parameter)`` for every parameter held (only the writers of replicated ones with
    ``writers``), as blocks of the whole network's tensors at the shard's offsets."""
    whole = _whole_shapes(placement.num_classes)
    return [Piece(key(s.name), of(s.param), tuple(s.offsets), whole[s.name]) for s in placement.shards()
            if s.writer or not writers]


@functools.cache
def _whole_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """The single-device network's tensor shapes: what every placement's blocks are parts of."""
    from ..model import AlexNet

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in AlexNet(num_classes).state_dict().items()}


def whole_piece(key: str, tensor: torch.Tensor) -> Piece:
    """``tensor`` as the whole of ``key``."""
    return Piece(key, tensor, (0,) * tensor.dim(), tuple(tensor.shape))


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


def _weight(p: torch.nn.Parameter) -> torch.Tensor:
    return p.detach()  # the same storage: loading fills it in place


def _momentum(optimizer, create: bool = False) -> Callable[[torch.nn.Parameter], torch.Tensor]:
    def buffer(p: torch.nn.Parameter) -> torch.Tensor:
        state = optimizer.state[p]
        if "momentum_buffer" not in state and create:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]
    return buffer


def _has_momentum(optimizer) -> bool:
    return any(optimizer.state[p].get("momentum_buffer") is not None for g in optimizer.param_groups for p in g["params"])


def pieces_to_save(placement, optimizer, rank: int, devices, *, writes_model: bool = True) -> list[Piece]:
    """Everything this rank saves: its blocks of the weights and momentum buffers (unless another
    replica writes them) and its RNG state."""
    out = []
    if writes_model:
        out += _pieces(placement, model_key, _weight, writers=True)
        if _has_momentum(optimizer):
            out += _pieces(placement, momentum_key, _momentum(optimizer), writers=True)
    return out + [whole_piece(k, v) for k, v in _rng_state(rank, devices).items()]


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
    meta = read_json(path)
    meta.update(healthy=healthy, loss=loss if math.isfinite(loss) else None)
    write_json(path / META, meta)


# -- save ----------------------------------------------------------------------------------

def tensor_file(rank: int) -> str:
    return f"rank-{rank}.safetensors"


def _all_ok(ok: bool, distributed: bool, group) -> bool:
    """True when every rank says ok (a float on the CPU control group: no device sync)."""
    if not distributed:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(flag.item())


def write_pieces(folder: Path, rank: int, pieces: list[Piece]) -> None:
    """One file: each block under a name of its own (a process holding both columns has two
    blocks of a key), and in the header the key, offsets and whole shape of each."""
    seen: dict[str, int] = {}
    names = []
    for p in pieces:
        seen[p.key] = seen.get(p.key, -1) + 1
        names.append(p.key if not seen[p.key] else f"{p.key}#{seen[p.key]}")
    where = {n: {"key": p.key, "offsets": list(p.offsets), "shape": list(p.shape)} for n, p in zip(names, pieces)}
    tf.write(folder / tensor_file(rank), dict(zip(names, (p.tensor for p in pieces))),
             {"format": FORMAT, "pieces": json.dumps(where, separators=(",", ":"))})


def save(run_dir: str | Path, *, pieces: list[Piece], meta: dict[str, Any], rank: int, world_size: int = 1,
         group=None, keep_latest: int = 0) -> Path:
    """Save atomically as ``step-<global_step>``; returns the folder. Every rank calls it with its
    own pieces; ``group`` is a CPU process group over which the ranks agree that all went well.

    A failed write on any rank (a full or read-only disk) removes the partial folder and raises a
    :class:`CheckpointError` on every rank; the checkpoints already there are untouched."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{meta['global_step']:07d}"
    partial = final.with_name(final.name + ".partial")
    distributed = world_size > 1
    error = _attempt(lambda: (shutil.rmtree(partial, ignore_errors=True), partial.mkdir(parents=True))
                     if rank == 0 else None)
    _all_ok(error is None, distributed, group)  # the folder exists before anyone writes into it
    error = error or _attempt(lambda: write_pieces(partial, rank, pieces))
    if _all_ok(error is None, distributed, group) and rank == 0:
        files = [tensor_file(r) for r in range(world_size)]
        error = _attempt(lambda: _finish(partial, final, {"format": FORMAT, **meta, "files": files},
                                         run_dir, keep_latest))
    if not _all_ok(error is None, distributed, group):
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        raise _save_error(final, error, run_dir)
    return final


def _attempt(work: Callable[[], object]) -> BaseException | None:
    """Run ``work``; the error it raised, if any (an interrupt still interrupts)."""
    try:
        work()
    except Exception as err:  # noqa: BLE001 - reported on every rank by save()
        return err
    return None


def _finish(partial: Path, final: Path, meta: dict, run_dir, keep_latest: int) -> None:
    write_json(partial / META, meta)
    _replace_dir(partial, final)
    _fsync_dir(final.parent)
    _rotate(run_dir, keep_latest)


def _save_error(final: Path, error: BaseException | None, run_dir) -> CheckpointError:
    root, previous = final.parent, latest(run_dir)
    if error is None:
        what = "another rank could not write its file; see its message"
    else:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        what = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return CheckpointError(
        f"could not write the checkpoint {final} ({what}). "
        + (f"The previous checkpoint {previous} is untouched. " if previous else "")
        + f"Free space or make {root} writable (or set [job] dump_folder elsewhere), then run the same "
        "command to resume.")


def write_json(path: Path, obj: dict) -> None:
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

@dataclass(frozen=True, slots=True)
class _Block:
    """A stored block of a whole tensor: in which file, where, and where it sits in the whole."""

    file: int
    entry: tf.Entry
    offsets: tuple[int, ...]
    shape: tuple[int, ...]


class Stored:
    """A checkpoint's tensor files, opened and checked: every key's blocks tile its whole tensor."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.files, self.blocks = path, [], {}
        limit = 2 * 8 * L.total_params(meta["num_classes"]) + (1 << 20)  # float64 weights and momentum
        try:
            for name in meta["files"]:
                f, size = tf.open_inside(path, name, limit)
                self.files.append((f, path / name))
                entries, header = tf.read_header(f, size, path / name)
                for key, entry, offsets, shape in _placed(path / name, entries, header):
                    self.blocks.setdefault(key, []).append(_Block(len(self.files) - 1, entry, offsets, shape))
            for key, blocks in self.blocks.items():
                _check_tiles(path, key, blocks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for f, _ in self.files:
            f.close()
        self.files = []

    def __enter__(self) -> Stored:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """The stored tensor ``key`` is the whole tensor the network holds: same shape and dtype."""
        if key not in self.blocks:
            raise CheckpointError(f"{self.path} has no tensor {key!r}: it is not a checkpoint of this network "
                                  "(another alexnet-mp version or a damaged save). Use an earlier checkpoint.")
        b = self.blocks[key][0]
        if b.shape != tuple(shape) or b.entry.dtype != dtype:
            raise CheckpointError(f"{self.path}: {key} is stored as {b.entry.dtype} {list(b.shape)}, but the network "
                                  f"holds {dtype} {list(shape)}; it is a checkpoint of another network shape.")

    def fill(self, piece: Piece) -> None:
        """Copy into ``piece.tensor`` every stored block that overlaps it."""
        self.check(piece.key, piece.shape, piece.tensor.dtype)
        for block in self.blocks[piece.key]:
            f, name = self.files[block.file]
            _copy_overlap(f, name, block, piece)


def _placed(name: Path, entries: dict[str, tf.Entry], header: dict[str, str]) -> list[tuple]:
    """Each block of a file: the whole tensor's key, the block, its offsets in the whole and the whole's shape."""
    try:
        where = json.loads(header.get("pieces", "null"))
    except (ValueError, RecursionError):
        where = None
    if header.get("format") != FORMAT or not isinstance(where, dict) or set(where) != set(entries):
        raise tf.hostile(name, "its header does not say where each of its tensors sits in the network")
    out = []
    for block, entry in entries.items():
        spec = where[block] if isinstance(where[block], dict) else {}
        key, offsets, shape = spec.get("key"), spec.get("offsets"), spec.get("shape")
        ok = isinstance(key, str) and all(isinstance(v, list) and len(v) == len(entry.shape)
                                          and all(tf.is_whole(n) for n in v) for v in (offsets, shape))
        if not ok or not all(0 <= o and o + n <= s for o, n, s in zip(offsets, entry.shape, shape)):
            raise tf.hostile(name, f"{block!r} is placed at {str(offsets)[:60]} in a whole of {str(shape)[:60]}, "
                             f"which does not hold its block of {list(entry.shape)}")
        out.append((key, entry, tuple(offsets), tuple(shape)))
    return out


def _check_tiles(path: Path, key: str, blocks: list[_Block]) -> None:
    """The blocks of ``key`` agree on the whole tensor and cover it once: disjoint, volumes adding up."""
    first = blocks[0]
    if any(b.shape != first.shape or b.entry.dtype != first.entry.dtype for b in blocks):
        raise tf.hostile(path, f"the blocks of {key!r} disagree on the whole tensor's shape or dtype")
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            if all(max(x, y) < min(x + n, y + m)
                   for x, n, y, m in zip(a.offsets, a.entry.shape, b.offsets, b.entry.shape)):
                raise tf.hostile(path, f"two stored blocks of {key!r} overlap")
    if sum(math.prod(b.entry.shape) for b in blocks) != math.prod(first.shape):
        raise tf.hostile(path, f"the stored blocks of {key!r} do not cover its whole tensor {list(first.shape)}")


def _copy_overlap(f: BinaryIO, name: Path, block: _Block, piece: Piece) -> None:
    """Where ``block`` and ``piece`` overlap, read the block's bytes into the piece's tensor —
    straight into it where both regions are contiguous, through a host buffer otherwise."""
    lo = [max(a, b) for a, b in zip(block.offsets, piece.offsets)]
    hi = [min(a + n, b + m) for a, n, b, m in zip(block.offsets, block.entry.shape, piece.offsets, piece.tensor.shape)]
    if any(a >= b for a, b in zip(lo, hi)) or piece.tensor.numel() == 0:
        return
    src = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, block.offsets))
    target = piece.tensor[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, piece.offsets))]
    run = _contiguous_run(block.entry.shape, src)
    size = block.entry.dtype.itemsize
    with torch.no_grad():
        if run is not None and target.device.type == "cpu" and target.is_contiguous():
            tf.read_into(f, block.entry.start + run * size, target, name)
        elif run is not None:
            buffer = torch.empty(target.shape, dtype=target.dtype)
            tf.read_into(f, block.entry.start + run * size, buffer, name)
            target.copy_(buffer)
        else:
            buffer = torch.empty(block.entry.shape, dtype=block.entry.dtype)
            tf.read_into(f, block.entry.start, buffer, name)
            target.copy_(buffer[src])


def _contiguous_run(shape: tuple[int, ...], region: tuple[slice, ...]) -> int | None:
    """The element offset of ``region`` in a row-major tensor of ``shape`` when the region is one
    contiguous run (leading dims of one index, then one partial dim, then full dims), else None."""
    sizes = [r.stop - r.start for r in region]
    j = next((i for i, n in enumerate(sizes) if n != 1), len(sizes) - 1)
    if any(sizes[i] != shape[i] for i in range(j + 1, len(shape))):
        return None
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    return sum(r.start * st for r, st in zip(region, strides))


def check_compatible(path: Path, meta: dict, expected: dict) -> None:
    """A checkpoint of another network shape cannot be resumed: say which value differs."""
    for key, want in expected.items():
        if meta.get(key) != want:
            what = " ([training] batch_size x data-parallel replicas)" if key == "global_batch" else ""
            raise CheckpointError(f"{path} was written with {key} = {meta.get(key)!r}, but this run has "
                                  f"{key} = {want!r}{what}; resume it with the same setting or use another [job] name.")


def load(path: str | Path, *, placement, optimizer, rank: int, devices, meta: dict | None = None) -> dict[str, Any]:
    """Restore the weights, the momentum buffers and (same world size) this rank's RNG; returns ``meta.json``."""
    path = Path(path)
    meta = meta or read_meta(path)
    with Stored(path, meta) as stored:
        weights = _pieces(placement, model_key, _weight)
        for piece in weights:  # every shape compared before anything is read or allocated
            stored.check(piece.key, piece.shape, piece.tensor.dtype)
        momentum = []
        if any(k.startswith("optimizer.") for k in stored.blocks):
            for piece in weights:
                stored.check(momentum_key(piece.key.removeprefix("model.")), piece.shape, piece.tensor.dtype)
            momentum = _pieces(placement, momentum_key, _momentum(optimizer, create=True))
        rng = {k: torch.empty_like(v) for k, v in _rng_state(rank, devices).items()
               if k in stored.blocks and meta["world_size"] == _world()}
        for piece in weights + momentum + [whole_piece(k, v) for k, v in rng.items()]:
            stored.fill(piece)
    _set_rng_state(rng, rank)
    return meta


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def tensor_keys(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor a checkpoint holds: the whole tensor's shape and dtype."""
    path = Path(path)
    with Stored(path, read_meta(path)) as stored:
        return {k: (b[0].shape, b[0].entry.dtype) for k, b in stored.blocks.items()}


def reference_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The single-device ``AlexNet`` state dict of a checkpoint, read without a process group."""
    from ..model import AlexNet

    path = Path(path)
    meta = read_meta(path)
    with torch.device("meta"):
        shapes = AlexNet(meta["num_classes"]).state_dict()
    with Stored(path, meta) as stored:
        for k, v in shapes.items():  # compared before anything is allocated
            stored.check(model_key(k), tuple(v.shape), v.dtype)
        state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()}
        for k, v in state.items():
            stored.fill(whole_piece(model_key(k), v))
    return state, meta


class Checkpointer:
    """A run's checkpoints: the placement's weights, the momentum buffers and each rank's RNG in
    safetensors files; the JSON ``states`` (each with ``state_dict``/``load_state_dict``, the
    Stateful protocol; ``load_state_dict`` raises ``ValueError`` for a value outside its rule) and
    the run's facts in ``meta.json``; and each checkpoint's health."""

    def __init__(self, run_dir: Path, *, placement, optimizer, states: dict, layout, facts: dict,
                 keep_latest: int) -> None:
        self.run_dir, self.placement, self.optimizer, self.states = run_dir, placement, optimizer, states
        self.layout, self.facts, self.keep_latest = layout, facts, keep_latest
        self.saved_at: int | None = None
        self._unjudged: Path | None = None  # the last checkpoint, until a loss has been computed with it

    def save(self, step: int) -> tuple[Path, bool] | None:
        """Save as ``step-<step>`` unless this step is saved already; (folder, weights finite)."""
        if self.saved_at == step:
            return None
        lay = self.layout
        finite = weights_finite(self.placement, lay.distributed)
        meta = {**self.facts, "global_step": step, "optimizer": optimizer_hyperparameters(self.optimizer),
                "states": {name: state.state_dict() for name, state in self.states.items()},
                "healthy": None if finite else False, "loss": None}
        # replicas of a column hold the same blocks: the first writes them (a plan marks its own writers)
        first = lay.dp_rank == 0 or lay.every_rank_a_replica
        pieces = pieces_to_save(self.placement, self.optimizer, lay.rank, lay.devices, writes_model=first)
        path = save(self.run_dir, pieces=pieces, meta=meta, rank=lay.rank, world_size=lay.world_size,
                    group=lay.control_group, keep_latest=self.keep_latest)
        self.saved_at, self._unjudged = step, (path if finite else None)
        return path, finite

    def judge(self, loss: float) -> None:
        """The first loss computed with the last saved weights says whether they are healthy."""
        if self._unjudged is not None and self.layout.is_main:
            mark_health(self._unjudged, loss_is_healthy(loss, self.facts["num_classes"]), loss)
        self._unjudged = None

    def resume(self) -> tuple[Path, dict] | None:
        """Load the latest checkpoint into the states, the placement and the optimizer."""
        path = latest(self.run_dir)
        if path is None:
            return None
        meta = read_meta(path)
        check_compatible(path, meta, {k: self.facts[k] for k in ("num_classes", "global_batch", "seed")})
        self._load_states(path, meta)
        lay = self.layout
        load(path, placement=self.placement, optimizer=self.optimizer, rank=lay.rank, devices=lay.devices, meta=meta)
        self.saved_at = meta["global_step"]
        self._unjudged = path if meta["healthy"] is None else None
        return path, meta

    def _load_states(self, path: Path, meta: dict) -> None:
        """Every state checked by its own rule before any tensor is read."""
        try:
            for name, state in self.states.items():
                if name not in meta["states"]:
                    raise ValueError(f"its states lack {name!r}")
                state.load_state_dict(meta["states"][name])
        except ValueError as err:
            raise CheckpointError(f"{path / META}: {err}. This run cannot continue from it: it was altered or "
                                  "crafted, or this run's [lr_scheduler] no longer admits the state it records; "
                                  "nothing was loaded.") from None

    def set_aside_after_divergence(self) -> tuple[Path | None, int]:
        """After a NaN: the checkpoints newer than the newest healthy one are renamed (rank 0);
        returns the checkpoint the next run resumes from and how many were set aside."""
        moved = set_aside_unhealthy(self.run_dir)[1] if self.layout.is_main else []
        if self.layout.distributed:
            dist.barrier()
        return latest_healthy(self.run_dir), len(moved)
