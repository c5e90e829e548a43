"""The drawing kit under every chart: matplotlib on demand, figure files, and the per-device
memory beside bytes per exchange chart that the profiler and the training run both draw.

matplotlib is imported only when a figure is drawn; without it :func:`require_matplotlib` raises
a :class:`PlotError` that says how to install it. Figures are ``matplotlib.figure.Figure``
objects made without pyplot, so no GUI backend is ever needed. The chart is drawn from plain
bars (:class:`MemoryBar`, :class:`TrafficBar`); every bar carries a ``gid``
(``memory:<group>:<device>:<part>``, ``traffic:<group>:<exchange>``) so a test can read back
what was drawn. :mod:`alexnet_mp.plots` turns each source's numbers into bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

MiB = 2**20
INSTALL = "pip install -e '.[plot]'"
SUFFIXES = {".png": "png", ".svg": "svg"}
"""File suffixes a figure can be written to, and matplotlib's format for each."""

MEMORY_PARTS = {"parameters": "parameters", "gradients": "gradients", "optimizer_state": "momentum",
                "activations": "activations (kept for backward)", "layer_outputs": "layer outputs (analytic, ≤ activations)"}
"""Report keys of the memory parts, in stacking order, and their legend labels."""

_PART_COLOURS = {"parameters": "#4c72b0", "gradients": "#55a868", "optimizer_state": "#8172b2",
                 "activations": "#dd8452", "layer_outputs": "#ccb974", "resident": "#4c72b0",
                 "max_allocated": "#4c72b0"}
GROUP_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
                 "#64b5cd"]


SHORT_DIRECTION = {"forward": "fwd", "backward": "bwd"}
"""How an exchange's direction is written on a chart."""


class PlotError(UserError):
    """matplotlib is missing, or a figure cannot be written where it was asked for."""


def require_matplotlib():
    """The ``matplotlib`` module, or a :class:`PlotError` saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError("Plotting needs matplotlib, which is an optional extra of alexnet-mp and is not installed "
                        f"in this environment; install it with {INSTALL} (or pip install 'matplotlib>=3.7'), "
                        "then run the command again.") from None
    return matplotlib


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported here."""
    try:
        require_matplotlib()
    except PlotError:
        return False
    return True


def new_figure(width: float, height: float):
    """An empty figure of ``width`` x ``height`` inches, laid out by matplotlib; no pyplot."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", dpi=100)


def figure_format(path: str | Path, *, option: str = "--plot") -> str:
    """matplotlib's format for ``path`` (``png`` or ``svg``), or a :class:`PlotError` naming it."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise PlotError(f"{option} {path}: the file name must end in {' or '.join(SUFFIXES)} (the figure is "
                        f"written as PNG or SVG, chosen by the suffix); got {suffix or 'no suffix'}.")
    return SUFFIXES[suffix]


def save_figure(fig, path: str | Path, *, option: str = "--plot") -> None:
    """Write ``fig`` to ``path`` (PNG or SVG by its suffix), atomically."""
    from .files import atomic_write

    fmt = figure_format(path, option=option)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format=fmt, dpi=100), option=option)


# --- per-device memory and bytes per exchange ---------------------------------------------

@dataclass(frozen=True, slots=True)
class MemoryBar:
    """One device's memory: ``parts`` (bytes) stacked in order, and an optional measured peak."""

    group: str
    """The strategy (or run) the device belongs to."""
    device: str
    parts: dict[str, int]
    peak: int | None = None


@dataclass(frozen=True, slots=True)
class TrafficBar:
    """Bytes one device sends at one exchange per step, and the analytic figure when known."""

    group: str
    exchange: str
    bytes: int
    analytic: int | None = None


@dataclass(slots=True)
class Bars:
    memory: list[MemoryBar] = field(default_factory=list)
    traffic: list[TrafficBar] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    """Groups that send nothing (a log axis has no place for zero)."""


def training_bars(per_rank: list[dict], dp_bytes: int = 0, *, group: str = "training") -> Bars:
    """Bars of a training step: each rank's memory as ``metrics.device_memory`` gives it (GiB),
    and the bytes of each exchange and direction column 0 sent (``stats.as_dict()``; both
    columns send the same), plus the data-parallel all-reduce when there is one."""
    from .parallel import DIRECTIONS

    GiB = 2**30
    bars = Bars()
    for r, item in enumerate(per_rank):
        mem = item["memory"]
        if "max_allocated_GiB" in mem:
            parts, peak = {"max_allocated": round(mem["max_allocated_GiB"] * GiB)}, mem.get("max_reserved_GiB")
        else:
            parts, peak = {"resident": round(mem.get("rss_GiB", 0.0) * GiB)}, mem.get("peak_rss_GiB")
        bars.memory.append(MemoryBar(group, f"rank {r}", parts, None if peak is None else round(peak * GiB)))
    stats = per_rank[0]["stats"] if per_rank else {}
    col0 = stats.get("0") or next(iter(stats.values()), {})  # as_dict's keys are strings
    for name, per in col0.items():
        for d in DIRECTIONS:
            if per[d]["bytes"]:
                op = {"forward": "all-gather", "backward": "reduce-scatter"}[d]
                bars.traffic.append(TrafficBar(group, f"{name} {op} {SHORT_DIRECTION[d]}", per[d]["bytes"]))
    if dp_bytes:
        bars.traffic.append(TrafficBar(group, "gradients all-reduce", dp_bytes))
    if not bars.traffic:
        bars.silent.append(group)
    return bars


_PART_LABELS = {**MEMORY_PARTS, "resident": "resident set (RSS)", "max_allocated": "CUDA max allocated"}


def memory_traffic_figure(bars: Bars, *, title: str = "", peak_label: str = "peak (measured)"):
    """Per-device memory (stacked MiB, left) beside bytes per exchange (log scale, right)."""
    rows = max(len(bars.traffic), 4)
    fig = new_figure(12, max(5.0, 0.22 * rows + 2.2))
    mem_ax, tr_ax = fig.subplots(1, 2, width_ratios=[1.05, 1])
    groups = list(dict.fromkeys([b.group for b in bars.memory] + [b.group for b in bars.traffic] + bars.silent))
    colour = {g: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, g in enumerate(groups)}
    _memory_panel(mem_ax, bars, peak_label)
    _traffic_panel(tr_ax, bars, groups, colour)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def _memory_panel(mem_ax, bars: Bars, peak_label: str) -> None:
    """Memory: one stacked bar per device, a gap between groups, each group named under its bars."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    x, pos, last = 0.0, [], None
    for b in bars.memory:
        if last is not None and b.group != last:
            x += 1.0
        pos.append(x)
        x += 1.0
        last = b.group
    seen_parts: list[str] = []
    for xi, b in zip(pos, bars.memory):
        bottom = 0.0
        for part, nbytes in b.parts.items():
            height = nbytes / MiB
            (rect,) = mem_ax.bar(xi, height, bottom=bottom, width=0.8, color=_PART_COLOURS.get(part, "#999999"),
                                 edgecolor="white", linewidth=0.5)
            rect.set_gid(f"memory:{b.group}:{b.device.replace(chr(10), ' ')}:{part}")
            bottom += height
            if part not in seen_parts:
                seen_parts.append(part)
        if b.peak is not None:
            mem_ax.hlines(b.peak / MiB, xi - 0.42, xi + 0.42, colors="black", linewidth=2,
                          gid=f"peak:{b.group}:{b.device.replace(chr(10), ' ')}")
    mem_ax.set_xticks(pos, [b.device for b in bars.memory], fontsize=7)
    names = list(dict.fromkeys(b.group for b in bars.memory))
    centres = [sum(p for p, b in zip(pos, bars.memory) if b.group == g)
               / sum(1 for b in bars.memory if b.group == g) for g in names]
    lines = max((b.device.count("\n") + 1 for b in bars.memory), default=1)
    under = mem_ax.secondary_xaxis(location=0)
    under.set_xticks(centres, names, fontsize=8, fontweight="bold")
    under.tick_params(length=0, pad=6 + 10 * lines)
    mem_ax.set_ylabel("MiB per device")
    mem_ax.set_title("Memory per device", fontsize=11)
    mem_ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=_PART_COLOURS.get(p, "#999999"), label=_PART_LABELS.get(p, p)) for p in reversed(seen_parts)]
    if any(b.peak is not None for b in bars.memory):
        handles.append(Line2D([], [], color="black", linewidth=2, label=peak_label))
    mem_ax.legend(handles=handles, fontsize=8, loc="upper left")
    if bars.memory:
        top = max(max(sum(b.parts.values()), b.peak or 0) for b in bars.memory) / MiB
        mem_ax.set_ylim(0, top * (1.08 + 0.05 * len(handles)))


def _traffic_panel(tr_ax, bars: Bars, groups: list[str], colour: dict[str, str]) -> None:
    """Traffic: one horizontal bar per exchange, top to bottom, coloured by group, log scale."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    ys = list(range(len(bars.traffic)))[::-1]
    for y, t in zip(ys, bars.traffic):
        (rect,) = tr_ax.barh(y, t.bytes, height=0.75, color=colour[t.group])
        rect.set_gid(f"traffic:{t.group}:{t.exchange}")
        tr_ax.text(t.bytes * 1.15, y, format_bytes(t.bytes), va="center", fontsize=7)
    marked = [(y, t.analytic) for y, t in zip(ys, bars.traffic) if t.analytic is not None]
    if marked:
        tr_ax.scatter([a for _, a in marked], [y for y, _ in marked], marker="|", s=140, color="black", zorder=3,
                      linewidths=2, label="analytic (layer table)", gid="analytic")
    tr_ax.set_yticks(ys, [f"{t.group}: {t.exchange}" for t in bars.traffic], fontsize=8)
    if bars.traffic:
        tr_ax.set_xscale("log")
        lo = min(t.bytes for t in bars.traffic if t.bytes) if any(t.bytes for t in bars.traffic) else 1
        hi = max(t.bytes for t in bars.traffic)
        tr_ax.set_xlim(lo / 3, max(hi, 1) * 12)
        tr_ax.set_ylim(-0.7, len(bars.traffic) - 0.3)
    tr_ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
    tr_ax.set_xlabel("bytes one device sends per step (log scale)")
    tr_ax.set_title("Bytes per exchange", fontsize=11)
    tr_ax.grid(axis="x", alpha=0.3)
    legend = [Patch(color=colour[g], label=g) for g in groups if any(t.group == g for t in bars.traffic)]
    legend += [Patch(color="white", label=f"{g}: nothing crosses") for g in bars.silent]
    if marked:
        legend.append(Line2D([], [], color="black", marker="|", linestyle="none", markersize=12, label="analytic"))
    if legend:
        tr_ax.legend(handles=legend, fontsize=8, loc="lower right")


def format_bytes(n: float) -> str:
    """``n`` bytes in GB, MB or kB to three figures."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"
