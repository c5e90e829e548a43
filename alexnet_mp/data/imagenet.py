"""ILSVRC-2012 as downloaded: validation ground truth and class names, read where they lie.

The validation images of both official downloads sit in one flat folder
(``val/ILSVRC2012_val_00000001.JPEG`` …); their labels are in a separate file:

- Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString``; the string repeats
  ``wnid x1 y1 x2 y2`` per box, and the first wnid is the image's label.
- The devkit's ``data/ILSVRC2012_validation_ground_truth.txt``: line i holds the
  ILSVRC2012_ID (1–1000) of ``ILSVRC2012_val_<i>.JPEG``. The IDs are the devkit's own order
  (``data/meta.mat``), not the sorted-wnid order of class folders: an ID is mapped to its
  wnid, and the wnid to the class index, never used as a class index itself.

Class names: Kaggle's ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``), any
``wnid<tab or space>words`` file (ImageNet's ``words.txt``), or the devkit's ``meta.mat``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

KAGGLE_HEADER = "ImageId,PredictionString"
VAL_FILE = "ILSVRC2012_val_{:08d}.JPEG"
_WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True, slots=True)
class Truth:
    """One ground-truth row: the image's file name, its class folder name, the line it came from."""

    name: str
    wnid: str
    line: int


def _lines(path: str | Path, what: str, key: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"[data] {key} = {str(path)!r}: cannot read the {what} ({err.strerror or err}).") from None
    except UnicodeDecodeError:
        raise DataError(f"[data] {key} = {str(path)!r}: the {what} is not UTF-8 text.") from None


def read_val_labels(path: str | Path, *, synsets: str | Path = "") -> list[Truth]:
    """The rows of a ground-truth file, its format detected: Kaggle CSV or the devkit's IDs."""
    lines = _lines(path, "validation ground truth", "val_labels")
    first = next((s for s in lines if s.strip()), "")
    if first.strip().lstrip("\ufeff") == KAGGLE_HEADER:
        return _kaggle(path, lines)
    if first.strip().isdigit():
        return _devkit(path, lines, devkit_wnids(synsets or _beside(path)))
    raise DataError(f"[data] val_labels = {str(path)!r}: line 1 is {first[:60]!r}; a ground-truth file is "
                    f"Kaggle's LOC_val_solution.csv (header {KAGGLE_HEADER!r}) or the devkit's "
                    "ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012_ID per line).")


def _kaggle(path, lines: list[str]) -> list[Truth]:
    rows = []
    for n, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        image, _, boxes = text.partition(",")
        wnid = boxes.split()[0] if boxes.split() else ""
        if not image.strip() or not wnid:
            raise DataError(f"{path}, line {n}: {text[:80]!r} has no label; each row is ImageId,PredictionString "
                            "with the label's wnid first in the string (e.g. "
                            "'ILSVRC2012_val_00000001,n01751748 1 2 3 4').")
        rows.append(Truth(image.strip() + ".JPEG", wnid, n))
    return rows


def _devkit(path, lines: list[str], wnids: list[str]) -> list[Truth]:
    rows = []
    for n, text in enumerate(lines, start=1):
        value = text.strip()
        if not value.isdigit() or not 1 <= int(value) <= len(wnids):
            raise DataError(f"{path}, line {n}: {text[:40]!r} is not an ILSVRC2012_ID; each line holds one "
                            f"whole number from 1 to {len(wnids)} (the ID of ILSVRC2012_val_{n:08d}.JPEG).")
        rows.append(Truth(VAL_FILE.format(n), wnids[int(value) - 1], n))
    return rows


def _beside(path) -> Path:
    """The devkit keeps meta.mat beside the ground truth (``data/``)."""
    return Path(path).parent / "meta.mat"


def devkit_wnids(path: str | Path) -> list[str]:
    """The wnid of each ILSVRC2012_ID (index 0 is ID 1): the devkit's ``meta.mat``, or a text
    file with one wnid per line in ID order (line 1 is ID 1; words after the wnid are ignored)."""
    path = Path(path)
    if path.suffix == ".mat":
        return [wnid for wnid, _ in _meta_mat(path, "val_synsets")]
    lines = [s.split()[0] for s in _lines(path, "devkit ID-to-wnid list", "val_synsets") if s.strip()]
    bad = next((n for n, w in enumerate(lines, 1) if not _WNID.fullmatch(w)), None)
    if bad is not None or not lines:
        raise DataError(f"[data] val_synsets = {str(path)!r}: line {bad or 1} is not a wnid; the file lists "
                        "one wnid (n followed by 8 digits) per line in ILSVRC2012_ID order.")
    return lines


def _meta_mat(path: Path, key: str) -> list[tuple[str, str]]:
    """(wnid, words) of the 1000 leaf synsets of the devkit's meta.mat, in ILSVRC2012_ID order."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"[data] {key} = {str(path)!r}: reading the devkit's MATLAB meta.mat needs scipy "
                        "(pip install scipy); or give the same mapping as text, one wnid per line in "
                        "ILSVRC2012_ID order.") from None
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        rows = sorted((int(s["ILSVRC2012_ID"]), str(s["WNID"]), str(s["words"])) for s in synsets
                      if int(s["num_children"]) == 0)
    except Exception as err:  # scipy raises many kinds on a file that is not a MATLAB file
        raise DataError(f"[data] {key} = {str(path)!r}: not the devkit's meta.mat ({err}).") from None
    if not rows:
        raise DataError(f"[data] {key} = {str(path)!r}: meta.mat lists no leaf synsets.")
    return [(wnid, words) for _, wnid, words in rows]


def read_class_names(path: str | Path) -> dict[str, str]:
    """wnid (class folder name) → words, from ``wnid words`` lines or the devkit's meta.mat."""
    path = Path(path)
    if path.suffix == ".mat":
        return dict(_meta_mat(path, "class_names"))
    names: dict[str, str] = {}
    for n, text in enumerate(_lines(path, "class-name list", "class_names"), start=1):
        if not text.strip():
            continue
        key, _, words = text.strip().partition("\t") if "\t" in text else text.strip().partition(" ")
        key = key.strip()
        if key in names:
            raise DataError(f"{path}, line {n}: {key!r} is named twice; each line names one class "
                            "('n01440764 tench, Tinca tinca').")
        names[key] = words.strip() or key
    return names


def names_for(classes: list[str], path: str | Path) -> list[str]:
    """Each class's words from ``path`` (a class the file does not name is a ``DataError``)."""
    table = read_class_names(path)
    missing = [c for c in classes if c not in table]
    if missing:
        raise DataError(f"[data] class_names = {str(path)!r} does not name {len(missing)} of the {len(classes)} "
                        f"class folders ({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}); it must "
                        "have one 'wnid words' line per class folder.")
    return [table[c] for c in classes]


RUN_CLASSES = "classes.json"
"""Written into a run folder by the trainer: label k's class folder and words, for ``predict``."""


def write_run_classes(run_dir: Path, classes: list[str], names: list[str] | None) -> Path:
    """``run_dir/classes.json``: ``{"version": 1, "classes": [...], "names": [...] or null}``, whole or not at all."""
    import json
    import os

    out = Path(run_dir) / RUN_CLASSES
    tmp = out.with_name(f".{RUN_CLASSES}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": 1, "classes": list(classes), "names": names}, indent=0))
    tmp.replace(out)
    return out


def read_run_classes(path: Path) -> list[str]:
    """Label k's display name (``"n01440764 tench, Tinca tinca"``) from a run's ``classes.json``;
    a ``DataError`` naming the file when it is not one ``write_run_classes`` wrote."""
    import json

    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        classes, names = table["classes"], table["names"]
        ok = (table.get("version") == 1 and type(classes) is list and all(type(c) is str for c in classes)
              and (names is None or type(names) is list and len(names) == len(classes)
                   and all(type(n) is str for n in names)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a class list this toolkit wrote ({err}); delete it, or give the names "
                        "with --names FILE (one 'wnid words' line per class, in label order).") from None
    if not ok:
        raise DataError(f"{path}: not a class list this toolkit wrote (version 1, 'classes' and 'names' lists of "
                        "strings of one length); give the names with --names FILE instead.")
    return [f"{c} {n}" if n and n != c else c for c, n in zip(classes, names or classes)]
