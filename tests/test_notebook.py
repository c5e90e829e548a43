"""docs/notebook.py runs headless, every cell without error, within two minutes on a CPU (CI runs this)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebook.py"

pytest.importorskip("marimo")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.multiprocess  # runs marimo in a subprocess


def _export(notebook: Path, out: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    marimo = shutil.which("marimo", path=str(Path(sys.executable).parent)) or shutil.which("marimo")
    return subprocess.run([marimo, "export", "html", str(notebook), "-o", str(out), "-f"], capture_output=True,
                          text=True, timeout=timeout, cwd=out.parent)


def test_a_cell_error_fails_the_headless_export(tmp_path):
    """The check below means something: marimo's export exits non-zero when a cell raises."""
    broken = tmp_path / "broken.py"
    broken.write_text("import marimo\napp = marimo.App()\n\n\n@app.cell\ndef _():\n    1 / 0\n    return\n\n\n"
                      "if __name__ == '__main__':\n    app.run()\n")
    proc = _export(broken, tmp_path / "broken.html", timeout=120)
    assert proc.returncode != 0 and "some cells failed" in proc.stdout + proc.stderr


def test_the_notebook_runs_headless_without_a_cell_error_in_under_two_minutes(tmp_path):
    start = time.perf_counter()
    proc = _export(NOTEBOOK, tmp_path / "notebook.html")
    took = time.perf_counter() - start
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert "failed" not in log and "MarimoExceptionRaisedError" not in log, log
    html = (tmp_path / "notebook.html").read_text()
    # each section rendered its output; with no runs/quickstart, section 5 made and showed a tiny run
    section5 = "Loaded in" if (ROOT / "runs" / "quickstart").is_dir() else "tiny run"
    for words in ("Figure 2, drawn from the layer table", "Verified", "the exchanges sent exactly the analytic bytes",
                  "The profiler", "LRN within each column", "Only the 2 maps on each side", section5,
                  "colour specificity"):
        assert words in html, words
    assert html.count("data:image/png;base64") >= 6  # figures 2, verify, profile, LRN, curves, filters
    assert took < 120, f"the notebook took {took:.0f} s headless (budget: 2 minutes on a CPU)"
