"""An ImageNet-style folder (``train/<class>/*``, ``val/<class>/*``): classes, files, bad files.

Every file is checked once, cheaply, before a pipeline sees it (DALI stops the whole
pipeline on an undecodable file, mid-epoch): PIL reads the header (format, size, mode),
and the tail must hold the format's end marker (JPEG ``FF D9``, PNG ``IEND``), which
catches truncated files without decoding them. Both are a few kilobytes of I/O per file.
The result (and each image's size, which the crops need) is cached under ``cache_dir``,
keyed by the split folder's path and every class folder's mtime (adding or removing a
file changes it), so a second run over ImageNet's 1.28M files reads one file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DECODABLE_FORMATS = ("JPEG", "PNG", "BMP", "MPO")  # what DALI and PIL both decode
_TAIL = 4096
CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What a dataset folder holds: class names (label = index) and image counts per split."""

    root: Path
    classes: list[str]
    num_train: int
    num_val: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True, slots=True)
class Split:
    """One split's decodable images: paths, labels, (height, width), and what was skipped."""

    root: Path
    classes: list[str]
    files: list[str]
    labels: np.ndarray  # int64 (N,)
    sizes: np.ndarray  # int64 (N, 2): height, width as stored (no EXIF rotation)
    bad: list[tuple[str, str]]  # (path, reason)

    def __len__(self) -> int:
        return len(self.files)


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} is missing: a dataset folder holds train/<class>/*.jpg and val/<class>/*.jpg "
            "(make one with `alexnet-mp make-dataset DIR`)."
        )
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} holds no class folders; expected {split_dir}/<class>/*.jpg.")
    return classes


def _images(class_dir: Path) -> list[str]:
    return sorted(
        e.path for e in os.scandir(class_dir)
        if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")
    )


def classes_of(root: str | Path) -> list[str]:
    """The class names, checking that train and val hold the same class folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist (make one with `alexnet-mp make-dataset {root}`).")
    train, val = _class_folders(root / "train"), _class_folders(root / "val")
    if train != val:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise DataError(
            f"{root}: train and val class folders differ; only in train: {only_train[:5] or 'none'}"
            f"{' …' if len(only_train) > 5 else ''}; only in val: {only_val[:5] or 'none'}"
            f"{' …' if len(only_val) > 5 else ''}. Both splits must hold the same classes."
        )
    return train


def dataset_info(root: str | Path) -> DatasetInfo:
    """Classes and file counts (no decoding); a ``DataError`` for a folder that cannot be used."""
    root = Path(root)
    classes = classes_of(root)
    counts = {}
    for split in SPLITS:
        n = 0
        for c in classes:
            k = len(_images(root / split / c))
            if k == 0:
                raise DataError(f"class folder {root / split / c} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            n += k
        counts[split] = n
    return DatasetInfo(root=root, classes=classes, num_train=counts["train"], num_val=counts["val"])


def check_image(path: str) -> tuple[int, int, str]:
    """(height, width, "") for a decodable image, else (0, 0, reason)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return 0, 0, "empty file (0 bytes)"
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
        if fmt not in DECODABLE_FORMATS:
            return 0, 0, f"{fmt} image; decodable formats are {', '.join(DECODABLE_FORMATS)}"
        with open(path, "rb") as f:
            f.seek(max(0, size - _TAIL))
            tail = f.read()
        if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in tail:
            return 0, 0, "truncated JPEG (no end-of-image marker)"
        if fmt == "PNG" and b"IEND" not in tail:
            return 0, 0, "truncated PNG (no IEND chunk)"
        if h < 1 or w < 1:
            return 0, 0, f"image of size {w}x{h}"
        return h, w, ""
    except Image.UnidentifiedImageError:
        return 0, 0, "not an image (PIL cannot identify it)"
    except (OSError, ValueError, SyntaxError) as err:
        return 0, 0, f"unreadable: {err}"


def _cache_file(split_dir: Path, classes: list[str], cache_dir: str) -> Path:
    key = hashlib.sha256(str(split_dir.resolve()).encode())
    for c in classes:
        key.update(f"{c}:{os.stat(split_dir / c).st_mtime_ns}".encode())
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet-mp"
    return base / f"index-v{CACHE_VERSION}-{split_dir.name}-{key.hexdigest()[:24]}.json"


def scan_split(
    root: str | Path, split: str, *, on_bad_file: str = "skip", threads: int = 8, cache_dir: str = "",
    progress: bool = False,
) -> Split:
    """Lists and checks one split; bad files are skipped (logged) or raise a ``DataError``."""
    root = Path(root)
    classes = classes_of(root)
    split_dir = root / split
    cache = _cache_file(split_dir, classes, cache_dir)
    entries = None
    if cache.is_file():
        try:
            entries = json.loads(cache.read_text())["entries"]
        except (OSError, ValueError, KeyError):
            entries = None
    if entries is None:
        listing = []
        for label, c in enumerate(classes):
            paths = _images(split_dir / c)
            if not paths:
                raise DataError(f"class folder {split_dir / c} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            listing += [(p, label) for p in paths]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            checked = pool.map(check_image, [p for p, _ in listing], chunksize=256)
            if progress:
                import click, sys

                with click.progressbar(checked, length=len(listing), label=f"checking {split_dir}", file=sys.stderr) as bar:
                    checked = list(bar)
            entries = [[os.path.relpath(p, split_dir), label, h, w, why] for (p, label), (h, w, why) in zip(listing, checked)]
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"root": str(split_dir.resolve()), "entries": entries}))
            tmp.replace(cache)
        except OSError as err:  # a read-only cache only costs the next run a rescan
            log.warning("could not cache the file index at %s: %s", cache, err)
    good = [e for e in entries if not e[4]]
    bad = [(str(split_dir / e[0]), e[4]) for e in entries if e[4]]
    if bad:
        listed = "; ".join(f"{p}: {why}" for p, why in bad[:10]) + (" …" if len(bad) > 10 else "")
        if on_bad_file == "fail":
            raise DataError(
                f"{len(bad)} undecodable file(s) in {split_dir}: {listed}. "
                "Remove or replace them, or set [data] on_bad_file = \"skip\"."
            )
        log.warning("skipping %d undecodable file(s) in %s: %s", len(bad), split_dir, listed)
    if not good:
        raise DataError(f"{split_dir} holds no decodable images.")
    empty = sorted(set(range(len(classes))) - {e[1] for e in good})
    if empty:
        raise DataError(
            f"class folder(s) with no decodable images: {', '.join(str(split_dir / classes[k]) for k in empty[:5])}."
        )
    return Split(
        root=root,
        classes=classes,
        files=[str(split_dir / e[0]) for e in good],
        labels=np.array([e[1] for e in good], dtype=np.int64),
        sizes=np.array([[e[2], e[3]] for e in good], dtype=np.int64).reshape(-1, 2),
        bad=bad,
    )
