"""The shared fixture modules (``data_fixtures``, ``train_fixtures``) live here; the test
packages mirror the library's (model, parallel, data, train, profile, commands).

``-m "not multiprocess"`` runs the fast subset: every test that starts worker processes,
torchrun or a command in a subprocess is marked ``multiprocess``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
