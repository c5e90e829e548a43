"""Where the columns live and how their maps travel where the columns meet.

Every placement runs the one network function, :meth:`AlexNet.network`; they differ only in
what they hold and how they answer its meeting places:

* :class:`WholeNetwork` — both columns on one device: the network runs as itself (grouped
  convolutions keep the columns apart), nothing is copied or exchanged;
* :class:`LocalColumns` — every column in this process, each on its own device (the paper's two
  GPUs), or both on one to watch the exchanges: a meeting is a copy between devices;
* :class:`ColumnParallel` — one column in this process, the other column the other rank of a
  process group (or of a device mesh's ``"mp"`` dimension): a meeting is an all-gather, its
  backward a reduce-scatter (:mod:`.mappings`), optionally overlapped with compute (:mod:`.overlap`).

Each reports what crossed to its :class:`~.stats.ExchangeStats` and lists its parameters as
:class:`Shard` s of the whole network's, which is how checkpoints, ``verify`` and the figures
see every placement alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from .. import layers as L
from ..errors import DistributedError
from ..model import AlexNet, Network, run
from .columns import check_reference_state, merge_columns, split_columns, take_column
from .mappings import gather_from_columns, gather_logits, gather_on_devices, mean_of_copies
from .overlap import Overlapped
from .stats import ExchangeStats, record_forward, watch_backward

OVERLAPPABLE = ("conv3", "fc6", "fc7", "fc8")
"""The layers that see both columns: their exchange can travel while they compute."""


@dataclass(frozen=True, slots=True)
class Shard:
    """A parameter held here as a part of the whole network's parameter ``name``."""

    name: str
    column: int | None
    """The column whose half this is, or None when it is the whole tensor (both columns)."""
    param: nn.Parameter
    offsets: tuple[int, ...] | None = None
    """Where ``param`` starts along each dim of the whole tensor; by default from ``column``
    (the whole tensor at 0, or the column's half along dim 0)."""
    writer: bool = True
    """False on all but one of the workers that hold the same part (replicas): one copy is written."""

    def __post_init__(self) -> None:
        if self.offsets is None:
            first = 0 if self.column is None else self.column * self.param.shape[0]
            object.__setattr__(self, "offsets", (first,) + (0,) * (self.param.dim() - 1))

    def of(self, whole: torch.Tensor) -> torch.Tensor:
        """This shard's part of the whole tensor ``whole`` (a view)."""
        for dim, (start, size) in enumerate(zip(self.offsets, self.param.shape)):
            whole = whole.narrow(dim, start, size)
        return whole


class Placement(nn.Module):
    """``forward(images) -> logits`` (all classes, for the loss) and the record of what crossed."""

    stats: ExchangeStats
    devices: list[torch.device]
    """The device of each column held here (one entry per module held)."""

    def modules_held(self) -> list[tuple[int | None, AlexNet]]:
        """(column index, or None for both columns, module) for each network module held here."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self.modules_held()[0][1].num_classes

    @property
    def columns_held(self) -> list[int]:
        return [c for c, _ in self.modules_held()] if self.modules_held()[0][0] is not None else list(range(L.COLUMNS))

    def shards(self) -> list[Shard]:
        return [Shard(n, c, p) for c, m in self.modules_held() for n, p in m.named_parameters()]

    def whole(self, of: Callable[[nn.Parameter], torch.Tensor] = lambda p: p) -> dict[str, torch.Tensor]:
        """``of(parameter)`` for every parameter, as the whole network's tensors on the CPU (every
        column must be held here; across processes, merge each rank's :meth:`own`)."""
        if self.columns_held != list(range(L.COLUMNS)):
            raise ValueError(f"this process holds column(s) {self.columns_held} only: merge each rank's own() instead")
        parts: dict[str, dict[int | None, torch.Tensor]] = {}
        for s in self.shards():
            parts.setdefault(s.name, {})[s.column] = of(s.param).detach()
        return {n: (p[None].cpu() if None in p else merge_columns([p[c] for c in sorted(p)])) for n, p in parts.items()}

    def own(self, of: Callable[[nn.Parameter], torch.Tensor] = lambda p: p) -> dict[int, dict[str, torch.Tensor]]:
        """``of(parameter)`` for every parameter, by column held here, on the CPU."""
        out: dict[int, dict[str, torch.Tensor]] = {}
        for s in self.shards():
            out.setdefault(s.column, {})[s.name] = of(s.param).detach().cpu()
        return out

    def load_reference_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy in a whole-network :class:`AlexNet` state dict (exact; each column takes its half)."""
        check_reference_state(state)
        with torch.no_grad():
            for s in self.shards():
                s.param.copy_(s.of(state[s.name]))


class WholeNetwork(Placement):
    """Both columns on one device: the network runs as itself; nothing is exchanged or copied."""

    def __init__(self, net: AlexNet, device: torch.device | str, stats: ExchangeStats | None = None) -> None:
        super().__init__()
        if net.columns != L.COLUMNS:
            raise ValueError("WholeNetwork takes the whole network; place a column with place_column")
        self.devices = [torch.device(device)]
        self.net = net.to(self.devices[0])
        self.stats = stats if stats is not None else ExchangeStats()

    def modules_held(self):
        return [(None, self.net)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.devices[0], non_blocking=True))


class LocalColumns(Placement):
    """Every column in this process on its own device (the same device twice is fine): at each
    meeting place the columns' maps are copied to one another, and the copies are recorded."""

    def __init__(self, columns: Sequence[AlexNet], devices: Sequence[torch.device | str],
                 stats: ExchangeStats | None = None) -> None:
        super().__init__()
        if len(columns) != L.COLUMNS or len(devices) != L.COLUMNS:
            raise DistributedError(f"One process holding the whole split needs {L.COLUMNS} devices, one per column "
                                   f"(the same device twice is fine); got {len(devices)}: {list(devices)}.")
        self.devices = [torch.device(d) for d in devices]
        self.columns = nn.ModuleList(c.to(d) for c, d in zip(columns, self.devices))
        self.stats = stats if stats is not None else ExchangeStats()

    def modules_held(self):
        return [(c.index, c) for c in self.columns]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        networks = [c.network(x.to(d, non_blocking=True)) for c, d in zip(self.columns, self.devices)]
        return mean_of_copies(lockstep(networks, self._meet))

    def _meet(self, name: str, parts: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        held = list(range(L.COLUMNS))
        fulls = record_forward(self.stats, held, name, parts, lambda: gather_on_devices(parts, self.devices),
                               L.COLUMNS)
        watch_backward(self.stats, held, name, parts, fulls, L.COLUMNS)
        return fulls


class ColumnParallel(Placement):
    """One column in this process; the other columns are the other ranks of ``group``."""

    def __init__(self, column: AlexNet, group: dist.ProcessGroup, device: torch.device | str,
                 stats: ExchangeStats | None = None, overlap: bool = False) -> None:
        super().__init__()
        self.group, self.world = group, dist.get_world_size(group)
        self.devices = [torch.device(device)]
        self.column = column.to(self.devices[0])
        self.stats = stats if stats is not None else ExchangeStats()
        self.overlapped = OVERLAPPABLE if overlap else ()
        for name in self.overlapped:
            setattr(self.column, name, Overlapped(getattr(self.column, name), name, group, self.stats, column.index))

    def modules_held(self):
        return [(self.column.index, self.column)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run(self.column.network(x.to(self.devices[0], non_blocking=True)), self._meet)

    def _meet(self, name: str, maps: torch.Tensor) -> torch.Tensor:
        if name in self.overlapped:
            return maps  # the layer itself gathers, while it computes
        gather = gather_logits if name == L.LOGITS else gather_from_columns
        index = [self.column.index]
        (full,) = record_forward(self.stats, index, name, [maps], lambda: (gather(maps, self.group),), self.world)
        watch_backward(self.stats, index, name, [maps], [full], self.world)
        return full


def lockstep(networks: Sequence[Network],
             meet: Callable[[str, list[torch.Tensor]], Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Drive every column's network together: at each meeting place every column hands in its
    maps and takes back its answer from ``meet``; returns each column's result (the logits)."""
    meetings = [next(n) for n in networks]
    while True:
        answers = meet(meetings[0][0], [maps for _, maps in meetings])
        steps = [_send(n, a) for n, a in zip(networks, answers)]
        if all(done for done, _ in steps):
            return [value for _, value in steps]
        meetings = [value for _, value in steps]


def _send(network: Network, value: torch.Tensor) -> tuple[bool, object]:
    try:
        return False, network.send(value)
    except StopIteration as end:
        return True, end.value


# -- building placements -------------------------------------------------------------------

def place_on_device(net: AlexNet, device: torch.device | str = "cpu", stats: ExchangeStats | None = None) -> WholeNetwork:
    return WholeNetwork(net, device, stats)


def place_columns(net: AlexNet, devices: Sequence[torch.device | str],
                  stats: ExchangeStats | None = None) -> LocalColumns:
    return LocalColumns(split_columns(net), devices, stats)


def place_column(net: AlexNet, group: dist.ProcessGroup | None, device: torch.device | str,
                 stats: ExchangeStats | None = None, overlap: bool = False) -> ColumnParallel:
    """This rank's column of ``net`` (the rank in ``group`` is the column), the rest dropped."""
    _check_group(group)
    return ColumnParallel(take_column(net, dist.get_rank(group)), group, device, stats, overlap)


def _check_group(group: dist.ProcessGroup | None) -> None:
    if not dist.is_available() or not dist.is_initialized() or group is None:
        raise DistributedError(
            "The split across processes needs a process group of 2 ranks, one per column, and none was given "
            f"(torch.distributed is {'initialised' if dist.is_available() and dist.is_initialized() else 'not initialised'}). "
            "Call torch.distributed.init_process_group (torchrun does the rendezvous) and pass the group — "
            "dist.group.WORLD for two processes, or a device mesh's 'mp' sub-group — or hold both columns in "
            "one process with split_in_one_process().")
    size = dist.get_world_size(group)
    if size != L.COLUMNS:
        raise DistributedError(
            f"The split needs a model-parallel process group of exactly {L.COLUMNS} ranks, one per column; the "
            f"group given has {size}. Run with torchrun --nproc_per_node={L.COLUMNS}, or pass a sub-group of "
            f"{L.COLUMNS} ranks (a device mesh's 'mp' dimension) when the world is larger.")


def _auto_devices() -> list[torch.device]:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n >= 2:
        return [torch.device("cuda", 0), torch.device("cuda", 1)]
    return [torch.device("cuda", 0) if n else torch.device("cpu")] * 2


def split_in_one_process(devices: Sequence[torch.device | str] | None = None, *, num_classes: int = 1000,
                         stats: ExchangeStats | None = None, **model_kwargs) -> LocalColumns:
    """Both columns in this process: on ``cuda:0`` and ``cuda:1`` when two GPUs are visible (as the
    paper ran), else both on one device, column by column, their exchanges device copies."""
    return place_columns(AlexNet(num_classes, **model_kwargs), devices or _auto_devices(), stats)


def default_backend() -> Literal["nccl", "gloo"]:
    """NCCL when CUDA is present, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def default_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device the backend of ``group`` drives: this rank's GPU under NCCL, else the CPU."""
    backend = dist.get_backend(group) if dist.is_initialized() else default_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def split_across_processes(group: dist.ProcessGroup | None, *, device: torch.device | str | None = None,
                           num_classes: int = 1000, stats: ExchangeStats | None = None, overlap: bool = False,
                           **model_kwargs) -> ColumnParallel:
    """This rank's column of the split; the other column is the other rank of ``group``."""
    if group is None:
        raise DistributedError(
            "split_across_processes needs the model-parallel process group (2 ranks, one per column) and got "
            "None. Pass dist.group.WORLD when the world is 2, or a device mesh's 'mp' sub-group; to hold both "
            "columns in one process use split_in_one_process().")
    _check_group(group)
    return place_column(AlexNet(num_classes, **model_kwargs), group, device or default_device(group), stats, overlap)
