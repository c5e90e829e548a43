"""Start N worker processes on this machine, each in its own process group rank.

Used by ``alexnet-mp verify`` / ``profile`` and by the tests: two processes on one CPU are
two devices (gloo); with enough GPUs each rank gets its own (NCCL). Results come back as
pickled return values through files in a private temporary folder (mode 0700) that only
this run writes; a worker's exception is re-raised in the parent with its text.

Nothing listens beyond this machine: the ranks meet through a ``FileStore`` in that folder
(no TCP store server), and gloo's and NCCL's own connections are bound to the loopback
interface (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``).
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import UserError


class WorkerError(RuntimeError):
    """A worker process failed; carries its traceback text."""


def loopback_interface() -> str | None:
    """The name of this machine's loopback interface (``lo`` on Linux, ``lo0`` on macOS)."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n in ("lo", "lo0")), None)


def _entry(rank: int, fn: Callable, world: int, backend: str, outdir: str, args: tuple, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    lo = loopback_interface()
    if lo:
        os.environ.update(GLOO_SOCKET_IFNAME=lo, NCCL_SOCKET_IFNAME=lo)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    result: dict[str, Any]
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        store = dist.FileStore(str(Path(outdir) / "store"), world)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        try:
            result = {"ok": fn(rank, world, *args)}
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except UserError as err:
        result = {"user_error": err}
    except BaseException:  # noqa: BLE001 - report every failure to the parent, then exit
        result = {"error": traceback.format_exc()}
    with open(Path(outdir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def run_workers(fn: Callable[..., Any], world: int = 2, args: tuple = (), *,
                backend: str = "gloo", threads: int | None = None) -> list[Any]:
    """Run ``fn(rank, world, *args)`` on ``world`` fresh processes; return each rank's result.

    ``fn`` must be importable (a module-level function). ``threads`` sets each worker's
    intra-op threads (torchrun uses 1).
    """
    with tempfile.TemporaryDirectory(prefix="alexnet-mp-workers-") as outdir:
        ctx = mp.start_processes(_entry, args=(fn, world, backend, outdir, args, threads),
                                 nprocs=world, join=False, start_method="spawn")
        try:
            while not ctx.join():
                pass
        except mp.ProcessExitedException as err:
            raise WorkerError(f"a worker process died: {err}") from None
        results = []
        for rank in range(world):
            with open(Path(outdir) / f"rank{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
    for rank, r in enumerate(results):
        if "user_error" in r:
            raise r["user_error"]
        if "error" in r:
            raise WorkerError(f"rank {rank} failed:\n{r['error']}")
    return [r["ok"] for r in results]
