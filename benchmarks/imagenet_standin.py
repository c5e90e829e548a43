"""A full-size ILSVRC-2012 stand-in: ImageNet's file count, names and layout, as hard links.

    python benchmarks/imagenet_standin.py /tmp/imagenet            # 1,281,167 + 50,000 files
    python benchmarks/imagenet_standin.py /tmp/mini --classes 4 --train 40 --val 12 --pool 8

writes, as the Kaggle download and the devkit lay them out::

    OUT/ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG      (1000 wnid folders, 732-1300 files each)
    OUT/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG  (flat, 50,000 files)
    OUT/LOC_val_solution.csv       OUT/LOC_synset_mapping.txt
    OUT/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt
    OUT/ILSVRC2012_devkit_t12/data/meta.mat       (with scipy; IDs in an order that is not the wnids')
    OUT/ILSVRC2012_devkit_t12/data/wnids_by_id.txt (the same map as text: one wnid per line, ID order)

Every image is a hard link to one of ``--pool`` generated JPEGs (``OUT/pool``) of ImageNet's
size (short side 333-500, rendered scenes with grain), including a CMYK JPEG and a PNG named ``.JPEG`` as
ImageNet has. It simulates the file count, the names and each file's decode cost; it does
not simulate disk or network reads (the pool sits in the page cache) nor ImageNet's content.
The wnids and words are made up in ImageNet's format (``n`` and 8 digits), not the real ones.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN, VAL, CLASSES = 1_281_167, 50_000, 1000
ROOT = Path("ILSVRC/Data/CLS-LOC")
DEVKIT = Path("ILSVRC2012_devkit_t12/data")


@dataclass
class Plan:
    """Names and labels of the stand-in: wnids (sorted), train files per class, val labels, devkit ID order."""

    wnids: list[str]
    train: list[list[str]]
    val_labels: np.ndarray  # class index of ILSVRC2012_val_<i+1>
    devkit_order: np.ndarray  # devkit_order[j] is the class index of ILSVRC2012_ID j+1


def plan(classes: int = CLASSES, train: int = TRAIN, val: int = VAL, seed: int = 0) -> Plan:
    rng = np.random.default_rng(seed)
    wnids = sorted(f"n{v:08d}" for v in rng.choice(np.arange(1_000_000, 15_100_000), classes, replace=False))
    hi = -(-train * 1_300_000 // (classes * TRAIN))  # ImageNet: most classes 1300 files, 12% fewer (to 732)
    counts = np.full(classes, hi)
    short = int(counts.sum() - train)
    few = rng.choice(classes, size=max(1, -(-classes * 12 // 100)), replace=False)
    counts[few] -= short // len(few)
    counts[few[:short % len(few)]] -= 1
    if counts.min() < 1:
        raise SystemExit(f"--train {train} is too few for --classes {classes}")
    names = []
    for wnid, n in zip(wnids, counts):
        numbers = np.sort(rng.choice(np.arange(1, max(2 * n, 20_000)), n, replace=False))
        names.append([f"{wnid}_{k}.JPEG" for k in numbers])
    val_labels = rng.permutation(np.arange(val) % classes)
    return Plan(wnids, names, val_labels, rng.permutation(classes))


def pool_image(i: int, rng: np.random.Generator) -> bytes:
    """One JPEG of ImageNet's size: a rendered scene (``synthetic.render``) at short side 333-500, with grain."""
    from alexnet_mp.data.synthetic import render

    img = render(int(rng.integers(0, 40)), rng).convert("RGB")
    short = int(rng.choice([333, 375, 375, 400, 500]))
    w, h = img.size
    size = (int(short * w / h), short) if w >= h else (short, int(short * h / w))
    arr = np.asarray(img.resize(size, Image.BILINEAR)).astype(np.int16)
    arr = np.clip(arr + rng.normal(0, 9, arr.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    if i == 1:
        Image.fromarray(arr).convert("CMYK").save(out, "JPEG", quality=90)  # ImageNet has a few CMYK JPEGs
    elif i == 2:
        Image.fromarray(arr).save(out, "PNG")  # ... and a PNG named .JPEG
    else:
        Image.fromarray(arr).save(out, "JPEG", quality=int(rng.integers(85, 96)))
    return out.getvalue()


def make_pool(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"pool_{i:05d}.JPEG"
        if not p.exists():
            p.write_bytes(pool_image(i, np.random.default_rng([seed, i])))
        paths.append(p)
        if (i + 1) % 200 == 0 or i + 1 == n:
            print(f"\rpool: {i + 1}/{n} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return paths


def link_files(out: Path, p: Plan, pool: list[Path]) -> None:
    """The train and val hard links (pool image ``i % len(pool)`` for the i-th file)."""
    k, total = 0, sum(map(len, p.train)) + len(p.val_labels)
    for wnid, names in zip(p.wnids, p.train):
        folder = out / ROOT / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.link(pool[k % len(pool)], folder / name)
            k += 1
        print(f"\rlinks: {k:,}/{total:,}", end="", file=sys.stderr, flush=True)
    val = out / ROOT / "val"
    val.mkdir(parents=True, exist_ok=True)
    for i in range(len(p.val_labels)):
        os.link(pool[k % len(pool)], val / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
        k += 1
    print(f"\rlinks: {k:,}/{total:,}", file=sys.stderr, flush=True)


def words(k: int) -> str:
    return f"stand-in class {k}, synthetic {k}"


def write_truth(out: Path, p: Plan, seed: int) -> None:
    """Kaggle's CSV and synset mapping; the devkit's ground truth, meta.mat and its text form."""
    rng = np.random.default_rng([seed, 1])
    rows = []
    for i in rng.permutation(len(p.val_labels)):
        wnid = p.wnids[p.val_labels[i]]
        boxes = " ".join(f"{wnid} {a} {b} {a + 90} {b + 120}" for a, b in rng.integers(0, 200, (1 + i % 3, 2)))
        rows.append(f"ILSVRC2012_val_{i + 1:08d},{boxes} ")
    (out / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (out / "LOC_synset_mapping.txt").write_text("".join(f"{w} {words(k)}\n" for k, w in enumerate(p.wnids)))
    (out / DEVKIT).mkdir(parents=True, exist_ok=True)
    id_of = np.empty(len(p.wnids), dtype=np.int64)
    id_of[p.devkit_order] = np.arange(1, len(p.wnids) + 1)
    (out / DEVKIT / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[k]}\n" for k in p.val_labels))
    (out / DEVKIT / "wnids_by_id.txt").write_text("".join(f"{p.wnids[k]}\n" for k in p.devkit_order))
    write_meta_mat(out / DEVKIT / "meta.mat", p)


def write_meta_mat(path: Path, p: Plan) -> None:
    """The devkit's ``synsets`` struct: the leaves (ID order) and two inner synsets (IDs after them)."""
    try:
        from scipy.io import savemat
    except ImportError:
        print("scipy is not installed: no meta.mat (wnids_by_id.txt holds the same map)", file=sys.stderr)
        return
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(j + 1, p.wnids[k], words(k), 0) for j, k in enumerate(p.devkit_order)]
    n = len(rows)
    rows += [(n + 1, "n00001740", "entity", 2), (n + 2, "n00002137", "abstraction", 1)]
    savemat(str(path), {"synsets": np.array(rows, dtype=dtype)})


def make_standin(out: Path, *, classes=CLASSES, train=TRAIN, val=VAL, pool=2000, seed=0) -> Path:
    """Writes the stand-in under ``out`` (which must not hold one yet); returns the dataset root."""
    if (out / ROOT).exists():
        raise SystemExit(f"{out / ROOT} exists already; remove it or choose another folder")
    p = plan(classes, train, val, seed)
    link_files(out, p, make_pool(out / "pool", min(pool, train + val), seed))
    write_truth(out, p, seed)
    return out / ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--classes", type=int, default=CLASSES)
    ap.add_argument("--train", type=int, default=TRAIN)
    ap.add_argument("--val", type=int, default=VAL)
    ap.add_argument("--pool", type=int, default=2000, help="distinct JPEGs the files link to")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    root = make_standin(a.out, classes=a.classes, train=a.train, val=a.val, pool=a.pool, seed=a.seed)
    print(f"wrote {root} (train/, flat val/), {a.out}/LOC_val_solution.csv, {a.out}/LOC_synset_mapping.txt, "
          f"{a.out / DEVKIT}/")


if __name__ == "__main__":
    main()
