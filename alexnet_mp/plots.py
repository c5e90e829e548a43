"""Every figure the commands and the notebook draw, made with matplotlib (the ``plot`` extra).

``alexnet-mp profile --plot`` and the notebook (docs/notebook.py) draw through this module; the
training run's TensorBoard figure draws through :mod:`alexnet_mp.charts`, whose names it re-exports.
The per-device memory and traffic chart takes bars from each source: a profile report
(:func:`report_bars`), the analytic figures of the layer table (:func:`analytic_bars`) and a
training step's gathered memory and exchange records (:func:`training_bars`).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import layers as L
from .charts import (  # noqa: F401 (re-exported: one module to draw every figure from)
    GROUP_COLOURS,
    INSTALL,
    MEMORY_PARTS,
    SHORT_DIRECTION,
    SUFFIXES,
    Bars,
    MemoryBar,
    MiB,
    PlotError,
    TrafficBar,
    figure_format,
    have_matplotlib,
    memory_traffic_figure,
    new_figure,
    require_matplotlib,
    save_figure,
    training_bars,
)


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
            bars.traffic.append(TrafficBar(name, f"{e['name']} {e['op']} {SHORT_DIRECTION[e['direction']]}",
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
            bars.traffic.append(TrafficBar(name, f"{t.name} {t.op} {SHORT_DIRECTION[t.direction]}", t.payload, t.payload))
        if not transfers:
            bars.silent.append(name)
    return bars


def profile_figure(report: dict):
    """``alexnet-mp profile --plot``: a report's per-device memory beside its bytes per exchange."""
    cfg = report["config"]
    return memory_traffic_figure(report_bars(report), title=(
        f"alexnet-mp profile: batch {cfg['batch_size']}, {cfg['device']}, "
        f"{cfg['steps']} step(s) measured; bars: measured, black ticks: analytic"))


# --- Figure 2 ----------------------------------------------------------------------------

def figure2(num_classes: int = 1000):
    """The paper's Figure 2 drawn from the layer table: two rows (the columns), each layer's
    per-column output, and at each layer that sees both columns the crossing, labelled with
    the floats one column sends per sample. Text gids: ``layer:<name>:<column>``,
    ``exchange:<name>``."""
    shapes = L.shapes(num_classes)
    stages = len(shapes) + 2  # input, the layers, the loss
    fig = new_figure(12, 4.8)
    ax = fig.subplots()
    ax.set_xlim(-0.6, stages - 0.4)
    ax.set_ylim(-0.75, 2.05)
    ax.axis("off")
    _figure2_boxes(ax, shapes, num_classes)
    _figure2_arrows(ax, shapes, {e.name: e for e in L.exchanges(num_classes)})
    ax.text(-0.55, _ROW_Y[0] + 0.45, "column 0 (device 0)", fontsize=9, fontweight="bold")
    ax.text(-0.55, _ROW_Y[1] - 0.5, "column 1 (device 1)", fontsize=9, fontweight="bold")
    meets = [e.name for e in L.exchanges(num_classes, logits=False)]
    fig.supxlabel(
        f"The columns meet before {', '.join(meets[:-1])} and {meets[-1]} (red), and once more for the logits: each "
        "column all-gathers the other's half forward\nand reduce-scatters the gradient backward; the numbers are the "
        "floats one column sends per sample. Every layer but fc8 is followed by a ReLU.\n"
        f"Parameters: {L.total_params(num_classes):,} in all, {L.column_params(num_classes):,} per column.",
        fontsize=8.5)
    fig.suptitle("AlexNet's two columns (the paper's Figure 2), from alexnet_mp/layers.py", fontsize=12)
    return fig


_ROW_Y = {0: 1.4, 1: 0.1}
"""Figure 2's rows: column 0 above, column 1 below, as the paper draws its two GPUs."""
_MID = (_ROW_Y[0] + _ROW_Y[1]) / 2
_BOX_W, _BOX_H = 0.84, 0.66


def _box(ax, x, y, h, text, gid, colour):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - _BOX_W / 2, y - h / 2), _BOX_W, h, boxstyle="round,pad=0.02",
                                facecolor=colour, edgecolor="#333333", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=8, gid=gid, linespacing=1.25)


def _arrow(ax, x0, y0, x1, y1, colour="#555555"):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10, color=colour,
                                 linewidth=1.0, shrinkA=0, shrinkB=0))


def _figure2_boxes(ax, shapes, num_classes: int) -> None:
    """The input, each layer's box in each column (its per-column output) and the loss."""
    c, h, w = L.INPUT_SHAPE
    _box(ax, 0, _MID, _ROW_Y[0] - _ROW_Y[1] + _BOX_H, f"input\n{c}×{h}×{w}\n(both\ncolumns see\nall of it)", "input",
         "#eeeeee")
    for i, s in enumerate(shapes, start=1):
        per_col = (s.column_out, *s.out_shape[1:])
        extras = [n for n, on in (("LRN", s.layer.lrn), ("pool", s.layer.pool), ("dropout", s.layer.dropout))
                  if on] or ([] if s.layer.relu else ["logits"])
        kernel = f"\n{s.layer.kernel}×{s.layer.kernel}/{s.layer.stride}" if s.layer.kind == "conv" else "\n"
        for col, y in _ROW_Y.items():
            text = f"{s.layer.name}{kernel}\n{'×'.join(map(str, per_col))}\n{'+'.join(extras)}"
            _box(ax, i, y, _BOX_H, text, f"layer:{s.layer.name}:{col}", "#dce6f2" if col == 0 else "#f2e2d2")
    loss_x = len(shapes) + 1
    for col, y in _ROW_Y.items():
        _box(ax, loss_x, y, _BOX_H, f"softmax + loss\nover all\n{num_classes} classes", f"loss:{col}", "#e8f0e0")


def _figure2_arrows(ax, shapes, crossings) -> None:
    """The first layer from the whole input; then within a column, and across where a layer sees both."""
    for col, y in _ROW_Y.items():
        _arrow(ax, _BOX_W / 2, y, 1 - _BOX_W / 2, y)
    for i in range(1, len(shapes) + 1):
        name = shapes[i].layer.name if i < len(shapes) else L.LOGITS
        crossing = crossings.get(name)
        for col, y in _ROW_Y.items():
            _arrow(ax, i + _BOX_W / 2, y, i + 1 - _BOX_W / 2, y)
            if crossing is not None:
                other = _ROW_Y[1 - col]
                _arrow(ax, i + _BOX_W / 2, y + (0.12 if y < other else -0.12), i + 1 - _BOX_W / 2,
                       other + (-0.12 if y < other else 0.12), colour="#c0392b")
        if crossing is not None:
            ax.text(i + 0.5, _MID, f"{crossing.name}\n{crossing.floats_per_sample:,}\nfloats",
                    ha="center", va="center", fontsize=8.5, color="#c0392b", gid=f"exchange:{crossing.name}",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "#c0392b", "linewidth": 0.6})


# --- verify ------------------------------------------------------------------------------

def verify_figure(report: dict, run: str = "one_process"):
    """``alexnet-mp verify``'s report: each tensor's relative difference from the float64
    reference beside what is allowed (left); each exchange's bytes, analytic and measured per
    column (right). Bar gids: ``rel:<tensor>``, ``bytes:<exchange>:<direction>:<column>``."""
    r = report["runs"][run]
    fig = new_figure(12, 6.0)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.1])
    _verify_precision(left, report, r)
    _verify_bytes(right, report, r)
    return fig


def _verify_precision(left, report: dict, r: dict) -> None:
    """Each tensor's relative difference from the float64 reference beside what is allowed."""
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


def _verify_bytes(right, report: dict, r: dict) -> None:
    """Each exchange's bytes: the analytic figure beside what each column measured."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    rows = [(e, d, v) for e, per in r["exchanges"].items() for d, v in per.items()]
    width = 0.27
    for i, (e, d, v) in enumerate(rows):
        (a,) = right.bar(i - width, v["analytic"], width, color="#999999")
        a.set_gid(f"bytes:{e}:{d}:analytic")
        for c, m in enumerate(v["measured"]):
            (b,) = right.bar(i + c * width, m, width, color=GROUP_COLOURS[c])
            b.set_gid(f"bytes:{e}:{d}:{c}")
    right.legend(handles=[Patch(color="#999999", label="analytic (layer table)")]
                 + [Patch(color=GROUP_COLOURS[c], label=f"column {c} measured") for c in range(L.COLUMNS)],
                 fontsize=8)
    right.set_xticks(range(len(rows)), [f"{e}\n{SHORT_DIRECTION[d]}" for e, d, _ in rows], fontsize=8)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(EngFormatter(unit="B"))
    right.set_ylabel("bytes one column sends (log scale)")
    right.set_title(f"bytes per exchange at batch {report['batch_size']}: "
                    f"{'exactly the analytic figures' if r['bytes_exact'] else 'DIFFERENT from the analytic figures'}",
                    fontsize=10)
    right.grid(axis="y", alpha=0.3)


# --- LRN ---------------------------------------------------------------------------------

def lrn_figure(result: dict):
    """:func:`alexnet_mp.explore.lrn_within_vs_across` as a chart: each map's largest relative
    change when the window may cross the columns' boundary. Bar gids: ``map:<layer>:<index>``."""
    fig = new_figure(11, 3.6)
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
    fig = new_figure(11, 3.4)
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

    fig = new_figure(12, 3.9)
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
                  color=GROUP_COLOURS[c])
    hist.set_xlabel("colour specificity ||w − grey(w)||² / ||w||²")
    hist.set_ylabel("kernels")
    hist.legend(fontsize=8)
    hist.set_title("0: same weight on R, G, B; → 1: colour contrasts", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
