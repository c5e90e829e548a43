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
# The trainer a user runs (launch/train.py), one process holding the network on one GPU, fed by
# the device-made synthetic source (no decoding; DALI is not needed): its steady-state images/s,
# to set beside step.py's in the same call (trainer / step benchmark).
timeout 240 python3 launch/train.py --config configs/paper.toml --set job.name=gpu-trainer \
  --set job.dump_folder="\"$OUT/runs\"" --set data.source='"synthetic"' --set data.synthetic_images=12800 \
  --set training.batch_size=128 --set training.max_steps=80 --set training.mixed_precision='"bf16"' \
  --set training.channels_last=true --set checkpoint.enable=false --set metrics.log_freq=20 \
  --set metrics.enable_tensorboard=false --set validation.ten_crop='"never"' 2>&1 | tee "$OUT/trainer.txt"
python3 - "$OUT" <<'PY'
import json, re, sys
out = sys.argv[1]
rates = [float(m) for m in re.findall(r"\| ([0-9.]+) img/s", open(f"{out}/trainer.txt").read())]
trainer = max(rates[1:] or rates or [0.0])  # the first logged window holds the warm-up
try:
    step = json.load(open(f"{out}/step_cuda.json"))
    best = max(r["images_per_s"] for r in step["rows"] if r["variant"] == "alexnet-fast-lrn" and r["bf16"]
               and not r["graph"] and not r["compile"])
except Exception as err:  # noqa: BLE001 - the ratio is only reported
    print("no step.py bf16 figure to compare:", err); best = None
print(f"trainer (synthetic source, bf16, eager) {trainer:.0f} img/s"
      + (f"; step.py bf16 eager {best:.0f} img/s; trainer / step = {trainer / best:.3f}" if best else ""))
PY
