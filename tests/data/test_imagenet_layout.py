"""ILSVRC-2012 as downloaded, in miniature: flat val/ with either ground truth, class names, bad ground truth."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet_mp.data import build_eval_loader, dataset_info
from alexnet_mp.data.folder import scan_split
from alexnet_mp.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from imagenet_standin import DEVKIT, ROOT, make_standin, plan  # noqa: E402  (the full-size stand-in's maker)

CLASSES, TRAIN, VAL = 4, 24, 12


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """4 wnid classes x 6 train files, 12 flat val files, Kaggle's and the devkit's ground truth."""
    out = tmp_path_factory.mktemp("imagenet")
    make_standin(out, classes=CLASSES, train=TRAIN, val=VAL, pool=6, seed=3)
    return out


def expected() -> tuple[list[str], list[int]]:
    """(val file names, class index) sorted as the index sorts them: by class, then name."""
    p = plan(CLASSES, TRAIN, VAL, seed=3)
    rows = sorted((int(k), f"ILSVRC2012_val_{i + 1:08d}.JPEG") for i, k in enumerate(p.val_labels))
    return [n for _, n in rows], [k for k, _ in rows]


def labels_from(mini: Path, tmp_path: Path, **keys) -> tuple[list[str], list[int]]:
    split = scan_split(mini / ROOT, "val", cache_dir=str(tmp_path / "c"), **keys)
    return [Path(f).name for f in split.files], split.labels.tolist()


def test_the_devkit_id_order_is_not_the_class_order():
    """The miniature keeps the pitfall: reading an ID as a class index would mislabel."""
    assert not np.array_equal(plan(CLASSES, TRAIN, VAL, seed=3).devkit_order, np.arange(CLASSES))


def test_kaggle_csv_labels_the_flat_val_folder(mini, tmp_path):
    assert labels_from(mini, tmp_path, val_labels=str(mini / "LOC_val_solution.csv")) == expected()


def test_devkit_ground_truth_through_the_text_id_map(mini, tmp_path):
    keys = dict(val_labels=str(mini / DEVKIT / "ILSVRC2012_validation_ground_truth.txt"),
                val_synsets=str(mini / DEVKIT / "wnids_by_id.txt"))
    assert labels_from(mini, tmp_path, **keys) == expected()


def test_devkit_ground_truth_through_meta_mat_beside_it(mini, tmp_path):
    pytest.importorskip("scipy")
    keys = dict(val_labels=str(mini / DEVKIT / "ILSVRC2012_validation_ground_truth.txt"))
    assert labels_from(mini, tmp_path, **keys) == expected()


def test_class_names_from_kaggle_and_the_devkit(mini):
    p = plan(CLASSES, TRAIN, VAL, seed=3)
    info = dataset_info(mini / ROOT, val_labels=str(mini / "LOC_val_solution.csv"),
                        class_names=str(mini / "LOC_synset_mapping.txt"))
    assert (info.classes, info.num_train, info.num_val) == (p.wnids, TRAIN, VAL)
    assert info.labels == [f"{w} stand-in class {k}, synthetic {k}" for k, w in enumerate(p.wnids)]


def test_class_names_from_the_devkit_meta_mat(mini):
    pytest.importorskip("scipy")
    p = plan(CLASSES, TRAIN, VAL, seed=3)
    info = dataset_info(mini / ROOT, val_labels=str(mini / "LOC_val_solution.csv"),
                        class_names=str(mini / DEVKIT / "meta.mat"))
    assert info.labels == [f"{w} stand-in class {k}, synthetic {k}" for k, w in enumerate(p.wnids)]


def test_the_eval_loader_reads_the_flat_folder(mini, tmp_path):
    from alexnet_mp.data import DataConfig

    cfg = DataConfig(path=str(mini / ROOT), loader="torchvision", threads=0, cache_dir=str(tmp_path / "c"),
                     val_labels=str(mini / "LOC_val_solution.csv"))
    labels = [y for _, ys in build_eval_loader(cfg, batch_size=5) for y in ys.tolist()]
    assert labels == expected()[1]


def _broken(mini: Path, tmp_path: Path, fault) -> Path:
    """A copy of the miniature's val/ and ground truth with ``fault(copy)`` applied; returns the copy's root."""
    copy = tmp_path / "copy"
    shutil.copytree(mini / ROOT, copy / ROOT, copy_function=lambda s, d: Path(d).symlink_to(s))
    (copy / DEVKIT).mkdir(parents=True)
    for f in ("LOC_val_solution.csv",):
        shutil.copy(mini / f, copy / f)
    for f in ("ILSVRC2012_validation_ground_truth.txt", "wnids_by_id.txt"):
        shutil.copy(mini / DEVKIT / f, copy / DEVKIT / f)
    fault(copy)
    return copy


def _edit(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


CSV, TRUTH = "LOC_val_solution.csv", DEVKIT / "ILSVRC2012_validation_ground_truth.txt"
BAD = {
    "missing row": (CSV, lambda c: _edit(c / CSV, lambda ls: [ls[0]] + sorted(ls[1:])[1:]),
                    r"has no row for 1 image\(s\) of .*val \(ILSVRC2012_val_00000001.JPEG\)"),
    "unknown wnid": (CSV, lambda c: _edit(c / CSV, lambda ls: ls[:3] + ["ILSVRC2012_val_00000099,n99999999 1 2 3 4"]
                                          + ls[3:]), r"line 4: gives the class 'n99999999', which is not a folder"),
    "no label": (CSV, lambda c: _edit(c / CSV, lambda ls: ls[:2] + ["ILSVRC2012_val_00000003,"] + ls[2:]),
                 r"line 3: 'ILSVRC2012_val_00000003,' has no label"),
    "named twice": (CSV, lambda c: _edit(c / CSV, lambda ls: ls + [ls[2]]),
                    rf"line {VAL + 2}: names it a second time \(first on line 3\)"),
    "listed but absent": (CSV, lambda c: (c / ROOT / "val" / "ILSVRC2012_val_00000005.JPEG").unlink(),
                          r"line \d+: names ILSVRC2012_val_00000005.JPEG, which is not in"),
    "ID out of range": (TRUTH, lambda c: _edit(c / TRUTH, lambda ls: ls[:6] + [str(CLASSES + 1)] + ls[7:]),
                        rf"line 7: '{CLASSES + 1}' is not an ILSVRC2012_ID; each line holds one whole number "
                        rf"from 1 to {CLASSES}"),
    "devkit row missing": (TRUTH, lambda c: _edit(c / TRUTH, lambda ls: ls[:-1]),
                           rf"has no row for 1 image\(s\) of .*\(ILSVRC2012_val_{VAL:08d}.JPEG\)"),
    "not a ground truth": (CSV, lambda c: (c / CSV).write_text("hello,world\n"), r"line 1 is 'hello,world'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ground_truth_is_one_paragraph_naming_the_line(mini, tmp_path, case):
    which, fault, message = BAD[case]
    copy = _broken(mini, tmp_path, fault)
    keys = dict(val_labels=str(copy / which))
    if which == TRUTH:
        keys["val_synsets"] = str(copy / DEVKIT / "wnids_by_id.txt")
    with pytest.raises(DataError, match=message) as err:
        scan_split(copy / ROOT, "val", cache_dir=str(tmp_path / "c"), **keys)
    assert "\n" not in str(err.value) and str(copy / which) in str(err.value)


def test_class_names_missing_a_class_or_naming_one_twice(mini, tmp_path):
    names = tmp_path / "names.txt"
    lines = (mini / "LOC_synset_mapping.txt").read_text().splitlines()
    names.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=rf"does not name 1 of the {CLASSES} class folders \({lines[0].split()[0]}\)"):
        dataset_info(mini / ROOT, val_labels=str(mini / CSV), class_names=str(names))
    names.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(DataError, match=rf"line {CLASSES + 1}: '{lines[0].split()[0]}' is named twice"):
        dataset_info(mini / ROOT, val_labels=str(mini / CSV), class_names=str(names))


def test_a_missing_ground_truth_file_names_the_key(mini, tmp_path):
    with pytest.raises(DataError, match=r"\[data\] val_labels = '.*nope.csv': cannot read"):
        scan_split(mini / ROOT, "val", cache_dir=str(tmp_path / "c"), val_labels=str(tmp_path / "nope.csv"))


def test_the_train_split_alone_needs_no_ground_truth_and_val_says_what_it_needs(mini, tmp_path):
    """dataset-stats reads train/ only; a flat val/ without val_labels gets the key to set."""
    p = plan(CLASSES, TRAIN, VAL, seed=3)
    split = scan_split(mini / ROOT, "train", cache_dir=str(tmp_path / "c"))
    assert [Path(f).name for f in split.files] == [n for names in p.train for n in sorted(names)]
    with pytest.raises(DataError, match=r"val holds no class folders; .*set \[data\] val_labels to its ground truth"):
        dataset_info(mini / ROOT)
