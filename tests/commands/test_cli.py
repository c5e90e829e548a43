"""The command line: summary, and clear errors instead of tracebacks (verify: tests/test_verify.py)."""

import json
import pytest
from click.testing import CliRunner

from alexnet_mp.commands import main


def test_summary_prints_the_paper_counts():
    out = CliRunner().invoke(main, ["summary"]).output
    for figure in ("60,965,224", "30,482,612", "290,400", "253,440", "186,624", "21,632"):
        assert figure in out


def test_summary_json():
    data = json.loads(CliRunner().invoke(main, ["summary", "--json"]).output)
    assert data["total_params"] == 60_965_224
    assert [r["layer"] for r in data["layers"] if r["exchange_before"]] == ["conv3", "fc6", "fc7", "fc8"]


@pytest.mark.parametrize("args,needle", [
    (["summary", "--num-classes", "5"], "do not split evenly"),
])
def test_bad_input_is_one_paragraph_not_a_traceback(args, needle):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output
