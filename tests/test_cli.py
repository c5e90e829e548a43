"""The command line: summary, verify, and clear errors instead of tracebacks."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from alexnet_mp.cli import main


def test_summary_prints_the_paper_counts():
    out = CliRunner().invoke(main, ["summary"]).output
    for figure in ("60,965,224", "30,482,612", "290,400", "253,440", "186,624", "21,632"):
        assert figure in out


def test_summary_json():
    data = json.loads(CliRunner().invoke(main, ["summary", "--json"]).output)
    assert data["total_params"] == 60_965_224
    assert [r["layer"] for r in data["layers"] if r["exchange_before"]] == ["conv3", "fc6", "fc7", "fc8"]


def test_verify_json_one_process():
    result = CliRunner().invoke(main, ["verify", "--batch-size", "2", "--num-classes", "10",
                                       "--one-process-only", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema"] == "alexnet-mp/verify/1" and report["ok"]
    run = report["runs"]["one_process"]
    assert run["rel"] <= 1e-5
    assert run["exchanges"]["conv3"]["forward"] == {"analytic": 2 * 21_632 * 4, "measured": [2 * 21_632 * 4] * 2}


def test_verify_float64_is_exact_to_1e_10():
    result = CliRunner().invoke(main, ["verify", "--batch-size", "2", "--num-classes", "10", "--dtype", "float64",
                                       "--one-process-only", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["dtype"] == "float64" and report["tolerance"]["relative"] == 1e-10
    run = report["runs"]["one_process"]
    assert run["rel"] <= 1e-10
    assert run["exchanges"]["conv3"]["forward"]["analytic"] == 2 * 21_632 * 8  # float64 doubles the bytes


@pytest.mark.parametrize("batch", [8, 128])
def test_verify_passes_across_processes(batch):
    """The acceptance run: the installed command, batch 8 and 128, both placements."""
    proc = subprocess.run([sys.executable, "-m", "alexnet_mp", "verify", "--batch-size", str(batch), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and set(report["runs"]) == {"one_process", "processes"}
    assert report["runs"]["processes"]["backend"] == "gloo"
    assert report["runs"]["processes"]["ranks_agree"]


@pytest.mark.parametrize("args,needle", [
    (["verify", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["verify", "--batch-size", "-3"], "got -3"),
    (["verify", "--num-classes", "7"], "--num-classes must be an even number"),
    (["summary", "--num-classes", "5"], "do not split evenly"),
])
def test_bad_input_is_one_paragraph_not_a_traceback(args, needle):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output
