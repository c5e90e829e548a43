"""The shared fixture modules (``data_fixtures``, ``train_fixtures``) live here; the test
packages mirror the library's (model, parallel, data, train, profile, commands).

``-m "not slow"`` runs the fast subset in about a minute: tests that train, run the proof or
take seconds are marked ``slow``, and every test that starts worker processes, torchrun or a
command in a subprocess is marked ``multiprocess`` (and counts as slow). A test skipped
without CUDA (``skipif`` with a reason starting "needs CUDA") is marked ``gpu``, so a GPU
machine runs just those: ``pytest -m gpu`` (benchmarks/gpu_speed.sh).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.slow)
        if any(str(m.kwargs.get("reason", "")).startswith("needs CUDA") for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.gpu)
