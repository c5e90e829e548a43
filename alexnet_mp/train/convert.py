"""``alexnet-mp convert-checkpoint``: an earlier alexnet-mp checkpoint (DCP files with a pickled
``.metadata``) rewritten in this version's format — for a checkpoint whose source you trust,
since reading the old index means unpickling it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from . import checkpoint as ckpt
from .checkpoint_meta import FORMAT, META, OLD_FORMATS


def convert(old: Path, new: Path) -> dict:
    """Write ``new`` (a fresh folder) from the old-format checkpoint ``old``; returns the new ``meta.json``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        meta = json.loads((old / META).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{old / META} cannot be read ({err}); give the folder of an old checkpoint, "
                        "<run>/checkpoints/step-N.") from None
    if not isinstance(meta, dict) or meta.get("format") not in OLD_FORMATS:
        raise UserError(f"{old} is not an old-format alexnet-mp checkpoint (format "
                        f"{meta.get('format') if isinstance(meta, dict) else '?'!r}; converted: {', '.join(OLD_FORMATS)}).")
    if new.exists():
        raise UserError(f"{new} exists; give a new folder (e.g. {old.parent}/{old.name}-converted) so nothing is replaced.")
    index = dcp.FileSystemReader(str(old)).read_metadata()  # the pickle: the reason for --trust-pickle
    state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in index.state_dict_metadata.items()
             if isinstance(v, TensorStorageMetadata)}
    dcp.load(state, checkpoint_id=str(old), no_dist=True)
    world, meta_batch = meta["world_size"], meta["batch_size"]
    replicas = world // 2 if world > 1 else 1  # the earlier trainer's 2 x D world
    meta = {k: v for k, v in meta.items() if k not in ("format", "lr", "batch_size")}
    meta["global_batch"] = meta_batch * replicas
    meta = {"format": FORMAT, **meta, "placement": "WholeNetwork" if world == 1 else "ColumnParallel",
            "files": [ckpt.tensor_file(0)]}
    partial = new.with_name(new.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ckpt.write_pieces(partial, 0, [ckpt.whole_piece(k, v) for k, v in state.items()])
    ckpt.write_json(partial / META, meta)
    os.replace(partial, new)
    ckpt.read_meta(new)  # what was written passes the schema
    return meta
