"""Both columns of one model get the identical batch: duplicated or exchanged halves (gloo, 2 processes)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alexnet_mp.data import build_train_loader

from data_fixtures import cfg_for, tiny_root  # noqa: F401

pytestmark = pytest.mark.multiprocess  # every test here starts worker processes


def _column(rank: int, root: str, tmp, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out = {}
        for feed in ("exchange", "duplicate"):
            cfg = cfg_for(root, tmp, column_feed=feed)
            loader = build_train_loader(cfg, batch_size=6, seed=4, epoch=1, start_step=1, mp_group=dist.group.WORLD)
            out[feed] = [(x, y) for x, y in loader]
        torch.save(out, tmp / f"column{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_both_columns_get_the_single_process_batch(tiny_root, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_column, args=(str(tiny_root), tmp_path, port), nprocs=2, start_method="spawn")
    cols = [torch.load(tmp_path / f"column{r}.pt") for r in range(2)]
    single = list(build_train_loader(cfg_for(tiny_root, tmp_path), batch_size=6, seed=4, epoch=1, start_step=1))
    assert len(single) == 36 // 6 - 1
    for feed in ("exchange", "duplicate"):
        for col in cols:
            assert len(col[feed]) == len(single)
            for (x, y), (sx, sy) in zip(col[feed], single):
                assert x.shape == (6, 3, 224, 224)
                assert torch.equal(x, sx) and torch.equal(y, sy), feed
