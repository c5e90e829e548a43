"""``alexnet-mp verify``: passes on the correct split on any CPU, fails on a wrong one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from alexnet_mp.commands import main
from alexnet_mp.commands import verify as V
from alexnet_mp.model import AlexNet
from alexnet_mp.parallel import LocalColumns, placements

pytestmark = pytest.mark.slow  # nearly every test here runs the proof

CLASSES = 10


def one_process(batch_size, seed, dtype):
    return V.run(batch_size, seed, CLASSES, processes=False, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch_size,seed", [(2, 0), (8, 1), (5, 2)])
def test_the_correct_split_passes_over_seeds_and_batch_sizes(dtype, batch_size, seed):
    report = one_process(batch_size, seed, dtype)
    run = report["runs"]["one_process"]
    assert run["bytes_exact"] and not run["unexpected_exchanges"]
    assert report["ok"], V.format_report(report)


def test_float64_is_judged_against_the_derived_tolerance():
    report = one_process(2, 0, "float64")
    assert report["criterion"] == {"kind": "absolute", "relative": V.FLOAT64_TOLERANCE}
    run = report["runs"]["one_process"]
    assert all(t["allowed"] == V.FLOAT64_TOLERANCE for t in run["tensors"].values())
    assert max(t["rel"] for t in run["tensors"].values()) < 1e-12  # float64 rounding, far under the gate
    assert run["exchanges"]["conv3"]["forward"]["analytic"] == 2 * 21_632 * 8  # float64 doubles the bytes


def test_float32_is_judged_against_float64_relative_to_the_single_device_error():
    report = one_process(2, 0, "float32")
    floor = V.float32_floor(2)
    for name, t in report["runs"]["one_process"]["tensors"].items():
        assert t["allowed"] == pytest.approx(V.FLOAT32_FACTOR * max(t["single_rel"], floor)), name
    assert report["runs"]["one_process"]["exchanges"]["conv3"]["forward"]["analytic"] == 2 * 21_632 * 4


# --- planted faults: each must fail the proof ------------------------------------------

def _gather_own_part_twice(self, name, parts):
    """A column that skips the exchange: it sees its own part where the other's belongs."""
    return [torch.cat([p, p], dim=1) for p in parts]


def _logits_without_the_mean(copies):
    """The logits' 1/W missing: each column's copy carries the whole gradient."""
    return sum(c.to(copies[0].device) for c in copies)


def _lrn_across_the_columns(monkeypatch):
    original = AlexNet.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.lrn.groups = 1  # the 96 maps as one group: maps 47 and 48 become neighbours

    monkeypatch.setattr(AlexNet, "__init__", init)


@pytest.mark.parametrize("fault", ["skip_exchange", "logits_scale", "lrn_across_columns"])
def test_planted_faults_fail_in_float64(monkeypatch, fault):
    if fault == "skip_exchange":
        monkeypatch.setattr(LocalColumns, "_meet", _gather_own_part_twice)
    elif fault == "logits_scale":
        monkeypatch.setattr(placements, "mean_of_copies", _logits_without_the_mean)
    else:
        _lrn_across_the_columns(monkeypatch)
    report = one_process(2, 0, "float64")
    assert not report["ok"]
    assert report["runs"]["one_process"]["worst"] > 1e4  # far outside, not at the edge of the tolerance


@pytest.mark.parametrize("fault", ["skip_exchange", "logits_scale"])
def test_planted_faults_fail_in_float32(monkeypatch, fault):
    if fault == "skip_exchange":
        monkeypatch.setattr(LocalColumns, "_meet", _gather_own_part_twice)
    else:
        monkeypatch.setattr(placements, "mean_of_copies", _logits_without_the_mean)
    assert not one_process(2, 0, "float32")["ok"]


def _worker_with_unscaled_logits(rank, world, case, kind):
    """verify's worker, with the 1/W of the logits' gradient removed across processes."""
    placements.gather_logits = placements.gather_from_columns
    return V._worker(rank, world, case, kind)


@pytest.mark.multiprocess
def test_missing_logits_scale_across_processes_fails(monkeypatch):
    monkeypatch.setattr(V, "_worker", _worker_with_unscaled_logits)
    report = V.run(2, 0, CLASSES, dtype="float64")
    assert report["runs"]["one_process"]["ok"]
    processes = report["runs"]["processes"]
    assert not processes["ok"] and not report["ok"]
    assert processes["tensors"]["grad conv1.weight"]["rel"] == pytest.approx(1.0, rel=1e-6)  # twice the gradient
    assert processes["bytes_exact"]  # the bytes alone cannot see it


# --- the command ---------------------------------------------------------------------

@pytest.mark.multiprocess
def test_verify_with_no_arguments_passes():
    """The acceptance run, as a user first types it: float64, both placements, batch 8."""
    proc = subprocess.run([sys.executable, "-m", "alexnet_mp", "verify"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "verified: the split computes the single-device function" in proc.stdout
    assert "split processes [cpu, cpu (gloo)]: OK" in proc.stdout


@pytest.mark.multiprocess
def test_json_report_across_processes():
    result = CliRunner().invoke(main, ["verify", "--batch-size", "32", "--num-classes", "10", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema"] == V.SCHEMA and report["ok"] and report["dtype"] == "float64"
    assert set(report["runs"]) == {"one_process", "processes"}
    processes = report["runs"]["processes"]
    assert processes["backend"] == "gloo" and processes["ranks_agree"] and processes["bytes_exact"]
    assert processes["exchanges"]["fc6"]["backward"] == {"analytic": 32 * 4_608 * 8, "measured": [32 * 4_608 * 8] * 2}


def test_a_failed_proof_exits_1_and_marks_the_rows(monkeypatch):
    monkeypatch.setattr(placements, "mean_of_copies", _logits_without_the_mean)
    result = CliRunner().invoke(main, ["verify", "--batch-size", "2", "--num-classes", "10", "--one-process-only"])
    assert result.exit_code == 1
    assert "<-- over" in result.output and "NOT verified" in result.output


@pytest.mark.parametrize("args,needle", [
    (["verify", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["verify", "--batch-size", "-3"], "got -3"),
    (["verify", "--num-classes", "7"], "--num-classes must be an even number"),
    (["verify", "--seed", "99999999999999999999999"], "--seed"),
    (["verify", "--seed", "-1"], "--seed"),
    (["verify", "--dtype", "float16"], "--dtype"),
])
def test_bad_input_is_one_paragraph_not_a_traceback(args, needle):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
