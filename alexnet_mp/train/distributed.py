"""The process layout of a run: world, device mesh ("dp", "mp"), devices, backend.

Under torchrun each process holds one column; a world of 2 x D is D data-parallel
replicas of the two-column model on a ``("dp", "mp")`` device mesh. A single process
(plain ``python`` or ``torchrun`` with one process) holds both columns.

After ``torchrun --max-restarts`` restarts the workers, a plain ``init_process_group``
against the agent's store failed or hung in ``--standalone`` mode (docs/training.md); a
store prefixed per attempt (``TORCHELASTIC_RESTART_COUNT``) works, so every attempt
rendezvouses afresh.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError, DistributedError
from ..layers import COLUMNS
from ..parallel.devices import RankDevice, rank_device


@dataclass(slots=True)
class Layout:
    """Where this process sits: ranks, groups and the devices of the columns it holds."""

    rank: int = 0
    world_size: int = 1
    dp_rank: int = 0
    dp_size: int = 1
    mp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    devices: list[torch.device] = field(default_factory=list)
    backend: str | None = None
    attempt: int = 0
    mesh: object | None = None
    owns_group: bool = False
    """True when :func:`setup` created the process group (and :func:`teardown` should end it)."""
    control_group: dist.ProcessGroup | None = None
    """Host flags (stop signals, errors) agree over this CPU (gloo) group; None: the default
    group, already gloo. With NCCL a flag on a CUDA tensor would make the host wait for the GPU."""
    placed: RankDevice | None = None
    """This rank's device and backend (:func:`~alexnet_mp.parallel.devices.rank_device`); None in one process."""
    every_rank_a_replica: bool = False
    """Every rank runs its own part of the batch (the 2014 scheme), not a column of a pair."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if not self.distributed:
            where = " and ".join(str(d) for d in self.devices)
            return f"one process holds both columns ({where})"
        if self.every_rank_a_replica:
            return (f"world {self.world_size}, every rank its own part of the batch, backend {self.backend}, this "
                    f"rank: worker {self.rank} on {self.placed.describe() if self.placed else self.devices[0]}")
        return (f"world {self.world_size} = {self.dp_size} data-parallel x {COLUMNS} columns, mesh ('dp', 'mp') "
                f"= ({self.dp_size}, {COLUMNS}), backend {self.backend}, this rank: column "
                f"{self.rank % COLUMNS} of replica {self.dp_rank} on "
                f"{self.placed.describe() if self.placed else self.devices[0]}")


def _want_cuda(device: str) -> bool:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[training] device = \"cuda\" but CUDA is not available here; use \"auto\" or \"cpu\".")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def setup(device: str = "auto", data_parallel: int = 0) -> Layout:
    """Join the process group torchrun describes (if any) and build the mesh."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = _want_cuda(device)
    if world == 1:
        n = torch.cuda.device_count() if cuda else 0
        devices = ([torch.device("cuda", 0), torch.device("cuda", 1)] if n >= 2
                   else [torch.device("cuda", 0)] * 2 if n == 1 else [torch.device("cpu")] * 2)
        if data_parallel > 1:
            raise ConfigError(f"[parallelism] data_parallel = {data_parallel} needs {data_parallel * COLUMNS} "
                              f"processes (torchrun --nproc_per_node={data_parallel * COLUMNS}); this is one process.")
        return Layout(devices=devices)
    if world % COLUMNS:
        raise DistributedError(
            f"The world has {world} processes; the two-column model needs a multiple of {COLUMNS} "
            f"(one process per column, {COLUMNS} x D for D data-parallel replicas). "
            f"Run torchrun --nproc_per_node={COLUMNS} (or 2 x D), or one process to hold both columns.")
    dp = world // COLUMNS
    if data_parallel and data_parallel != dp:
        raise ConfigError(f"[parallelism] data_parallel = {data_parallel} does not match the world: {world} processes "
                          f"give {dp} replicas of {COLUMNS} columns. Set it to {dp} or 0 (derive it).")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    placed = rank_device(local_rank, local_world, torch.cuda.device_count() if cuda else 0)
    backend, dev = placed.backend, placed.device
    if cuda:
        torch.cuda.set_device(dev)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    owns_group = not dist.is_initialized()
    if owns_group:
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        store = _store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                       is_master=rank == 0 and not agent_store)
        dist.init_process_group(backend, store=dist.PrefixStore(f"alexnet-mp/attempt{attempt}", store),
                                rank=rank, world_size=world, timeout=timedelta(minutes=30))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cuda" if cuda else "cpu", (dp, COLUMNS), mesh_dim_names=("dp", "mp"))
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return Layout(rank=rank, world_size=world, dp_rank=mesh.get_local_rank("dp"), dp_size=dp,
                  mp_group=mesh.get_group("mp"), dp_group=mesh.get_group("dp"), devices=[dev], backend=backend,
                  attempt=attempt, mesh=mesh, owns_group=owns_group, control_group=control, placed=placed)


_listeners: list[socket.socket] = []


def _store(host: str, port: int, world: int, *, is_master: bool) -> dist.TCPStore:
    """The rendezvous store; the server (rank 0, when torchrun's agent does not host one)
    listens on ``MASTER_ADDR`` only — TCPStore itself would listen on every interface."""
    timeout = timedelta(minutes=10)
    if not is_master:
        return dist.TCPStore(host, port, world, False, timeout=timeout)
    try:
        listener = socket.create_server((host, port))
    except OSError as err:
        raise DistributedError(f"cannot listen on MASTER_ADDR:MASTER_PORT = {host}:{port} ({err.strerror or err}); "
                               "choose a free port on an address of this machine.") from None
    _listeners.append(listener)  # open as long as the store serves from it
    return dist.TCPStore(host, port, world, True, timeout=timeout, master_listen_fd=listener.fileno())


def teardown(layout: Layout) -> None:
    if layout.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    while _listeners:
        _listeners.pop().close()


def every_rank_a_replica(layout: Layout) -> Layout:
    """The layout of a plan whose workers each run their own part of the batch (the 2014 scheme):
    every rank its own data replica over the whole world, no column pairs to feed alike."""
    if not layout.distributed:
        return layout
    layout.dp_rank, layout.dp_size = layout.rank, layout.world_size
    layout.mp_group, layout.dp_group = None, dist.group.WORLD
    layout.every_rank_a_replica = True
    return layout
