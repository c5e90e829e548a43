#!/usr/bin/env bash
# Every GPU check the project runs, as one script for a GPU machine (torch, torchvision and
# triton preinstalled there; no DALI, no registry). Bounded: stages run in order of importance
# while time is left (BUDGET seconds, default 470), each under its own timeout.
#
#   bash benchmarks/gpu_pkgs.sh                  # here, once: click, pytest … into .gpu_pkgs (carried along)
#   bash benchmarks/gpu_speed.sh                 # there; results under $OUT (default /tmp/out)
#   SMOKE=1 bash benchmarks/gpu_speed.sh         # on a CPU: every stage at toy sizes, to check the script
#   STAGES='step|trainer' bash benchmarks/gpu_speed.sh   # only the stages whose names match (grep -E)
#
# Stages: (1) step.py, graph and bf16 modes: the default net beside the one with ReLU+LRN+pool
# fused and torchvision's alexnet; (2) the trainer (launch/train.py) on the synthetic source,
# CUDA-graphed and eager, and trainer / step.py; (3) the fused kernel's error against float64;
# (4) the CUDA-only tests (pytest -m gpu); (5) nvJPEG decoding throughput on the generated
# dataset; (6) the trainer on that dataset, its data wait; (7) two processes sharing the GPU
# (torchrun, gloo with CUDA tensors), verify --device cuda, profile --device cuda; (8) conv1
# under the kernel profiler.
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -d .gpu_pkgs ] && export PYTHONPATH=$PYTHONPATH:$PWD/.gpu_pkgs
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python3}
BUDGET=${BUDGET:-470}
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then DEV=cpu; else DEV=cuda; fi

# run NAME SECONDS CMD...: CMD's output to $OUT/NAME.txt, if at least 20 s of the budget are left
run() {
  local name=$1 limit=$2; shift 2
  if [ -n "${STAGES:-}" ] && ! grep -qE "$STAGES" <<< "$name"; then return; fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped, ${left}s of the budget left" | tee "$OUT/$name.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at ${SECONDS}s, limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt"
  echo "== $name: exit $rc after ${SECONDS}s"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  $PY -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "no triton"
} | tee "$OUT/gpu.txt"

if [ "$SMOKE" = 1 ]; then
  STEP=(--device cpu --batch-size 2 --steps 1 --warmup 0 --variants alexnet-fast-lrn)
  LEN=(--set training.batch_size=4 --set training.max_steps=6 --set metrics.log_freq=2)
  SYN=(--set data.source='"synthetic"' --set data.synthetic_images=16 --set data.synthetic_val_images=8)
  DATASET=(--classes 2 --train-per-class 8 --val-per-class 2 --quiet)
  SHARED=(--set training.batch_size=4 --set training.max_steps=4 --set metrics.log_freq=2)
  GPU_TRAIN=(--set training.device='"cpu"')
else
  STEP=(--device cuda --batch-size 128 --steps 20 --warmup 8 --modes graph,bf16
        --variants alexnet-fast-lrn,alexnet-fused)
  LEN=(--set training.batch_size=128 --set training.max_steps=150 --set metrics.log_freq=25)
  SYN=(--set data.source='"synthetic"' --set data.synthetic_images=12800 --set data.synthetic_val_images=256)
  DATASET=(--classes 10 --train-per-class 400 --val-per-class 20 --quiet)
  SHARED=(--set training.batch_size=32 --set training.max_steps=12 --set metrics.log_freq=4)
  GPU_TRAIN=(--set training.mixed_precision='"bf16"' --set training.channels_last=true)
fi
COMMON=(--set checkpoint.enable=false --set metrics.enable_tensorboard=false --set validation.ten_crop='"never"'
        --set metrics.projector_images=0 --set job.dump_folder="\"$OUT/runs\"")

# (1) the step benchmark: the default net and the fused one beside torchvision's alexnet, same modes
run step 150 $PY benchmarks/step.py "${STEP[@]}" --json "$OUT/step.json"

# (2) the trainer a user runs, one process, the whole network on the GPU, synthetic source (no decoding)
for g in true false; do
  extra=(); [ "$SMOKE" = 1 ] || extra=(--set training.cuda_graph=$g)
  run "trainer_graph_$g" 90 $PY launch/train.py --config configs/paper.toml --set job.name="\"trainer-graph-$g\"" \
    "${SYN[@]}" "${LEN[@]}" "${GPU_TRAIN[@]}" "${COMMON[@]}" "${extra[@]}"
  [ "$SMOKE" = 1 ] && break
done
$PY - "$OUT" "$SMOKE" <<'PY' | tee "$OUT/trainer_vs_step.txt"
import json, re, statistics, sys
out, smoke = sys.argv[1], sys.argv[2] == "1"
def rate(name):
    try:
        rates = [float(m) for m in re.findall(r"\| ([0-9.]+) img/s", open(f"{out}/{name}.txt").read())]
    except OSError:
        return None
    return statistics.median(rates[1:] or rates) if rates else None  # the first window: warm-up, capture
try:
    rows = json.load(open(f"{out}/step.json"))["rows"]
except Exception as err:  # noqa: BLE001 - reported, not fatal
    rows = []; print("no step.py figures:", err)
def step(variant, graph):
    got = [r["images_per_s"] for r in rows if r["variant"] == variant and bool(r.get("graph")) == graph]
    return max(got) if got else None
for graph, name in ((True, "trainer_graph_true"), (False, "trainer_graph_false")):
    t, s = rate(name), step("alexnet-fast-lrn", graph if not smoke else False)
    print(f"trainer ({name}) {t} img/s; step.py alexnet-fast-lrn graph={graph}: {s} img/s; "
          f"trainer / step = {t / s:.3f}" if t and s else f"{name}: {t} img/s, step.py: {s}")
for graph in (True, False):
    f, tv = step("alexnet-fast-lrn", graph), step("torchvision-alexnet", graph)
    if f and tv:
        print(f"faithful / torchvision (graph={graph}): {f:.0f} / {tv:.0f} = {f / tv:.3f}")
PY

# (3) the fused ReLU+LRN+max-pool kernel against float64, fp32 and bf16 storage
if [ "$SMOKE" = 1 ]; then
  run fused_error 120 env TRITON_INTERPRET=1 $PY benchmarks/fused_error.py --device cpu --small
else
  run fused_error 60 $PY benchmarks/fused_error.py --device cuda
fi

# (4) the tests that need CUDA (skipped on a CPU): graph vs eager, sync-free step, kernels, nvJPEG
run cuda_tests 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests

# (5) decoding: the generated dataset through the nvJPEG path (DALI is not installed there)
run make_dataset 60 $PY -m alexnet_mp make-dataset "$OUT/data" "${DATASET[@]}"
run decode 90 $PY benchmarks/decode.py --data "$OUT/data" --device "$DEV" --step-ms 7 --json "$OUT/decode.json" \
  $([ "$SMOKE" = 1 ] && echo --epochs 1 --workers 2 --batch 4)

# (6) the trainer on that dataset, decoding on the GPU: its data wait beside its step
run trainer_folder 90 $PY launch/train.py --config configs/paper.toml --set job.name='"trainer-folder"' \
  --set data.path="\"$OUT/data\"" --set data.cache_dir="\"$OUT/cache\"" \
  "${LEN[@]}" "${GPU_TRAIN[@]}" "${COMMON[@]}"

# (7) the column-per-process trainer with both ranks on one GPU (gloo with CUDA tensors), verify, profile
run torchrun_shared 90 $PY -m torch.distributed.run --standalone --nproc_per_node=2 launch/train.py \
  --config configs/paper.toml --set job.name='"shared-gpu"' "${SYN[@]}" "${SHARED[@]}" "${COMMON[@]}" \
  $([ "$SMOKE" = 1 ] && echo --set training.device='"cpu"')
run verify 90 $PY -m alexnet_mp verify --device "$DEV" --batch-size 4 --num-classes 10
run profile 90 $PY -m alexnet_mp profile --device "$DEV" --compare paper,single --batch-size 32 --steps 3 \
  --warmup 1 --json "$OUT/profile.json"

# (8) conv1 and the rest under the kernel profiler
run conv1_profile 60 $PY benchmarks/conv1_profile.py --device "$DEV" $([ "$SMOKE" = 1 ] && echo --batch 2)
echo "done in ${SECONDS}s; results under $OUT"
