"""One logical checkpoint: saved by two processes (a column each), read back exactly by one;
saved by one process, read back exactly by two — weights and momentum, every element."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from alexnet_mp import AlexNet
from alexnet_mp.parallel import place_column, place_columns, place_on_device
from alexnet_mp.parallel.columns import column_of
from alexnet_mp.parallel.spawn import run_workers
from alexnet_mp.train import checkpoint as ckpt

pytestmark = pytest.mark.multiprocess

CLASSES = 4


def _meta(world: int, placement: str) -> dict:
    return {"num_classes": CLASSES, "world_size": world, "placement": placement, "global_batch": 4, "seed": 0,
            "global_step": 1, "optimizer": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}, "states": {},
            "healthy": None, "loss": None, "config": {}}


def _with_momentum(model) -> torch.optim.Optimizer:
    """SGD whose momentum buffers are twice the weights: known, and different from them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        optimizer.state[p]["momentum_buffer"] = 2 * p.detach()
    return optimizer


def _save_columns(rank, world, run: str) -> None:
    torch.manual_seed(7)
    model = place_column(AlexNet(CLASSES), dist.group.WORLD, "cpu")
    optimizer = _with_momentum(model)
    ckpt.save(Path(run), pieces=ckpt.pieces_to_save(model, optimizer, rank, model.devices), meta=_meta(2, "ColumnParallel"),
              rank=rank, world_size=world)


def _load_column(rank, world, path: str) -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(123)  # other weights than the checkpoint's
    model = place_column(AlexNet(CLASSES), dist.group.WORLD, "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ckpt.load(Path(path), placement=model, optimizer=optimizer, rank=rank, devices=model.devices)
    return {"weights": model.own()[rank], "momentum": model.own(lambda p: optimizer.state[p]["momentum_buffer"])[rank]}


def test_two_processes_save_one_checkpoint_that_one_process_reads_exactly(tmp_path):
    run_workers(_save_columns, 2, (str(tmp_path),), threads=1)
    path = ckpt.latest(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "rank-0.safetensors", "rank-1.safetensors"]
    torch.manual_seed(7)
    expected = AlexNet(CLASSES).state_dict()  # the same init, before the split
    state, _ = ckpt.reference_state(path)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    columns = place_columns(AlexNet(CLASSES), ["cpu", "cpu"])
    optimizer = torch.optim.SGD(columns.parameters(), lr=0.01, momentum=0.9)
    ckpt.load(path, placement=columns, optimizer=optimizer, rank=0, devices=columns.devices)
    momentum = columns.whole(lambda p: optimizer.state[p]["momentum_buffer"])
    for k, v in columns.whole().items():
        assert torch.equal(v, expected[k]) and torch.equal(momentum[k], 2 * expected[k]), k


def test_one_process_saves_a_checkpoint_that_two_processes_read_exactly(tmp_path):
    torch.manual_seed(5)
    whole = place_on_device(AlexNet(CLASSES))
    optimizer = _with_momentum(whole)
    path = ckpt.save(tmp_path, pieces=ckpt.pieces_to_save(whole, optimizer, 0, whole.devices),
                     meta=_meta(1, "WholeNetwork"), rank=0)
    expected = whole.whole()
    for rank, got in enumerate(run_workers(_load_column, 2, (str(path),), threads=1)):
        for k, v in expected.items():
            assert torch.equal(got["weights"][k], column_of(v, rank)), (rank, k)
            assert torch.equal(got["momentum"][k], 2 * column_of(v, rank)), (rank, k)
