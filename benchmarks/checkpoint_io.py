"""Checkpoint save and load: this version's format (safetensors + JSON) against DCP's file format,
which checkpoints used before (its ``.metadata`` a pickle), side by side in one process.

The same state both ways: the whole network's weights and momentum buffers (1000 classes) and
the RNG state, from one process holding the network (the shape ``export`` and one GPU use).
Rounds alternate the two formats; the figures are medians and their ratios. Files land in the
page cache, so this times serialisation and the copies around it, not the disk.

    python benchmarks/checkpoint_io.py [--rounds 5] [--dir /tmp/ckpt-bench]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from alexnet_mp import AlexNet
from alexnet_mp.parallel import place_on_device
from alexnet_mp.train import checkpoint as ckpt


def _state():
    torch.manual_seed(0)
    model = place_on_device(AlexNet(1000))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = torch.randn_like(p)
    return model, optimizer


def _meta(step: int) -> dict:
    return {"num_classes": 1000, "world_size": 1, "placement": "WholeNetwork", "global_batch": 128, "seed": 0,
            "global_step": step, "optimizer": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005},
            "states": {}, "healthy": None, "loss": None, "config": {}}


def _dcp_state(model, optimizer) -> dict[str, torch.Tensor]:
    """What the DCP-format checkpoints held, under the same keys."""
    pieces = ckpt.pieces_to_save(model, optimizer, 0, model.devices)
    return {p.key: p.tensor for p in pieces}


def _time(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _round(root: Path, step: int, model, optimizer) -> dict[str, float]:
    new_run, old = root / "new", root / f"dcp-{step}"
    saved = {"new_save": _time(lambda: ckpt.save(new_run, pieces=ckpt.pieces_to_save(model, optimizer, 0, model.devices),
                                                 meta=_meta(step), rank=0))}
    state = _dcp_state(model, optimizer)
    saved["dcp_save"] = _time(lambda: dcp.save(state, checkpoint_id=str(old), no_dist=True))
    path = ckpt.latest(new_run)
    saved["new_load"] = _time(lambda: ckpt.load(path, placement=model, optimizer=optimizer, rank=0,
                                                devices=model.devices))
    saved["dcp_load"] = _time(lambda: dcp.load(state, checkpoint_id=str(old), no_dist=True))
    saved["new_bytes"] = sum(f.stat().st_size for f in path.iterdir())
    saved["dcp_bytes"] = sum(f.stat().st_size for f in old.iterdir())
    shutil.rmtree(old)
    shutil.rmtree(path)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="Where to write (default: a temporary folder).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # DCP's one-process note
    root = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    model, optimizer = _state()
    rounds = [_round(root, step, model, optimizer) for step in range(1, args.rounds + 1)]
    shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"{args.rounds} rounds, AlexNet(1000) weights + momentum + RNG, one process, medians:")
    for what in ("save", "load"):
        print(f"  {what}: safetensors+JSON {med[f'new_{what}']:.3f} s, DCP {med[f'dcp_{what}']:.3f} s, "
              f"ratio {med[f'new_{what}'] / med[f'dcp_{what}']:.3f}")
    print(f"  size: safetensors+JSON {med['new_bytes']:,.0f} B, DCP {med['dcp_bytes']:,.0f} B, "
          f"ratio {med['new_bytes'] / med['dcp_bytes']:.4f}")


if __name__ == "__main__":
    main()
