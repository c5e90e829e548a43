#!/usr/bin/env bash
# The GPU speed checks of docs/benchmarks.md as one script for a borrowed GPU machine (torch
# and triton preinstalled there; no DALI, maybe no pytest): the CUDA-graphed step checked
# against the eager one, the LRN implementations alone (benchmarks/lrn.py), then the
# training step (benchmarks/step.py).
#   bash benchmarks/gpu_speed.sh                       # about 2 minutes on an H200
#   MODES=fp32,bf16,graph,compile VARIANTS=... bash benchmarks/gpu_speed.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if ! python3 -c "import pytest" 2>/dev/null; then   # the check below only needs these names
  mkdir -p /tmp/stub && cat > /tmp/stub/pytest.py <<'PY'
def importorskip(name, reason=None): return __import__(name)
def approx(*a, **k): return None
class mark:
    skipif = staticmethod(lambda *a, **k: (lambda f: f))
    parametrize = staticmethod(lambda *a, **k: (lambda f: f))
PY
  export PYTHONPATH=$PYTHONPATH:/tmp/stub
fi
timeout 90 python3 benchmarks/lrn.py --device cuda --batch 128 --bf16 2>&1 | tee "$OUT/lrn.txt"
timeout 150 python3 benchmarks/step.py --device cuda --batch-size 128 --steps 30 --warmup 8 \
  --modes "${MODES:-bf16,graph}" --variants "${VARIANTS:-alexnet-fast-lrn,alexnet-eager-lrn}" \
  --json "$OUT/step_cuda.json" 2>&1 | tee "$OUT/step.txt"
timeout 60 python3 -c "
import sys; sys.path[:0] = ['tests', 'tests/benchmarks', 'benchmarks']
from test_graphs import graphed_vs_eager
print('graphed vs eager', graphed_vs_eager())" 2>&1 | tee "$OUT/graph_check.txt"
