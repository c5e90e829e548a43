#!/usr/bin/env bash
# The README's quick start, timed as a new user meets it: a fresh clone, the dataset generated
# on first use, training, the final evaluation. Prints the banner's estimate, each validation,
# the wall-clock time and the CPU.
#
#   benchmarks/quickstart.sh [VENV]          (default: this checkout's .venv)
#   ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 benchmarks/quickstart.sh   # no AVX-512 kernels
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
# shellcheck disable=SC1091
. "$venv/bin/activate"
start=$(date +%s.%N)
torchrun --standalone --nproc_per_node=2 launch/train.py > "$work/log" 2>&1
end=$(date +%s.%N)
grep -E "estimate:|validation after|finished at" "$work/log"
python - "$start" "$end" <<'PY'
import platform, sys
seconds = float(sys.argv[2]) - float(sys.argv[1])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
print(f"wall-clock {int(seconds // 60)} min {seconds % 60:.0f} s on {cpu} "
      f"({'AVX-512' if 'avx512f' in flags else 'no AVX-512'} in the CPU)")
PY
