"""Run the chosen strategies and assemble the report (schema ``alexnet-mp/profile/1``).

Started from a shell, each strategy gets fresh worker processes from
:func:`alexnet_mp.parallel.spawn.run_workers` (gloo on CPU with one intra-op thread per rank, as
torchrun gives; NCCL with one GPU per rank). Started under torchrun (``WORLD_SIZE`` and
``RANK`` set), the ranks that exist are used instead: each strategy runs on the first
ranks of the world, in a sub-group, and rank 0 writes the report.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

from .. import layers as L
from ..section import Section
from ..errors import UserError
from ..parallel import DIRECTIONS
from ..parallel.devices import rank_device
from ..parallel.spawn import run_workers
from . import analytic, data, strategies
from .measure import RankProfiler, RunSpec
from .strategies import RankContext, Strategy

SCHEMA = "alexnet-mp/profile/1"
CPU_THREADS = 2
"""Cores the two-rank strategies use on CPU (one per rank); ``single`` gets them all."""


@dataclass(kw_only=True, slots=True)
class ProfileConfig(Section):
    """What ``alexnet-mp profile`` was asked for (its command-line options)."""

    strategies: list[str] = field(default_factory=lambda: ["paper"])
    """Strategy names, in the order they are run and listed."""
    batch_size: int = 128
    """The global batch per step (the paper's 128); data parallelism splits it."""
    steps: int = 5
    """Timed steps; times are medians over them."""
    warmup: int = 1
    """Untimed steps before them."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``cpu``, ``cuda`` or ``auto`` (CUDA when enough GPUs for every strategy, else CPU)."""
    data: str = data.SYNTHETIC
    """``synthetic`` or an ImageNet-style folder."""
    num_classes: int = 1000
    """Outputs of fc8 (even)."""
    seed: int = 0
    """Seed of the weights and the synthetic batches."""
    overlap: bool = False
    """Overlap the split's exchanges with compute (``paper``, ``hybrid``)."""

    @classmethod
    def label(cls, key: str) -> str:
        return "--strategy/--compare" if key == "strategies" else super(ProfileConfig, cls).label(key)

    def check(self) -> None:
        self.require("strategies", bool(self.strategies), f"one or more of {', '.join(strategies.available())}")
        self.require("strategies", len(set(self.strategies)) == len(self.strategies), "each strategy listed once")
        self.require("batch_size", self.batch_size >= 1, "a whole number >= 1 (the samples per step)")
        for name in self.strategies:
            parts = strategies.get(name).batch_parts
            self.require("batch_size", self.batch_size % parts == 0,
                         f"a multiple of {parts}: strategy {name!r} splits the batch into {parts} equal parts, one "
                         "per data-parallel device")
        self.require("steps", self.steps >= 1, "a whole number >= 1 (timed steps)")
        self.require("warmup", self.warmup >= 0, "a whole number >= 0 (untimed steps)")
        self.require("num_classes", self.num_classes >= 2 and self.num_classes % L.COLUMNS == 0,
                     f"an even number >= 2 (fc8 splits into {L.COLUMNS} columns)")
        self.require("seed", 0 <= self.seed < 2**63, "a whole number from 0 to 2**63 - 1")
        data.check_source(self.data, self.num_classes)


def under_torchrun() -> bool:
    """True when this process is a rank of a launcher (torchrun sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def resolve_device(cfg: ProfileConfig, gpus: int | None = None) -> str:
    """``cpu`` or ``cuda`` for this run; ``--device cuda`` without CUDA is a UserError."""
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    needed = max(strategies.get(n).processes for n in cfg.strategies)
    if under_torchrun():
        needed = 1  # each torchrun rank drives a GPU (cuda:LOCAL_RANK, shared over gloo when too few)
    if cfg.device == "auto":
        return "cuda" if gpus >= needed else "cpu"
    if cfg.device == "cuda" and gpus == 0:
        raise UserError("--device cuda was asked for, but CUDA is not available here "
                        f"(torch {torch.__version__}); use --device cpu, or auto.")
    # --device cuda with fewer GPUs than ranks: the ranks share them over gloo (parallel/devices.py)
    return cfg.device


def _gpus(device_kind: str) -> int:
    return torch.cuda.device_count() if device_kind == "cuda" else 0


def _torchrun_device(device_kind: str):
    local = int(os.environ.get("LOCAL_RANK", 0))
    return rank_device(local, int(os.environ.get("LOCAL_WORLD_SIZE", local + 1)), _gpus(device_kind))


# --- one rank --------------------------------------------------------------------------

def _worker(rank: int, world: int, name: str, spec: RunSpec, device_kind: str) -> dict:
    """A spawned rank of strategy ``name`` (module-level so spawn can import it)."""
    device = rank_device(rank, world, _gpus(device_kind)).device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    strategy = strategies.get(name)
    ctx = RankContext(rank=rank, world=world, group=dist.group.WORLD, device=device,
                      num_classes=spec.num_classes, seed=spec.seed, overlap=spec.overlap)
    return RankProfiler(strategy, ctx, spec).run()


def _spawned(strategy: Strategy, spec: RunSpec, device_kind: str) -> tuple[list[dict], str]:
    backend = rank_device(0, strategy.processes, _gpus(device_kind)).backend  # gloo where ranks share a GPU
    threads = strategy.threads(spec.cpu_threads) if device_kind == "cpu" else None
    return run_workers(_worker, strategy.processes, (strategy.name, spec, device_kind),
                       backend=backend, threads=threads), backend


def _in_torchrun(strategy: Strategy, spec: RunSpec, device_kind: str) -> tuple[list[dict] | None, str]:
    """Runs ``strategy`` on the first ranks of the launched world; rank 0 gets every result."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world < strategy.processes:
        raise UserError(f"Strategy {strategy.name!r} needs {strategy.processes} ranks and torchrun started "
                        f"{world}; launch with --nproc_per_node (times --nnodes) of at least {strategy.processes}.")
    members = list(range(strategy.processes))
    group = dist.new_group(members) if strategy.processes < world else dist.group.WORLD
    result = None
    if rank in members:
        device = _torchrun_device(device_kind).device
        threads = torch.get_num_threads()
        if device_kind == "cpu":
            torch.set_num_threads(strategy.threads(spec.cpu_threads))
        try:
            ctx = RankContext(rank=rank, world=strategy.processes, group=group, device=device,
                              num_classes=spec.num_classes, seed=spec.seed, overlap=spec.overlap)
            result = RankProfiler(strategy, ctx, spec).run()
        finally:
            torch.set_num_threads(threads)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, result)
    return ([r for r in gathered if r is not None] if rank == 0 else None), dist.get_backend()


# --- the report ------------------------------------------------------------------------

def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _exchange_rows(strategy: Strategy, ranks: list[dict], cfg: ProfileConfig) -> list[dict]:
    """Analytic transfers beside what every rank measured, plus anything that was not expected."""
    expected = strategy.transfers(cfg.batch_size, cfg.num_classes)
    names = {t.name for t in expected}
    rows = []
    for t in expected:
        measured = [r["traffic"].get(t.name, {}).get(t.direction) for r in ranks]
        rows.append(_row(t.name, t.op, t.direction, t.payload, t.wire, measured))
    for r in ranks:
        for name, per in r["traffic"].items():
            for d in DIRECTIONS:
                if name not in names and per[d]["calls"]:
                    measured = [q["traffic"].get(name, {}).get(d) for q in ranks]
                    rows.append(_row(name, "unexpected", d, 0, 0, measured))
                    names.add(name)
    return rows


def _row(name: str, op: str, direction: str, payload: int, wire: int, measured: list[dict | None]) -> dict:
    got = [m or {"bytes": 0, "calls": 0, "seconds": 0.0, "exact_multiple": True} for m in measured]
    return {
        "name": name, "op": op, "direction": direction,
        "analytic_bytes": payload, "wire_bytes": wire,
        "measured_bytes": [m["bytes"] for m in got],
        "calls": [m["calls"] for m in got],
        "seconds": [m["seconds"] for m in got],
        "hidden_seconds": [m.get("hidden_seconds", 0.0) for m in got],
        "bandwidth": [_ratio(m["bytes"], m["seconds"]) for m in got],
        "ratio": [_ratio(m["bytes"], payload) for m in got],
        "exact": all(m["bytes"] == payload and m["exact_multiple"] for m in got),
    }


def summarise(strategy: Strategy, ranks: list[dict], backend: str | None, cfg: ProfileConfig) -> dict:
    """One strategy's JSON object from its ranks' measurements."""
    ranks = sorted(ranks, key=lambda r: r["rank"])
    rows = _exchange_rows(strategy, ranks, cfg)
    peak = [r["memory"]["peak_tensors"] for r in ranks]
    compute = [r["time"]["compute"] for r in ranks]
    sent = [sum(row["measured_bytes"][i] for row in rows) for i in range(len(ranks))]
    balance = None
    if len(ranks) > 1:
        balance = {"compute_time": _ratio(max(compute), min(compute)),
                   "peak_tensors": _ratio(max(peak), min(peak)),
                   "flops": _ratio(max(r["flops"] for r in ranks), min(r["flops"] for r in ranks))}
    return {
        "name": strategy.name,
        "summary": strategy.summary,
        "processes": strategy.processes,
        "backend": backend,
        "batch_per_device": strategy.local_batch(cfg.batch_size),
        "ranks": ranks,
        "exchanges": rows,
        "bytes_per_step": max(sent),
        "analytic_bytes_per_step": sum(t.payload for t in strategy.transfers(cfg.batch_size, cfg.num_classes)),
        "wire_bytes_per_step": sum(t.wire for t in strategy.transfers(cfg.batch_size, cfg.num_classes)),
        "step_time": max(r["time"]["step"] for r in ranks),
        "peak_tensors_per_device": max(peak),
        "parameters_per_device": max(r["memory"]["parameters"] for r in ranks),
        "balance": balance,
        "exact": all(row["exact"] for row in rows),
    }


def compare(results: dict[str, dict]) -> dict:
    """The side-by-side rows and the one-line verdict."""
    rows = [{"name": n, "peak_tensors_per_device": s["peak_tensors_per_device"],
             "parameters_per_device": s["parameters_per_device"], "bytes_per_step": s["bytes_per_step"],
             "wire_bytes_per_step": s["wire_bytes_per_step"], "step_time": s["step_time"]}
            for n, s in results.items()]
    return {"rows": rows, "verdict": verdict(rows)}


def verdict(rows: list[dict]) -> str:
    """Which strategy holds least per device and which sends fewest bytes, as ratios."""
    if len(rows) < 2:
        return ""
    least = min(rows, key=lambda r: r["peak_tensors_per_device"])
    others = [r for r in rows if r is not least]
    parts = [f"{least['name']} holds the least per device ({_mib(least['peak_tensors_per_device'])} peak), "
             + ", ".join(f"{least['peak_tensors_per_device'] / r['peak_tensors_per_device']:.2f}x {r['name']}'s"
                         for r in others)]
    talkers = [r for r in rows if r["bytes_per_step"] > 0]
    if len(talkers) >= 2:
        fewest = min(talkers, key=lambda r: r["bytes_per_step"])
        parts.append(f"{fewest['name']} sends the fewest bytes among those that communicate "
                     f"({_mb(fewest['bytes_per_step'])} per device per step), "
                     + ", ".join(f"{fewest['bytes_per_step'] / r['bytes_per_step']:.3f}x "
                                 f"{r['name']}'s" for r in talkers if r is not fewest))
    fastest = min(rows, key=lambda r: r["step_time"])
    parts.append(f"fastest step here: {fastest['name']} ({fastest['step_time']:.3g} s)")
    return "; ".join(parts) + "."


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def run(cfg: ProfileConfig) -> dict | None:
    """Profile every strategy of ``cfg``; the report, or None on torchrun ranks other than 0."""
    torchrun = under_torchrun()
    device = resolve_device(cfg)
    owned = torchrun and not dist.is_initialized()
    if owned:
        placed = _torchrun_device(device)
        if device == "cuda":
            torch.cuda.set_device(placed.device)
        dist.init_process_group(placed.backend)
    try:
        return _run(cfg, device, torchrun)
    finally:
        if owned:
            dist.destroy_process_group()


def _run(cfg: ProfileConfig, device: str, torchrun: bool) -> dict | None:
    threads = CPU_THREADS if not torchrun else torch.get_num_threads() * L.COLUMNS
    spec = RunSpec(batch_size=cfg.batch_size, steps=cfg.steps, warmup=cfg.warmup, data=cfg.data,
                   num_classes=cfg.num_classes, seed=cfg.seed, cpu_threads=threads, overlap=cfg.overlap)
    results = {}
    for name in cfg.strategies:
        strategy = strategies.get(name)
        ranks, backend = (_in_torchrun if torchrun else _spawned)(strategy, spec, device)
        if ranks is not None:
            results[name] = summarise(strategy, ranks, backend if strategy.processes > 1 else None, cfg)
    if torchrun and dist.get_rank() != 0:
        return None
    return {
        "schema": SCHEMA,
        "config": {"strategies": cfg.strategies, "batch_size": cfg.batch_size, "steps": cfg.steps,
                   "warmup": cfg.warmup, "device": device, "data": cfg.data, "num_classes": cfg.num_classes,
                   "seed": cfg.seed, "overlap": cfg.overlap, "launcher": "torchrun" if torchrun else "spawn",
                   "cpu_threads": threads if device == "cpu" else None},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count(),
                        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                        if torch.cuda.is_available() else []},
        "analytic": analytic.analytic_section(cfg.batch_size, num_classes=cfg.num_classes),
        "strategies": results,
        "comparison": compare(results),
    }
