#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md and docs/verify.md, as one script for a borrowed GPU machine
# (torch preinstalled there; DALI is not, so nothing here imports alexnet_mp.data).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/verify.txt"
import json, os
from alexnet_mp.commands.verify import run, format_report
for dtype in ("float64", "float32"):
    for b in (8, 128):
        r = run(b, 0, 1000, device="cuda", processes=False, dtype=dtype)
        print(format_report(r))
        json.dump(r, open(os.path.join(os.environ["OUT"], f"verify_{dtype}_b{b}.json"), "w"), indent=1)
PY
timeout 300 python3 benchmarks/step.py --device cuda --batch-size 128 --steps 20 --warmup 5 --compile \
  --json "$OUT/step_cuda.json" 2>&1 | tee "$OUT/step.txt"
python3 benchmarks/gpu_conv2_grad.py 2>&1 | tee "$OUT/conv2_grad.txt"
