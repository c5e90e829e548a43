"""Figures where people would rather look than read, drawn with matplotlib (the ``plot`` extra).

One module for every chart: ``alexnet-mp profile --plot``, the training run's TensorBoard
figure and the notebook (docs/notebook.py) all draw through it. matplotlib is imported only
when a figure is drawn; without it :func:`require_matplotlib` raises a :class:`PlotError`
that says how to install it. Figures are ``matplotlib.figure.Figure`` objects made without
pyplot, so no GUI backend is ever needed.

The per-device memory and traffic chart is drawn from plain bars (:class:`MemoryBar`,
:class:`TrafficBar`) that each source turns its numbers into: a profile report
(:func:`report_bars`), the analytic figures of the layer table (:func:`analytic_bars`) and a
training step's gathered memory and exchange records (:func:`training_bars`). Every bar
carries a ``gid`` (``memory:<group>:<device>:<part>``, ``traffic:<group>:<exchange>``) so a
test can read back what was drawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import layers as L
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
_GROUP_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
                  "#64b5cd"]


_DIR = {"forward": "fwd", "backward": "bwd"}


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
    try:
        require_matplotlib()
    except PlotError:
        return False
    return True


def _figure(width: float, height: float):
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


def _device_label(rank: dict) -> str:
    return f"rank {rank['rank']}" + (f"\ncol {rank['column']}" if rank.get("column") is not None else "")


def report_bars(report: dict) -> Bars:
    """Bars of a profile report (schema ``alexnet-mp/profile/1``): each rank's measured memory
    parts and peak; each exchange row's bytes as the busiest rank sent them, beside the analytic."""
    bars = Bars()
    for name, s in report["strategies"].items():
        for r in s["ranks"]:
            m = r["memory"]
            bars.memory.append(MemoryBar(name, _device_label(r),
                                         {k: m[k] for k in ("parameters", "gradients", "optimizer_state",
                                                            "activations")},
                                         m["peak_tensors"]))
        for e in s["exchanges"]:
            bars.traffic.append(TrafficBar(name, f"{e['name']} {e['op']} {_DIR[e['direction']]}",
                                           max(e["measured_bytes"]), e["analytic_bytes"]))
        if not s["exchanges"]:
            bars.silent.append(name)
    return bars


def analytic_bars(batch_size: int, names: Iterable[str] = ("paper", "single", "data-parallel", "hybrid"), *,
                  num_classes: int = 1000) -> Bars:
    """Bars from the layer table alone (no run): each device's parameters, gradients, momentum
    and layer outputs (:func:`alexnet_mp.profile.strategies.device_memory`), and every analytic
    transfer of a step at ``batch_size``."""
    from .profile import strategies

    bars = Bars()
    for name in names:
        s = strategies.get(name)
        for rank, parts in enumerate(strategies.device_memory(name, batch_size, num_classes=num_classes)):
            column = rank % L.COLUMNS if s.processes // s.batch_parts == L.COLUMNS else None
            bars.memory.append(MemoryBar(name, _device_label({"rank": rank, "column": column}), parts))
        transfers = s.transfers(batch_size, num_classes)
        for t in transfers:
            bars.traffic.append(TrafficBar(name, f"{t.name} {t.op} {_DIR[t.direction]}", t.payload, t.payload))
        if not transfers:
            bars.silent.append(name)
    return bars


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
                bars.traffic.append(TrafficBar(group, f"{name} {op} {_DIR[d]}", per[d]["bytes"]))
    if dp_bytes:
        bars.traffic.append(TrafficBar(group, "gradients all-reduce", dp_bytes))
    if not bars.traffic:
        bars.silent.append(group)
    return bars


_PART_LABELS = {**MEMORY_PARTS, "resident": "resident set (RSS)", "max_allocated": "CUDA max allocated"}


def memory_traffic_figure(bars: Bars, *, title: str = "", peak_label: str = "peak (measured)"):
    """Per-device memory (stacked MiB, left) beside bytes per exchange (log scale, right)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    rows = max(len(bars.traffic), 4)
    fig = _figure(12, max(5.0, 0.22 * rows + 2.2))
    mem_ax, tr_ax = fig.subplots(1, 2, width_ratios=[1.05, 1])
    groups = list(dict.fromkeys([b.group for b in bars.memory] + [b.group for b in bars.traffic] + bars.silent))
    colour = {g: _GROUP_COLOURS[i % len(_GROUP_COLOURS)] for i, g in enumerate(groups)}

    # memory: one stacked bar per device, a gap between groups
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

    # traffic: one horizontal bar per exchange, top to bottom, coloured by group, log scale
    ys = list(range(len(bars.traffic)))[::-1]
    for y, t in zip(ys, bars.traffic):
        (rect,) = tr_ax.barh(y, t.bytes, height=0.75, color=colour[t.group])
        rect.set_gid(f"traffic:{t.group}:{t.exchange}")
        tr_ax.text(t.bytes * 1.15, y, _bytes(t.bytes), va="center", fontsize=7)
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
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def profile_figure(report: dict):
    """``alexnet-mp profile --plot``: a report's per-device memory beside its bytes per exchange."""
    cfg = report["config"]
    return memory_traffic_figure(report_bars(report), title=(
        f"alexnet-mp profile: batch {cfg['batch_size']}, {cfg['device']}, "
        f"{cfg['steps']} step(s) measured; bars: measured, black ticks: analytic"))


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


# --- Figure 2 ----------------------------------------------------------------------------

def figure2(num_classes: int = 1000):
    """The paper's Figure 2 drawn from the layer table: two rows (the columns), each layer's
    per-column output, and at each layer that sees both columns the crossing, labelled with
    the floats one column sends per sample. Text gids: ``layer:<name>:<column>``,
    ``exchange:<name>``."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    shapes = L.shapes(num_classes)
    crossings = {e.name: e for e in L.exchanges(num_classes)}
    stages = len(shapes) + 2  # input, the layers, the loss
    fig = _figure(12, 4.8)
    ax = fig.subplots()
    ax.set_xlim(-0.6, stages - 0.4)
    ax.set_ylim(-0.75, 2.05)
    ax.axis("off")
    row_y = {0: 1.4, 1: 0.1}  # column 0 above, column 1 below, as the paper draws its two GPUs
    box_w, box_h = 0.84, 0.66

    def box(x, y, h, text, gid, colour):
        ax.add_patch(FancyBboxPatch((x - box_w / 2, y - h / 2), box_w, h, boxstyle="round,pad=0.02",
                                    facecolor=colour, edgecolor="#333333", linewidth=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=8, gid=gid, linespacing=1.25)

    def arrow(x0, y0, x1, y1, colour="#555555"):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10, color=colour,
                                     linewidth=1.0, shrinkA=0, shrinkB=0))

    mid = (row_y[0] + row_y[1]) / 2
    c, h, w = L.INPUT_SHAPE
    box(0, mid, row_y[0] - row_y[1] + box_h, f"input\n{c}×{h}×{w}\n(both\ncolumns see\nall of it)", "input", "#eeeeee")
    for i, s in enumerate(shapes, start=1):
        per_col = (s.column_out, *s.out_shape[1:])
        extras = [n for n, on in (("LRN", s.layer.lrn), ("pool", s.layer.pool), ("dropout", s.layer.dropout))
                  if on] or ([] if s.layer.relu else ["logits"])
        kernel = f"\n{s.layer.kernel}×{s.layer.kernel}/{s.layer.stride}" if s.layer.kind == "conv" else "\n"
        for col, y in row_y.items():
            text = f"{s.layer.name}{kernel}\n{'×'.join(map(str, per_col))}\n{'+'.join(extras)}"
            box(i, y, box_h, text, f"layer:{s.layer.name}:{col}", "#dce6f2" if col == 0 else "#f2e2d2")
    loss_x = len(shapes) + 1
    for col, y in row_y.items():
        box(loss_x, y, box_h, f"softmax + loss\nover all\n{num_classes} classes", f"loss:{col}", "#e8f0e0")

    # arrows: the first layer from the whole input; then within a column, and across where a layer sees both
    for col, y in row_y.items():
        arrow(box_w / 2, y, 1 - box_w / 2, y)
    for i in range(1, len(shapes) + 1):
        name = shapes[i].layer.name if i < len(shapes) else L.LOGITS
        crossing = crossings.get(name)
        for col, y in row_y.items():
            arrow(i + box_w / 2, y, i + 1 - box_w / 2, y)
            if crossing is not None:
                other = row_y[1 - col]
                arrow(i + box_w / 2, y + (0.12 if y < other else -0.12), i + 1 - box_w / 2,
                      other + (-0.12 if y < other else 0.12), colour="#c0392b")
        if crossing is not None:
            ax.text(i + 0.5, mid, f"{crossing.name}\n{crossing.floats_per_sample:,}\nfloats",
                    ha="center", va="center", fontsize=8.5, color="#c0392b", gid=f"exchange:{crossing.name}",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "#c0392b", "linewidth": 0.6})
    ax.text(-0.55, row_y[0] + 0.45, "column 0 (device 0)", fontsize=9, fontweight="bold")
    ax.text(-0.55, row_y[1] - 0.5, "column 1 (device 1)", fontsize=9, fontweight="bold")
    meets = [e.name for e in L.exchanges(num_classes, logits=False)]
    fig.supxlabel(
        f"The columns meet before {', '.join(meets[:-1])} and {meets[-1]} (red), and once more for the logits: each "
        "column all-gathers the other's half forward\nand reduce-scatters the gradient backward; the numbers are the "
        "floats one column sends per sample. Every layer but fc8 is followed by a ReLU.\n"
        f"Parameters: {L.total_params(num_classes):,} in all, {L.column_params(num_classes):,} per column.",
        fontsize=8.5)
    fig.suptitle("AlexNet's two columns (the paper's Figure 2), from alexnet_mp/layers.py", fontsize=12)
    return fig


# --- verify ------------------------------------------------------------------------------

def verify_figure(report: dict, run: str = "one_process"):
    """``alexnet-mp verify``'s report: each tensor's relative difference from the float64
    reference beside what is allowed (left); each exchange's bytes, analytic and measured per
    column (right). Bar gids: ``rel:<tensor>``, ``bytes:<exchange>:<direction>:<column>``."""
    r = report["runs"][run]
    fig = _figure(12, 6.0)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.1])
    names = list(r["tensors"])
    ys = list(range(len(names)))[::-1]
    floor = 1e-18
    for y, n in zip(ys, names):
        t = r["tensors"][n]
        ok = t["rel"] <= t["allowed"]
        (rect,) = left.barh(y, max(t["rel"], floor), color="#55a868" if ok else "#c44e52", height=0.7)
        rect.set_gid(f"rel:{n}")
        if t["rel"] == 0:
            left.text(floor * 1.5, y, "identical", va="center", fontsize=7)
    allowed = {t["allowed"] for t in r["tensors"].values()}
    if len(allowed) == 1:
        (a,) = allowed
        left.axvline(a, color="black", linestyle="--", linewidth=1, label=f"allowed: rel ≤ {a:g}")
    elif len(allowed) > 1:
        left.scatter([r["tensors"][n]["allowed"] for n in names], ys, marker="|", s=100, color="black",
                     label="allowed")
    left.set_xscale("log")
    left.set_yticks(ys, names, fontsize=8)
    left.set_xlabel("relative difference ||split − reference|| / ||reference|| (log scale)")
    left.set_title(f"split ({report['dtype']}) vs single-device float64 reference: "
                   f"{'OK' if r['ok'] else 'FAILED'}", fontsize=10)
    left.legend(fontsize=8, loc="lower right")
    left.grid(axis="x", alpha=0.3)

    rows = [(e, d, v) for e, per in r["exchanges"].items() for d, v in per.items()]
    width = 0.27
    for i, (e, d, v) in enumerate(rows):
        (a,) = right.bar(i - width, v["analytic"], width, color="#999999")
        a.set_gid(f"bytes:{e}:{d}:analytic")
        for c, m in enumerate(v["measured"]):
            (b,) = right.bar(i + c * width, m, width, color=_GROUP_COLOURS[c])
            b.set_gid(f"bytes:{e}:{d}:{c}")
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    right.legend(handles=[Patch(color="#999999", label="analytic (layer table)")]
                 + [Patch(color=_GROUP_COLOURS[c], label=f"column {c} measured") for c in range(L.COLUMNS)],
                 fontsize=8)
    right.set_xticks(range(len(rows)), [f"{e}\n{_DIR[d]}" for e, d, _ in rows], fontsize=8)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(EngFormatter(unit="B"))
    right.set_ylabel("bytes one column sends (log scale)")
    right.set_title(f"bytes per exchange at batch {report['batch_size']}: "
                    f"{'exactly the analytic figures' if r['bytes_exact'] else 'DIFFERENT from the analytic figures'}",
                    fontsize=10)
    right.grid(axis="y", alpha=0.3)
    return fig


# --- LRN ---------------------------------------------------------------------------------

def lrn_figure(result: dict):
    """:func:`alexnet_mp.explore.lrn_within_vs_across` as a chart: each map's largest relative
    change when the window may cross the columns' boundary. Bar gids: ``map:<layer>:<index>``."""
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, len(result["layers"]), squeeze=False)[0]
    for ax, layer in zip(axes, result["layers"]):
        per_map = layer["per_map_max_rel"]
        for i, v in enumerate(per_map):
            (rect,) = ax.bar(i, v, width=1.0, color="#c44e52" if v else "#4c72b0")
            rect.set_gid(f"map:{layer['name']}:{i}")
        ax.axvline(layer["maps"] / 2 - 0.5, color="black", linestyle="--", linewidth=1, label="column boundary")
        ax.set_xlabel(f"{layer['name']} map (0–{layer['maps'] - 1})")
        ax.set_ylabel("max |within − across| / max |across|")
        ax.set_title(f"{layer['name']}: {len(layer['changed_maps'])} of {layer['maps']} maps change "
                     f"(maps {', '.join(map(str, layer['changed_maps']))})", fontsize=10)
        ax.set_xlim(-1, layer["maps"])
        ax.legend(fontsize=8, loc="upper left")
    return fig


# --- a run: curves and Figure 3 ----------------------------------------------------------------

def training_curves(scalars: dict[str, tuple[list[int], list[float]]]):
    """Loss and errors over steps from a run's TensorBoard scalars (tag -> (steps, values))."""
    fig = _figure(11, 3.4)
    loss_ax, err_ax = fig.subplots(1, 2)
    if "loss/train" in scalars:
        steps, values = scalars["loss/train"]
        loss_ax.plot(steps, values, marker=".", label="train loss", gid="curve:loss/train")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.set_title("training loss", fontsize=10)
    for tag in ("error/train_top1", "error/val_top1_centre", "error/val_top5_centre", "error/val_top1_10crop"):
        if tag in scalars:
            steps, values = scalars[tag]
            err_ax.plot(steps, values, marker="o" if "val" in tag else ".", label=tag.split("/", 1)[1],
                        gid=f"curve:{tag}")
    err_ax.set_xlabel("step")
    err_ax.set_ylabel("error")
    err_ax.set_ylim(0, 1.02)
    err_ax.set_title("top-1 / top-5 error", fontsize=10)
    for ax in (loss_ax, err_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def filters_figure(weight, *, title: str = ""):
    """The paper's Figure 3: each column's conv1 kernels, and each kernel's colour specificity
    (``train.figures.colour_specificity``) per column as a histogram."""
    import torch

    from .train.figures import colour_specificity, column_specificity, kernel_grid

    fig = _figure(12, 3.9)
    axes = fig.subplots(1, L.COLUMNS + 1, width_ratios=[1] * L.COLUMNS + [0.9])
    spec = column_specificity(weight)
    per_kernel = colour_specificity(weight).chunk(L.COLUMNS)
    for c, (ax, part) in enumerate(zip(axes, weight.chunk(L.COLUMNS))):
        ax.imshow(kernel_grid(part).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"column {c}: {part.shape[0]} kernels, colour specificity {spec[c]:.2f}", fontsize=10)
        ax.axis("off")
    hist = axes[-1]
    bins = torch.linspace(0, 1, 21).tolist()
    for c, s in enumerate(per_kernel):
        hist.hist(s.tolist(), bins=bins, alpha=0.6, label=f"column {c} (mean {spec[c]:.2f})",
                  color=_GROUP_COLOURS[c])
    hist.set_xlabel("colour specificity ||w − grey(w)||² / ||w||²")
    hist.set_ylabel("kernels")
    hist.legend(fontsize=8)
    hist.set_title("0: same weight on R, G, B; → 1: colour contrasts", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
