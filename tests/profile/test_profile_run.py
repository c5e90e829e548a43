"""``alexnet-mp profile`` end to end: real steps in worker processes, measured against analytic.

Two runs, shared by the tests: the three strategies side by side at batch 4 (spawned
gloo workers), and paper + single at batch 2 under torchrun (the launcher's own ranks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from alexnet_mp.commands import main
from alexnet_mp.profile.report import schema

pytestmark = pytest.mark.multiprocess  # every test here starts worker processes


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("profile")
    result = CliRunner().invoke(main, [
        "profile", "--compare", "paper,single,data-parallel", "--batch-size", "4", "--steps", "1",
        "--warmup", "0", "--device", "cpu", "--json", str(out / "p.json"), "--tensorboard", str(out / "tb"),
        "--plot", str(out / "p.svg")])
    assert result.exit_code == 0, result.output
    return json.loads((out / "p.json").read_text()), out, result.output


@pytest.fixture(scope="module")
def torchrun_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("torchrun") / "p.json"
    script = shutil.which("alexnet-mp", path=str(Path(sys.executable).parent)) or shutil.which("alexnet-mp")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, "profile",
         "--compare", "paper,single", "--batch-size", "2", "--steps", "2", "--warmup", "0", "--device", "cpu",
         "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


FLOATS = {"conv3": 21_632, "fc6": 4_608, "fc7": 2_048, "fc8": 2_048, "logits": 500}
"""The paper's floats per sample one column sends at each exchange (1000 classes), typed."""
PARAMS, COLUMN_PARAMS = 60_965_224, 30_482_612
"""The paper's parameters, the whole net's and one column's."""


def _paper_bytes(batch: int) -> dict[str, int]:
    """fp32 bytes one column sends per exchange and direction at ``batch``."""
    return {name: floats * batch * 4 for name, floats in FLOATS.items()}


def _bytes_by_exchange(strategy: dict) -> dict[tuple[str, str], list[int]]:
    return {(e["name"], e["direction"]): e["measured_bytes"] for e in strategy["exchanges"]}


def test_json_validates_against_the_documented_schema(compared, torchrun_report):
    report, _, _ = compared
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)
    jsonschema.validate(torchrun_report, schema(), cls=jsonschema.Draft202012Validator)
    assert report["schema"] == "alexnet-mp/profile/1"
    broken = json.loads(json.dumps(report))
    del broken["strategies"]["paper"]["ranks"][0]["memory"]["activations"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("which", ["spawned batch 4", "torchrun batch 2"])
def test_paper_measured_bytes_equal_the_analytic_figures_exactly(which, compared, torchrun_report):
    report = compared[0] if which.startswith("spawned") else torchrun_report
    batch = report["config"]["batch_size"]
    assert (batch, report["config"]["num_classes"]) == ((4, 1000) if which.startswith("spawned") else (2, 1000))
    paper = report["strategies"]["paper"]
    analytic = _paper_bytes(batch)
    measured = _bytes_by_exchange(paper)
    assert set(measured) == {(n, d) for n in analytic for d in ("forward", "backward")}  # nothing else crossed
    for (name, _), per_rank in measured.items():
        assert per_rank == [analytic[name]] * 2
    assert all(e["calls"] == [1, 1] for e in paper["exchanges"])
    assert paper["exact"] and paper["bytes_per_step"] == 2 * sum(analytic.values())


def test_data_parallel_allreduces_exactly_the_parameter_bytes(compared):
    report = compared[0]
    dp = report["strategies"]["data-parallel"]
    assert all(e["op"] == "all-reduce" and e["direction"] == "backward" for e in dp["exchanges"])
    for rank in range(2):
        assert sum(e["measured_bytes"][rank] for e in dp["exchanges"]) == PARAMS * 4
        assert dp["ranks"][rank]["memory"]["parameters"] == PARAMS * 4
        assert dp["ranks"][rank]["batch"] == 2
    assert dp["wire_bytes_per_step"] == report["analytic"]["data_parallel"]["wire_bytes_per_rank"]


def test_each_column_holds_half_of_the_single_devices_parameters_gradients_and_momentum(compared):
    report = compared[0]
    single = report["strategies"]["single"]["ranks"][0]
    for column in report["strategies"]["paper"]["ranks"]:
        for key in ("parameters", "gradients", "optimizer_state"):
            assert 2 * column["memory"][key] == single["memory"][key] == PARAMS * 4
        assert 2 * column["flops"] == single["flops"]
        # what autograd keeps for backward is at least the column's own output maps...
        # (659,272 neurons per sample in Figure 2, half per column, batch 4, 4 bytes)
        assert column["memory"]["activations"] > 4 * 4 * 659_272 // 2
        assert column["memory"]["activations"] < single["memory"]["activations"]
        assert column["memory"]["peak_tensors"] < single["memory"]["peak_tensors"]
    assert [r["column"] for r in report["strategies"]["paper"]["ranks"]] == [0, 1]


def test_table_and_tensorboard_say_what_was_measured(compared):
    report, out, text = compared
    assert "conv3      all-gather" in text and "verdict: paper holds the least per device" in text
    assert "346,112" in text and "(exact)" in text  # conv3: 21,632 floats x 4 samples x 4 bytes
    assert "fc6.grad" in text and "by rows" in text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {p.name for p in (out / "tb").iterdir() if p.is_dir()}
    assert runs == {"paper", "single", "data-parallel"}
    acc = EventAccumulator(str(out / "tb" / "data-parallel")).Reload()
    (event,) = acc.Scalars("comm/bytes_per_step(MB)")
    assert event.step == 4 and event.value == pytest.approx(243.860896, rel=1e-6)  # PARAMS x 4 B in MB; stored fp32: 2^-24 rel
    root = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0}).Reload()
    assert "profile/report/text_summary" in root.Tags()["tensors"]


def test_plot_draws_the_measured_memory_and_bytes(compared):
    pytest.importorskip("matplotlib")
    from alexnet_mp import plots

    report, out, text = compared
    assert f"wrote {out / 'p.svg'}" in text and b"<svg" in (out / "p.svg").read_bytes()[:2000]
    fig = plots.profile_figure(report)
    traffic = {p.get_gid(): p.get_width() for ax in fig.axes for p in ax.patches
               if (p.get_gid() or "").startswith("traffic:")}
    analytic = _paper_bytes(4)
    for name, n in analytic.items():
        assert traffic[f"traffic:paper:{name} all-gather fwd"] == n
        assert traffic[f"traffic:paper:{name} reduce-scatter bwd"] == n
    assert sum(v for k, v in traffic.items() if k.startswith("traffic:data-parallel:")) == PARAMS * 4
    assert not any(k.startswith("traffic:single:") for k in traffic)
    params = {p.get_gid(): p.get_height() * 2**20 for ax in fig.axes for p in ax.patches
              if (p.get_gid() or "").endswith(":parameters")}
    assert params["memory:paper:rank 0 col 0:parameters"] == pytest.approx(COLUMN_PARAMS * 4)
    assert params["memory:single:rank 0:parameters"] == pytest.approx(PARAMS * 4)


def test_hybrid_sends_the_pairs_exchanges_and_half_the_gradients(tmp_path):
    """4 spawned ranks on a (dp, mp) = (2, 2) mesh: exchanges at the replica's half batch,
    and each column all-reduces exactly its own parameters' bytes over its replicas."""
    result = CliRunner().invoke(main, ["profile", "--strategy", "hybrid", "--batch-size", "4", "--steps", "1",
                                       "--warmup", "0", "--device", "cpu", "--json", str(tmp_path / "h.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "h.json").read_text())
    jsonschema.validate(report, schema())
    hybrid = report["strategies"]["hybrid"]
    assert hybrid["exact"] and hybrid["processes"] == 4
    got = _bytes_by_exchange(hybrid)
    for name, n in _paper_bytes(2).items():  # each pair exchanges at the replica's half batch
        assert got[(name, "forward")] == got[(name, "backward")] == [n] * 4
    for rank in range(4):
        assert sum(got[(f"{layer}.grad", "backward")][rank] for layer in
                   ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")) == COLUMN_PARAMS * 4
    assert [r["column"] for r in hybrid["ranks"]] == [0, 1, 0, 1]


def test_overlap_keeps_the_bytes_and_reports_hidden_time(tmp_path):
    result = CliRunner().invoke(main, ["profile", "--strategy", "paper", "--batch-size", "2", "--steps", "1",
                                       "--warmup", "0", "--device", "cpu", "--overlap", "--json", str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o.json").read_text())
    jsonschema.validate(report, schema())
    paper = report["strategies"]["paper"]
    assert report["config"]["overlap"] and paper["exact"]
    hidden = {e["name"]: e["hidden_seconds"] for e in paper["exchanges"]}
    assert all(h > 0 for name in ("conv3", "fc6", "fc7", "fc8") for h in hidden[name])
    assert hidden["logits"] == [0.0, 0.0]  # nothing follows the logits to overlap with
    assert "hidden behind compute" in result.output
