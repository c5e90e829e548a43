"""``make-dataset``: deterministic, photograph-like JPEGs, class-consistent content."""

from __future__ import annotations

import errno
import hashlib
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from alexnet_mp.commands import main
from alexnet_mp.data import dataset_info
from alexnet_mp.data import synthetic
from alexnet_mp.data.synthetic import HUES, MAX_CLASSES, class_name, class_spec, make_dataset
from alexnet_mp.errors import DataError


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


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "--seed -1: use a whole number >= 0"),
    (["--classes", "385"], "--classes 385: use between 2 and 384"),
    (["--train-per-class", "0"], "--train-per-class 0"),
    (["--val-per-class", "-3"], "--val-per-class -3"),
])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, args, needle):
    target = tmp_path / "x"
    result = CliRunner().invoke(main, ["make-dataset", str(target), "--quiet", *args])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not target.exists()
    again = CliRunner().invoke(main, ["make-dataset", str(target), "--quiet", "--classes", "2",
                                      "--train-per-class", "1", "--val-per-class", "1", "--seed", "1"])
    assert again.exit_code == 0, again.output


def _failing_render(monkeypatch, root, exc: BaseException, after: int) -> list[bool]:
    """``render`` raises ``exc`` after ``after`` images; returns whether root/train existed at each call."""
    real, seen = synthetic.render, []

    def render(k, rng):
        seen.append((root / "train").exists() or (root / "val").exists())
        if len(seen) > after:
            raise exc
        return real(k, rng)

    monkeypatch.setattr(synthetic, "render", render)
    return seen


@pytest.mark.parametrize("exc", [RuntimeError("injected"), KeyboardInterrupt(),
                                 OSError(errno.ENOSPC, "No space left on device")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_mid_generation_leaves_nothing_and_a_rerun_works(tmp_path, monkeypatch, exc, existing):
    root = tmp_path / "parent" / "ds"
    if existing:
        root.mkdir(parents=True)
    seen = _failing_render(monkeypatch, root, exc, after=5)
    expected = DataError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as err:  # one worker: the planted render runs in this process
        make_dataset(root, classes=2, train_per_class=4, val_per_class=2, progress=False, workers=1)
    if expected is DataError:
        assert f"cannot write the dataset to {root}: [Errno {errno.ENOSPC}] No space left" in str(err.value)
    assert len(seen) == 6 and not any(seen)  # nothing visible while writing
    if existing:
        assert root.is_dir() and list(root.iterdir()) == []  # the user's folder stays, empty
    else:
        assert not (tmp_path / "parent").exists()  # what make_dataset created is gone
    monkeypatch.undo()
    make_dataset(root, classes=2, train_per_class=4, val_per_class=2, progress=False)
    assert (dataset_info(root).num_train, dataset_info(root).num_val) == (8, 4)
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]


def test_train_appears_last(tmp_path, monkeypatch):
    """The trainer takes DIR/train to mean "the dataset exists": val/ must be in place first."""
    from pathlib import Path

    order, real = [], Path.replace

    def replace(self, target):
        order.append(Path(target).name)
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    make_dataset(tmp_path / "d", classes=2, train_per_class=1, val_per_class=1, progress=False)
    assert order == ["val", "train"]


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(DataError, match=f"{tmp_path / 'f'} is a file"):
        make_dataset(tmp_path / "f", classes=2, train_per_class=1, val_per_class=1, progress=False)
    with pytest.raises(DataError, match=f"cannot create the dataset folder {tmp_path / 'f' / 'ds'}"):
        make_dataset(tmp_path / "f" / "ds", classes=2, train_per_class=1, val_per_class=1, progress=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train").write_text("a file")
    result = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "d"), "--quiet"])
    assert result.exit_code == 2 and f"{tmp_path / 'd' / 'train'} already exists" in result.output


def _digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_the_files_do_not_depend_on_the_number_of_workers(tmp_path):
    one = make_dataset(tmp_path / "one", classes=3, train_per_class=7, val_per_class=3, seed=5, progress=False,
                       workers=1)
    three = make_dataset(tmp_path / "three", classes=3, train_per_class=7, val_per_class=3, seed=5, progress=False,
                         workers=3)
    files = _digest(one)
    assert len(files) == 3 * (7 + 3) and files == _digest(three)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the workers are forked on Linux only")
def test_a_failure_in_a_worker_process_leaves_nothing(tmp_path, monkeypatch):
    """The workers are forked after the fault is planted, so they inherit it."""
    root = tmp_path / "ds"
    _failing_render(monkeypatch, root, OSError(errno.ENOSPC, "No space left on device"), after=2)
    with pytest.raises(DataError, match="No space left on device"):
        make_dataset(root, classes=2, train_per_class=20, val_per_class=2, progress=False, workers=2)
    assert not root.exists()
