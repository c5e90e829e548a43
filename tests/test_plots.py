"""The figures (alexnet_mp/plots.py): what is drawn is the numbers it was given, and the numbers
drawn from the layer table are the paper's, typed here independently."""

from __future__ import annotations

import re
import sys

import pytest
from click.testing import CliRunner

from alexnet_mp import plots
from alexnet_mp.commands import main

pytest.importorskip("matplotlib")

MiB = 2**20
FLOATS = {"conv3": 21_632, "fc6": 4_608, "fc7": 2_048, "fc8": 2_048, "logits": 500}
"""Floats per sample one column sends at each exchange (1000 classes), typed from the paper."""
LAYER_PARAMS = {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936, "conv5": 442_624,
                "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}
"""Weights and biases per layer of the whole net (they add up to the paper's 60,965,224)."""
PARAMS, COLUMN_PARAMS = 60_965_224, 30_482_612
LAYER_OUTPUT_FLOATS = (290_400 + 69_984 + 186_624 + 43_264 + 64_896 + 64_896 + 43_264 + 9_216
                       + 4_096 + 4_096 + 1_000)
"""Per sample: conv1 96x55x55 and pooled 96x27x27, conv2 256x27x27 and 256x13x13, conv3, conv4
384x13x13, conv5 256x13x13 and 256x6x6, fc6, fc7, fc8."""
COLUMN_SHAPES = {"conv1": "48×55×55", "conv2": "128×27×27", "conv3": "192×13×13", "conv4": "192×13×13",
                 "conv5": "128×13×13", "fc6": "2048", "fc7": "2048", "fc8": "500"}


def _rects(fig, prefix: str) -> dict:
    return {p.get_gid(): p for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith(prefix)}


def _texts(fig, prefix: str) -> dict:
    return {t.get_gid(): t.get_text() for ax in fig.axes for t in ax.texts if (t.get_gid() or "").startswith(prefix)}


def fake_report() -> dict:
    """A profile report's shape, every number distinct, so a swapped bar cannot pass."""
    def rank(r, column, base):
        return {"rank": r, "column": column,
                "memory": {"parameters": base, "gradients": base + 1 * MiB, "optimizer_state": base + 2 * MiB,
                           "activations": base + 7 * MiB, "peak_tensors": 4 * base + 20 * MiB, "peak_rss": 0,
                           "cuda_max_reserved": None}}

    def exchange(name, op, direction, analytic, measured):
        return {"name": name, "op": op, "direction": direction, "analytic_bytes": analytic,
                "measured_bytes": measured}

    return {
        "config": {"batch_size": 4, "device": "cpu", "steps": 1},
        "strategies": {
            "paper": {"ranks": [rank(0, 0, 100 * MiB), rank(1, 1, 110 * MiB)],
                      "exchanges": [exchange("conv3", "all-gather", "forward", 346_112, [346_112, 346_000]),
                                    exchange("conv3", "reduce-scatter", "backward", 346_112, [346_100, 346_112]),
                                    exchange("logits", "all-gather", "forward", 8_000, [8_000, 8_000])]},
            "single": {"ranks": [rank(0, None, 230 * MiB)], "exchanges": []},
            "data-parallel": {"ranks": [rank(0, None, 231 * MiB), rank(1, None, 232 * MiB)],
                              "exchanges": [exchange("fc6.grad", "all-reduce", "backward", 151_011_328,
                                                     [151_011_328, 151_011_328])]},
        },
    }


def test_profile_figure_draws_each_ranks_memory_and_each_exchanges_bytes_from_the_report():
    report = fake_report()
    fig = plots.profile_figure(report)
    memory = _rects(fig, "memory:")
    traffic = _rects(fig, "traffic:")
    expected_memory = {}
    for name, s in report["strategies"].items():
        for r in s["ranks"]:
            label = f"rank {r['rank']}" + (f" col {r['column']}" if r["column"] is not None else "")
            bottom = 0.0
            for part in ("parameters", "gradients", "optimizer_state", "activations"):
                expected_memory[f"memory:{name}:{label}:{part}"] = (r["memory"][part] / MiB, bottom)
                bottom += r["memory"][part] / MiB
    assert set(memory) == set(expected_memory)
    for gid, (height, bottom) in expected_memory.items():
        assert memory[gid].get_height() == pytest.approx(height) and memory[gid].get_y() == pytest.approx(bottom), gid
    peaks = {c.get_gid(): c.get_segments()[0][0][1] for ax in fig.axes for c in ax.collections
             if (c.get_gid() or "").startswith("peak:")}
    assert peaks["peak:paper:rank 1 col 1"] == pytest.approx(4 * 110 + 20)
    assert peaks["peak:single:rank 0"] == pytest.approx(4 * 230 + 20)
    # each exchange: the busiest rank's bytes, the analytic figure as a mark at the same row
    assert {gid: rect.get_width() for gid, rect in traffic.items()} == {
        "traffic:paper:conv3 all-gather fwd": 346_112, "traffic:paper:conv3 reduce-scatter bwd": 346_112,
        "traffic:paper:logits all-gather fwd": 8_000, "traffic:data-parallel:fc6.grad all-reduce bwd": 151_011_328}
    (marks,) = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "analytic"]
    rows = {round(rect.get_y() + rect.get_height() / 2): gid for gid, rect in traffic.items()}
    analytic = {rows[round(y)]: x for x, y in marks.get_offsets()}
    assert analytic["traffic:paper:conv3 all-gather fwd"] == 346_112
    assert analytic["traffic:data-parallel:fc6.grad all-reduce bwd"] == 151_011_328
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "single: nothing crosses" in legend


def test_analytic_bars_are_the_layer_tables_figures():
    bars = plots.analytic_bars(128)
    traffic = {(b.group, b.exchange): b.bytes for b in bars.traffic}
    for name, floats in FLOATS.items():
        assert traffic[("paper", f"{name} all-gather fwd")] == floats * 128 * 4
        assert traffic[("paper", f"{name} reduce-scatter bwd")] == floats * 128 * 4
        assert traffic[("hybrid", f"{name} all-gather fwd")] == floats * 64 * 4  # each replica: half the batch
    for layer, n in LAYER_PARAMS.items():
        assert traffic[("data-parallel", f"{layer}.grad all-reduce bwd")] == n * 4
        assert traffic[("hybrid", f"{layer}.grad all-reduce bwd")] == n * 4 // 2  # a column's half
    assert len(traffic) == 10 + 8 + 18 and bars.silent == ["single"]
    memory = {(b.group, b.device): b.parts for b in bars.memory}
    assert [d for g, d in memory if g == "hybrid"] == ["rank 0\ncol 0", "rank 1\ncol 1", "rank 2\ncol 0",
                                                       "rank 3\ncol 1"]
    for (group, _), parts in memory.items():
        params = COLUMN_PARAMS if group in ("paper", "hybrid") else PARAMS
        batch = 128 if group in ("paper", "single") else 64
        share = 2 if group in ("paper", "hybrid") else 1
        assert parts == {"parameters": params * 4, "gradients": params * 4, "optimizer_state": params * 4,
                         "layer_outputs": LAYER_OUTPUT_FLOATS * batch * 4 // share}, group
    # and the chart draws exactly those numbers
    fig = plots.memory_traffic_figure(bars)
    assert _rects(fig, "traffic:")["traffic:paper:conv3 all-gather fwd"].get_width() == 21_632 * 128 * 4
    assert _rects(fig, "memory:")["memory:single:rank 0:layer_outputs"].get_height() * MiB == pytest.approx(
        LAYER_OUTPUT_FLOATS * 128 * 4)


def test_figure2_shows_each_columns_shapes_and_the_floats_of_each_meeting():
    fig = plots.figure2()
    exchanges = _texts(fig, "exchange:")
    assert set(exchanges) == {f"exchange:{n}" for n in FLOATS}
    for name, floats in FLOATS.items():
        assert f"{floats:,}" in exchanges[f"exchange:{name}"].replace("\n", " ").split(), name
    layers = _texts(fig, "layer:")
    assert len(layers) == 16
    for name, shape in COLUMN_SHAPES.items():
        for column in (0, 1):
            assert shape in layers[f"layer:{name}:{column}"].split("\n"), (name, column)
    from matplotlib.text import Text

    words = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "60,965,224" in words and "30,482,612" in words


def test_training_bars_are_the_gathered_memory_and_column_0s_bytes():
    GiB = 2**30
    stats = {"0": {"conv3": {"forward": {"bytes": 346_112}, "backward": {"bytes": 346_113}},
                   "logits": {"forward": {"bytes": 16}, "backward": {"bytes": 17}}},
             "1": {"conv3": {"forward": {"bytes": 1}, "backward": {"bytes": 1}}}}
    per_rank = [{"memory": {"rss_GiB": 1.5, "peak_rss_GiB": 2.0}, "stats": stats},
                {"memory": {"rss_GiB": 1.25, "peak_rss_GiB": 1.75}, "stats": {}}]
    bars = plots.training_bars(per_rank, dp_bytes=999, group="t")
    assert [(b.device, b.parts, b.peak) for b in bars.memory] == [
        ("rank 0", {"resident": int(1.5 * GiB)}, 2 * GiB), ("rank 1", {"resident": int(1.25 * GiB)}, int(1.75 * GiB))]
    assert [(b.exchange, b.bytes) for b in bars.traffic] == [
        ("conv3 all-gather fwd", 346_112), ("conv3 reduce-scatter bwd", 346_113), ("logits all-gather fwd", 16),
        ("logits reduce-scatter bwd", 17), ("gradients all-reduce", 999)]
    cuda = plots.training_bars([{"memory": {"max_allocated_GiB": 3.0, "max_reserved_GiB": 4.0}, "stats": {}}])
    assert cuda.memory[0].parts == {"max_allocated": 3 * GiB} and cuda.memory[0].peak == 4 * GiB
    assert cuda.silent == ["training"]


# --- the command line -------------------------------------------------------------------------

@pytest.fixture
def fake_run(monkeypatch):
    calls = []

    def run(cfg):
        calls.append(cfg)
        return {**fake_report(), "comparison": {"verdict": ""}}

    monkeypatch.setattr("alexnet_mp.profile.cli.run", run)
    monkeypatch.setattr("alexnet_mp.profile.cli.format_report", lambda report: "the table")
    return calls


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_profile_plot_writes_the_figure_whole(fake_run, tmp_path, suffix):
    out = tmp_path / "new" / f"p.{suffix}"
    result = CliRunner().invoke(main, ["profile", "--compare", "paper,single", "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and len(fake_run) == 1
    data = out.read_bytes()
    if suffix == "png":
        from PIL import Image

        assert data.startswith(b"\x89PNG")
        assert Image.open(out).size[0] >= 1000
    else:
        assert b"<svg" in data[:2000] and b"conv3 all-gather fwd" in data
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


@pytest.mark.parametrize("name,words", [
    ("p.jpg", ["--plot", "p.jpg", ".png or .svg", "got .jpg"]),
    ("p", ["--plot", ".png or .svg", "no suffix"]),
])
def test_profile_plot_wrong_suffix_is_refused_before_profiling(fake_run, tmp_path, name, words):
    result = CliRunner().invoke(main, ["profile", "--plot", str(tmp_path / name)])
    assert result.exit_code == 2 and not fake_run
    for w in words:
        assert w in result.output, w
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_profile_plot_into_something_that_is_not_a_folder_is_named(fake_run, tmp_path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["profile", "--plot", str(tmp_path / "file" / "p.png")])
    assert result.exit_code == 2 and not fake_run
    assert f"{tmp_path / 'file'} is not a folder" in result.output


def test_profile_plot_without_matplotlib_says_how_to_install_it(fake_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = CliRunner().invoke(main, ["profile", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and not fake_run
    assert "pip install -e '.[plot]'" in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "p.png").exists()


def test_the_other_commands_need_no_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert CliRunner().invoke(main, ["summary"]).exit_code == 0
    assert not plots.have_matplotlib()


# --- the TensorBoard figure of a training run -----------------------------------------------------

class _Writer:
    def __init__(self):
        self.figures = []

    def add_figure(self, tag, fig, step):
        self.figures.append((tag, fig, step))


def _metrics(capsys=None):
    from types import SimpleNamespace

    from alexnet_mp.train.metrics import Metrics

    m = Metrics(SimpleNamespace(job=SimpleNamespace(name="t")), SimpleNamespace(is_main=True), None, None)
    m.writer = _Writer()
    return m


def test_training_figure_is_drawn_once_per_step_from_the_last_logged_step():
    m = _metrics()
    m.memory_traffic_figure(3)
    assert m.writer.figures == []  # nothing logged yet
    stats = {"0": {"conv3": {"forward": {"bytes": 346_112}, "backward": {"bytes": 346_112}}}}
    m.last_logged = (2, [{"memory": {"rss_GiB": 1.0, "peak_rss_GiB": 1.5}, "stats": stats}], 0)
    m.memory_traffic_figure(3)
    m.memory_traffic_figure(3)
    ((tag, fig, step),) = m.writer.figures
    assert (tag, step) == ("profile/memory_and_traffic", 3)
    assert _rects(fig, "traffic:")["traffic:t:conv3 all-gather fwd"].get_width() == 346_112
    assert _rects(fig, "memory:")["memory:t:rank 0:resident"].get_height() == pytest.approx(1024)


def test_training_figure_without_matplotlib_is_skipped_with_one_note(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    m = _metrics()
    m.last_logged = (1, [{"memory": {"rss_GiB": 1.0}, "stats": {}}], 0)
    m.memory_traffic_figure(1)
    m.memory_traffic_figure(2)
    assert m.writer.figures == []
    err = capsys.readouterr().err
    assert len(re.findall("matplotlib is not installed", err)) == 1 and "pip install -e '.[plot]'" in err
