"""The record of what crossed between the columns: bytes, calls and seconds per exchange.

The exchange Functions (:mod:`.mappings`) only move tensors; the placements report to an
:class:`ExchangeStats` around them: :func:`record_forward` times a gather, and
:func:`watch_backward` times its dual in backward with two gradient hooks — one on the
gathered tensor (its gradient has arrived: the reduce-scatter starts) and one on the input
(its gradient is ready: the reduce-scatter is done).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

DIRECTIONS = ("forward", "backward")


@dataclass(slots=True)
class Traffic:
    """What one column sent in one direction of one exchange."""

    bytes: int = 0
    calls: int = 0
    seconds: float = 0.0
    """Time the column spent waiting for the exchange."""
    hidden_seconds: float = 0.0
    """Time the exchange was in flight while the column computed (overlapped exchanges only)."""


@dataclass(slots=True)
class ExchangeStats:
    """Bytes, calls and seconds per column, exchange and direction since the last reset.

    The profiler, verify and TensorBoard read this object; ``layers.exchange_bytes`` gives the
    analytic figure each entry must equal.
    """

    sync_cuda: bool = False
    """Synchronise CUDA around each exchange so ``seconds`` is the transfer, not the launch."""
    records: dict = field(default_factory=dict)

    def record(self, column: int, name: str, direction: str, nbytes: int, seconds: float,
               hidden: float = 0.0) -> None:
        t = self.records.setdefault(column, {}).setdefault(name, {d: Traffic() for d in DIRECTIONS})[direction]
        t.bytes += nbytes
        t.calls += 1
        t.seconds += seconds
        t.hidden_seconds += hidden

    def reset(self) -> None:
        self.records.clear()

    def columns(self) -> list[int]:
        return sorted(self.records)

    def bytes(self, column: int, direction: str) -> dict[str, int]:
        """Bytes sent by ``column`` per exchange in one direction."""
        return {name: t[direction].bytes for name, t in self.records.get(column, {}).items()}

    def total_bytes(self, column: int | None = None) -> int:
        cols = self.columns() if column is None else [column]
        return sum(t[d].bytes for c in cols for t in self.records.get(c, {}).values() for d in DIRECTIONS)

    def as_dict(self) -> dict:
        """``{column: {exchange: {direction: {bytes, calls, seconds, hidden_seconds}}}}`` with string keys."""
        return {str(c): {n: {d: asdict(t[d]) for d in DIRECTIONS} for n, t in per.items()}
                for c, per in sorted(self.records.items())}

    def clock(self, tensors: Sequence[torch.Tensor]) -> float:
        """The time now, after the queued CUDA work on ``tensors`` when ``sync_cuda``."""
        if self.sync_cuda and any(t.is_cuda for t in tensors):
            torch.cuda.synchronize()
        return time.perf_counter()


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def record_forward(stats: ExchangeStats, columns: Sequence[int], name: str, parts: Sequence[torch.Tensor],
                   exchange: Callable[[], Sequence[torch.Tensor]], world: int) -> Sequence[torch.Tensor]:
    """Run ``exchange()`` and record that each held column sent its part to the ``world - 1`` others."""
    start = stats.clock(parts)
    fulls = exchange()
    seconds = (stats.clock(fulls) - start) / len(parts)
    for column, part in zip(columns, parts):
        stats.record(column, name, "forward", nbytes(part) * (world - 1), seconds)
    return fulls


def watch_backward(stats: ExchangeStats, columns: Sequence[int], name: str, parts: Sequence[torch.Tensor],
                   fulls: Sequence[torch.Tensor], world: int) -> None:
    """Record the exchange's backward (a reduce-scatter of the same volume) when it runs."""
    if not all(t.requires_grad for t in (*parts, *fulls)):
        return
    started: list[float] = []
    pending = [len(fulls)]
    sizes = [nbytes(p) * (world - 1) for p in parts]

    def arrived(grad: torch.Tensor) -> None:  # a gathered tensor's gradient: the exchange starts
        pending[0] -= 1
        if pending[0] == 0:
            started.append(stats.clock([grad]))

    def done(column: int, size: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:  # this column's part has its gradient: it is over
            seconds = stats.clock([grad]) - started[0] if started else 0.0
            stats.record(column, name, "backward", size, seconds / len(parts))
        return hook

    for full in fulls:
        full.register_hook(arrived)
    for column, part, size in zip(columns, parts, sizes):
        part.register_hook(done(column, size))


def record_crossing(stats: ExchangeStats, key: int, name: str, x: torch.Tensor,
                    exchange: Callable[[torch.Tensor], torch.Tensor], forward: int, backward: int) -> torch.Tensor:
    """``exchange(x)``, recorded under ``key``. ``forward`` / ``backward``: how many times its tensor's bytes
    the worker hands the collective in each direction (``W - 1`` for a gather or reduce-scatter, 1 for an
    all-reduce, 0 where nothing crosses); the backward is timed from the gradient reaching the result
    to it reaching ``x``, and counted from the gradient itself."""
    start = stats.clock([x])
    y = exchange(x)
    if forward:
        stats.record(key, name, "forward", nbytes(x) * forward, stats.clock([y]) - start)
    if backward and x.requires_grad and y.requires_grad:
        arrived: list[float] = []
        y.register_hook(lambda g: arrived.append(stats.clock([g])))
        x.register_hook(lambda g: stats.record(key, name, "backward", nbytes(g) * backward,
                                               stats.clock([g]) - arrived[0] if arrived else 0.0))
    return y
