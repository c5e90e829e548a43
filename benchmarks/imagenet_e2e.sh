#!/usr/bin/env bash
# The paper's recipe (configs/paper.toml) on an ImageNet stand-in as downloaded, end to end on the
# CPU: the flat val/ with Kaggle's ground truth, class names from LOC_synset_mapping.txt, a few
# steps at a tiny batch, a SIGTERM and the resume, checked bit for bit against an uninterrupted
# run, then `alexnet-mp predict` on a JPEG, a PNG and a folder.
#
#   python benchmarks/imagenet_standin.py /tmp/imagenet-e2e --classes 10 --train 2000 --val 100 --pool 200
#   benchmarks/imagenet_e2e.sh /tmp/imagenet-e2e
#
# The full-size stand-in (no options) works the same way, but its first run decode-checks 1.33M
# files and the final validation covers 50,000 images (docs/benchmarks.md gives both costs).
set -euo pipefail
standin=$(cd "$1" && pwd)
root=$standin/ILSVRC/Data/CLS-LOC
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
steps=${STEPS:-6}
cd "$repo"
# the paper's config with CPU-sized overrides, one process for both columns; the run name is added per run
recipe=(launch/train.py --config configs/paper.toml --set job.dump_folder="\"$work/runs\""
  --set training.device='"cpu"' --set training.batch_size=4 --set training.max_steps="$steps"
  --set data.path="\"$root\"" --set data.val_labels="\"$standin/LOC_val_solution.csv\""
  --set data.class_names="\"$standin/LOC_synset_mapping.txt\"" --set data.loader='"torchvision"'
  --set data.threads=1 --set data.cache_dir="\"$work/cache\""
  --set validation.batch_size=25 --set validation.ten_crop='"never"'
  --set checkpoint.interval=1 --set metrics.log_freq=1 --set metrics.projector_images=8)
fail() { tail -20 "$1" >&2; echo "failed: see above ($1)" >&2; exit 1; }
echo "== uninterrupted: $steps steps" >&2
python "${recipe[@]}" --set job.name='"whole"' 2> "$work/whole.log" || fail "$work/whole.log"
grep -E "^  (data|classes):|finished at" "$work/whole.log" >&2
echo "== the same run, stopped by SIGTERM after step 2, then the same command again" >&2
python "${recipe[@]}" --set job.name='"stopped"' 2> "$work/stopped.log" &
pid=$!
until grep -qE "step ([2-9]|[1-9][0-9]+)/" "$work/stopped.log" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/stopped.log" >&2; echo "the run ended before step 2" >&2; exit 1; }
  sleep 0.5
done
kill -TERM "$pid"  # the trainer itself: it saves at the step boundary and leaves
wait "$pid" || true
grep -E "saved checkpoint|stopp" "$work/stopped.log" | tail -2 >&2
python "${recipe[@]}" --set job.name='"stopped"' 2> "$work/resumed.log" || fail "$work/resumed.log"
grep -E "resumed from|finished at" "$work/resumed.log" >&2
python -m alexnet_mp export "$work/runs/whole" --out "$work/whole.pt" >&2
python -m alexnet_mp export "$work/runs/stopped" --out "$work/stopped.pt" >&2
meta=$(ls -d "$work"/runs/stopped/checkpoints/step-*/ | tail -1)meta.json
echo "checkpoint meta.json: $(wc -c < "$meta") bytes; classes.json: $(wc -c < "$work/runs/stopped/classes.json") bytes" >&2
python - "$work/whole.pt" "$work/stopped.pt" <<'PY'
import sys, torch
a, b = (torch.load(p, weights_only=True) for p in sys.argv[1:])
same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"resumed run equals the uninterrupted run bit for bit: {same}", file=sys.stderr)
sys.exit(0 if same else 1)
PY
echo "== alexnet-mp predict: a JPEG, a PNG and a folder" >&2
jpeg=$(ls "$root/val" | head -1)
python -c "import sys; from PIL import Image; Image.open(sys.argv[1]).save(sys.argv[2])" "$root/val/$jpeg" "$work/one.png"
mkdir "$work/some" && for f in $(ls "$root/val" | sed -n 2,3p); do cp "$root/val/$f" "$work/some/"; done
python -m alexnet_mp predict "$work/runs/stopped" "$root/val/$jpeg" "$work/one.png" "$work/some" --top 3
echo "== a bad image, and a checkpoint without names" >&2
echo "not an image" > "$work/bad.jpg"
python -m alexnet_mp predict "$work/runs/stopped" "$work/bad.jpg" || echo "(exit status $?)"
rm "$work/runs/stopped/classes.json"
python -m alexnet_mp predict "$work/runs/stopped" "$root/val/$jpeg" || echo "(exit status $?)"
