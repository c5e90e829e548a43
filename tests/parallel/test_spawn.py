"""Worker processes started by verify, profile and the tests: nothing listens beyond loopback."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from alexnet_mp.parallel.spawn import run_workers

LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc/net/tcp* print them


def listening_sockets() -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket this process holds, in /proc/net/tcp* hex."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.append((address, int(port, 16)))
    return found


def _worker(rank, world):
    t = torch.ones(1)
    dist.all_reduce(t)  # the connections are up
    return t.item(), listening_sockets()


@pytest.mark.multiprocess
def test_workers_listen_on_loopback_only():
    results = run_workers(_worker, 2)
    assert [total for total, _ in results] == [2.0, 2.0]
    for rank, (_, sockets) in enumerate(results):
        outside = [s for s in sockets if s[0] not in LOOPBACK]
        assert not outside, f"rank {rank} listens beyond loopback: {outside}"
