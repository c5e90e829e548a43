"""``alexnet-mp profile`` of the 2014 scheme (2 and 4 workers) and the Megatron pairing: every
exchange's bytes equal the plan's analytic figure, the memory per device is the plan's share."""

from __future__ import annotations

import json

import jsonschema
import pytest
from click.testing import CliRunner

from alexnet_mp.commands import main
from alexnet_mp.profile import analytic
from alexnet_mp.profile.report import schema

pytestmark = pytest.mark.multiprocess

CONV_PARAMS = 2_334_080
"""conv1-conv5's weights and biases (the paper's table)."""
FC_PARAMS = 37_752_832 + 16_781_312
"""fc6 and fc7's (fc8 depends on the classes)."""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("plans")
    result = CliRunner().invoke(main, [
        "profile", "--compare", "one-weird-trick,megatron,one-weird-trick-4", "--batch-size", "4", "--steps", "1",
        "--warmup", "0", "--device", "cpu", "--num-classes", "20", "--json", str(out / "p.json"),
        "--plot", str(out / "p.svg")])
    assert result.exit_code == 0, result.output
    assert (out / "p.svg").stat().st_size > 0
    return json.loads((out / "p.json").read_text()), result.output


def test_every_exchange_equals_the_analytic_figure_exactly(report):
    data, text = report
    jsonschema.validate(data, schema(), cls=jsonschema.Draft202012Validator)
    for name, s in data["strategies"].items():
        assert s["exact"], name
        assert s["bytes_per_step"] == s["analytic_bytes_per_step"] > 0
        assert all(row["op"] != "unexpected" for row in s["exchanges"])
    assert "<-- differs" not in text


def test_the_2014_scheme_sums_the_convolutions_gradients_and_exchanges_the_batch(report):
    data, _ = report
    for name, world in (("one-weird-trick", 2), ("one-weird-trick-4", 4)):
        s = data["strategies"][name]
        rows = {(e["name"], e["direction"]): e for e in s["exchanges"]}
        assert sum(e["analytic_bytes"] for e in s["exchanges"] if e["name"].endswith(".grad")) == CONV_PARAMS * 4
        fc6 = rows[("fc6", "forward")]
        assert (fc6["op"], fc6["analytic_bytes"]) == ("all-gather", 9216 * (4 // world) * (world - 1) * 4)
        assert [r["batch"] for r in s["ranks"]] == [4 // world] * world
        # each worker holds the convolutions whole and its slice of fc6-fc8
        fc = FC_PARAMS + (4096 + 1) * 20
        assert s["parameters_per_device"] == (CONV_PARAMS + fc // world) * 4


def test_megatron_replaces_the_gather_between_fc7_and_fc8_with_all_reduces(report):
    data, _ = report
    rows = {(e["name"], e["direction"]): e for e in data["strategies"]["megatron"]["exchanges"]}
    assert rows[("fc7.out", "forward")]["analytic_bytes"] == 4 * 4096 * 4
    assert rows[("fc8", "backward")]["op"] == "all-reduce"
    assert ("fc7", "forward") not in rows
    assert data["strategies"]["megatron"]["parameters_per_device"] == \
        analytic.plan_memory("megatron", 4, 2, num_classes=20)["parameters"]
