"""``make-dataset``: deterministic, photograph-like JPEGs, class-consistent content."""

from __future__ import annotations

import hashlib

import numpy as np
from click.testing import CliRunner
from PIL import Image

from alexnet_mp.cli import main
from alexnet_mp.data import dataset_info
from alexnet_mp.data.synthetic import HUES, MAX_CLASSES, class_name, class_spec, make_dataset


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = make_dataset(tmp_path / "a", classes=2, train_per_class=3, val_per_class=1, seed=4, progress=False)
    b = make_dataset(tmp_path / "b", classes=2, train_per_class=3, val_per_class=1, seed=4, progress=False)
    c = make_dataset(tmp_path / "c", classes=2, train_per_class=3, val_per_class=1, seed=5, progress=False)
    assert _digest(a) == _digest(b) and len(_digest(a)) == 8
    assert set(_digest(a).values()).isdisjoint(_digest(c).values())


def test_layout_sizes_aspects_and_grayscale(tmp_path):
    root = make_dataset(tmp_path / "d", classes=4, train_per_class=25, val_per_class=5, seed=0, progress=False)
    info = dataset_info(root)
    assert info.classes == [class_name(k) for k in range(4)] and (info.num_train, info.num_val) == (100, 20)
    shapes, modes = [], []
    for p in root.rglob("*.jpg"):
        with Image.open(p) as im:
            assert im.format == "JPEG"
            shapes.append(im.size)
            modes.append(im.mode)
    w, h = np.array(shapes).T
    assert len(set(shapes)) > 90  # sizes vary like photographs'
    assert (w / h).min() < 0.75 and (w / h).max() > 1.35 and min(w.min(), h.min()) >= 160
    assert 1 <= modes.count("L") <= 15 and modes.count("RGB") == len(modes) - modes.count("L")


def test_class_specs_are_unique_and_hue_alone_does_not_decide():
    specs = [class_spec(k) for k in range(MAX_CLASSES)]
    assert len(set(specs)) == MAX_CLASSES
    hues = [h for _, _, h in specs[:10]]
    assert len(set(hues)) < 10  # several of the first ten classes share a hue
    assert all(name.split("_")[1] in HUES for name in map(class_name, range(12)))


def test_classes_differ_in_colour_statistics_more_than_images_within_a_class(tmp_path):
    """A weak learnability check: class-mean hue histograms separate the classes."""
    root = make_dataset(tmp_path / "d", classes=4, train_per_class=12, val_per_class=1, seed=1, progress=False)
    feats = {}
    for k, cls in enumerate(sorted((root / "train").iterdir())):
        hists = []
        for p in sorted(cls.glob("*.jpg")):
            hsv = np.asarray(Image.open(p).convert("RGB").convert("HSV"))
            sat = hsv[..., 1] > 120  # the object's saturated colour, not the grey-ish background
            hists.append(np.bincount(hsv[..., 0][sat] // 16, minlength=16) / max(sat.sum(), 1))
        feats[k] = np.array(hists)
    centroids = {k: f.mean(0) for k, f in feats.items()}
    correct = sum(min(centroids, key=lambda c: np.abs(h - centroids[c]).sum()) == k
                  for k, f in feats.items() for h in f)
    assert correct >= 0.6 * 48  # chance is 25%


def test_cli_writes_the_dataset(tmp_path):
    result = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "x"), "--classes", "2",
                                       "--train-per-class", "2", "--val-per-class", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert dataset_info(tmp_path / "x").num_train == 4
    again = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "x")])
    assert again.exit_code == 2 and "already exists" in again.output
