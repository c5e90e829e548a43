# An interactive look at the two-column AlexNet: open with
#
#     pip install -e '.[notebook]'
#     marimo edit docs/notebook.py
#
# or run it as a script (python docs/notebook.py) or headless (marimo export html docs/notebook.py
# -o notebook.html). Every number comes from the alexnet_mp package; docs/notebook.md says what
# each section shows.

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="alexnet-mp: see the split")


@app.cell
def _():
    import contextlib
    import io
    import tempfile
    import time
    from pathlib import Path

    import marimo as mo
    import torch

    from alexnet_mp import explore, plots
    from alexnet_mp import layers as L
    from alexnet_mp.errors import UserError

    return L, Path, UserError, contextlib, explore, io, mo, plots, tempfile, time, torch


@app.cell
def _(mo):
    mo.md(
        r"""
        # alexnet-mp: the two-column AlexNet, seen

        Krizhevsky, Sutskever and Hinton (2012) split AlexNet over two GPUs: each holds half of every
        layer, and the halves meet only at a few places. This notebook draws that split from the package's
        layer table (`alexnet_mp/layers.py`), runs the proof that it computes the single-device function,
        profiles what each device holds and sends, compares LRN within a column with LRN across all maps,
        and looks at a training run's curves and conv1 filters. Nothing here is typed in: every number is
        computed by `alexnet_mp`.
        """
    )
    return


@app.cell
def _(L, mo, plots):
    _rows = "\n".join(
        f"| before {e.name} | {'×'.join(map(str, e.column_shape))} | {e.floats_per_sample:,} | "
        f"{e.floats_per_sample * 4:,} |"
        for e in L.exchanges()
    )
    mo.vstack([
        mo.md("## 1. Figure 2, drawn from the layer table\n\nThe two columns (one per device), each layer's output "
              "per column, and the places they meet. At each meeting every column all-gathers the other's half "
              "forward and reduce-scatters the gradient backward."),
        plots.figure2(),
        mo.md("| exchange | one column sends per sample | floats | bytes (fp32) |\n|---|---|---:|---:|\n" + _rows),
    ])
    return


@app.cell
def _(mo):
    verify_batch = mo.ui.slider(1, 8, value=2, label="verify: batch size", show_value=True)
    return (verify_batch,)


@app.cell
def _(mo, plots, time, verify_batch):
    from alexnet_mp.commands import verify as _verify

    _t = time.perf_counter()
    verify_report = _verify.run(batch_size=verify_batch.value, processes=False, device="cpu", dtype="float64")
    _run = verify_report["runs"]["one_process"]
    _worst = max(_run["tensors"].items(), key=lambda kv: kv[1]["rel"])
    _bytes = "\n".join(
        f"| {e} | {d} | {v['analytic']:,} | {' | '.join(f'{m:,}' for m in v['measured'])} |"
        for e, per in _run["exchanges"].items() for d, v in per.items()
    )
    mo.vstack([
        mo.md("## 2. `verify`, live: the split against the single-device network in float64\n\n"
              "One batch forward and backward through the single-device AlexNet in float64 (the reference) and "
              "through the same weights cut into two columns (both in this process); every tensor compared, and "
              "the bytes each exchange sent compared with the analytic figure from the layer table."),
        verify_batch,
        mo.md(f"**{'Verified' if verify_report['ok'] else 'NOT verified'}** in {time.perf_counter() - _t:.1f} s: "
              f"the largest relative difference is {_worst[1]['rel']:.1e} ({_worst[0]}), allowed "
              f"{_worst[1]['allowed']:g}; the exchanges sent "
              f"{'exactly' if _run['bytes_exact'] else 'NOT'} the analytic bytes."),
        plots.verify_figure(verify_report),
        mo.accordion({"bytes per exchange (table)": mo.md(
            "| exchange | direction | analytic B | column 0 B | column 1 B |\n|---|---|---:|---:|---:|\n" + _bytes)}),
    ])
    return (verify_report,)


@app.cell
def _(mo):
    profile_batch = mo.ui.slider(2, 256, step=2, value=128, label="profile: global batch size", show_value=True)
    profile_names = mo.ui.multiselect(["paper", "single", "data-parallel", "hybrid", "one-weird-trick", "megatron",
                                       "data-parallel-4", "one-weird-trick-4"],
                                      value=["paper", "single", "data-parallel", "hybrid", "one-weird-trick",
                                             "megatron"], label="strategies")
    measure = mo.ui.run_button(label="measure on this machine (real steps in worker processes: about a minute "
                                     "per strategy on a CPU)")
    return measure, profile_batch, profile_names


@app.cell
def _(mo, plots, profile_batch, profile_names):
    _names = profile_names.value or ["paper"]
    mo.vstack([
        mo.md("## 3. The profiler: per-device memory and bytes per exchange\n\n"
              "The paper's split (two columns, one per device), one device, data parallelism (the whole net on "
              "each of two devices, half the batch each), the hybrid (two replicas of the split), Krizhevsky's "
              "2014 scheme (convolutions data-parallel, fc6-fc8 split over every worker's samples) and Megatron's "
              "pairing (fc7 split by inputs; the same bytes as the paper's split, one collective fewer each way; "
              "docs/profile.md derives which moves fewest bytes at which batch). "
              "Analytic at once, from the layer table: parameters, gradients and momentum exactly, and each "
              "device's share of every layer's output (a lower bound on the activations backward keeps)."),
        mo.hstack([profile_batch, profile_names], justify="start", gap=2),
        plots.memory_traffic_figure(plots.analytic_bars(profile_batch.value, _names),
                                    title=f"analytic, global batch {profile_batch.value}"),
        measure,
    ])
    return


@app.cell
def _(measure, mo, plots, profile_batch, profile_names):
    mo.stop(not measure.value, mo.md("*Press the button above to measure real steps at this batch size "
                                     "(`alexnet-mp profile --plot` draws the same figure).*"))
    from alexnet_mp.profile import ProfileConfig
    from alexnet_mp.profile import run as _profile_run

    profile_report = _profile_run(ProfileConfig(strategies=profile_names.value or ["paper"],
                                                batch_size=profile_batch.value, steps=1, warmup=0, device="cpu"))
    mo.vstack([mo.md(f"**Measured**: {profile_report['comparison']['verdict'] or ''}"),
               plots.profile_figure(profile_report)])
    return


@app.cell
def _(L, explore, mo, plots, torch):
    from alexnet_mp.model import AlexNet as _AlexNet

    torch.manual_seed(0)
    lrn_result = explore.lrn_within_vs_across(_AlexNet(init="kaiming"), explore.sample_images(4))
    _layers = "\n".join(
        f"| {l['name']} | {l['maps']} | {', '.join(map(str, l['changed_maps']))} | {l['max_rel']:.2e} | "
        f"{lrn_result['boundary_floats'][l['name']]:,} |"
        for l in lrn_result["layers"]
    )
    mo.vstack([
        mo.md(f"## 4. LRN within each column against LRN across all maps\n\n"
              f"The paper normalises each map by its {L.LRN.size} neighbours *in its own column*: maps "
              f"on either side of the boundary between the columns are not neighbours. Here one (untrained, "
              f"He-initialised) AlexNet runs four generated images with the paper's LRN and again with one "
              f"LRN over all maps; each LRN layer is compared on the same input."),
        plots.lrn_figure(lrn_result),
        mo.md("| layer | maps | maps that change | largest relative change | floats per sample a column "
              "would fetch from the other |\n|---|---:|---|---:|---:|\n" + _layers + "\n\n"
              f"Only the {L.LRN.size // 2} maps on each side of the boundary change; the logits move by "
              f"{lrn_result['logits_rel']:.1e} (relative), and the top-1 class agrees on "
              f"{lrn_result['argmax_agree']:.0%} of the images. Across all maps the split would need two more "
              "exchanges before conv1's and conv2's LRN (the last column of the table)."),
    ])
    return (lrn_result,)


@app.cell
def _(Path, mo):
    _quickstart = Path(mo.notebook_dir() or ".").resolve().parent / "runs" / "quickstart"
    run_path = mo.ui.text(value=str(_quickstart) if _quickstart.is_dir() else "", full_width=True,
                          label="a run folder, a checkpoint folder or an exported state dict (.pt); "
                                "empty: make a tiny run here")
    return (run_path,)


@app.cell
def _(UserError, contextlib, explore, io, mo, plots, run_path, tempfile, time):
    _log = io.StringIO()
    _t = time.perf_counter()
    _where = run_path.value.strip()
    run_error = None
    try:
        with contextlib.redirect_stderr(_log), contextlib.redirect_stdout(_log):
            if _where:
                _source, _made = _where, False
            else:
                _source, _made = explore.tiny_run(tempfile.mkdtemp(prefix="alexnet-mp-notebook-")), True
            _weight, _described = explore.load_conv1(_source)
            _folder = explore.run_folder(_source)
            _scalars = explore.run_scalars(_folder) if _folder is not None else {}
    except UserError as err:
        run_error = str(err)
    _intro = mo.md("## 5. A training run: curves and the two columns' conv1 filters (Figure 3)\n\n"
                   "Type the path of your run (`runs/<name>`), one of its checkpoints, or a state dict from "
                   "`alexnet-mp export`. The paper found one column's kernels largely colour-agnostic and the "
                   "other's colour-specific; colour specificity is each kernel's share of energy that is not "
                   "its grey part (0: the same weights on R, G and B).")
    if run_error is not None:
        _out = mo.vstack([_intro, run_path, mo.callout(mo.md(f"**Cannot use this path.** {run_error}"), kind="danger")])
    else:
        _note = (f"No run was given (and there is no `runs/quickstart`), so this made a **tiny run** in "
                 f"{time.perf_counter() - _t:.0f} s: a 2-class generated dataset and 6 training steps. Its filters "
                 "have barely moved from their random initialisation; train the quick start "
                 "(`torchrun --standalone --nproc_per_node=2 launch/train.py`) for ones that mean something."
                 if _made else f"Loaded in {time.perf_counter() - _t:.1f} s.")
        _out = mo.vstack([
            _intro, run_path, mo.md(_note),
            plots.training_curves(_scalars) if _scalars else mo.md("*This path has no TensorBoard events "
                                                                    "(`<run>/tb`): no curves.*"),
            plots.filters_figure(_weight, title=f"conv1 of {_described}"),
            mo.accordion({"training log": mo.plain_text(_log.getvalue()[-6000:])}) if _made else mo.md(""),
        ])
    _out
    return (run_error,)


if __name__ == "__main__":
    app.run()
