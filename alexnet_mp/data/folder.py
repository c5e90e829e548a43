"""An ImageNet-style folder (``train/<class>/*``, ``val/<class>/*``): classes, files, bad files.

Every file is checked once before a pipeline sees it (DALI stops the whole pipeline on an
undecodable file mid-epoch, or decodes corrupt data to garbage with only a libjpeg warning;
PIL, which the torchvision path and ``dataset-stats`` use, raises). The check: PIL reads the
header (format, size; a declared size over PIL's decompression-bomb limit is a bad file);
the tail must hold the format's end marker (JPEG ``FF D9``, PNG ``IEND``), which names a
truncated file; then PIL decodes the pixel stream, a JPEG at 1/8 scale (``Image.draft``:
libjpeg still entropy-decodes every block, where corruption such as a marker it cannot
parse is fatal, and skips most of the inverse DCT and colour work). docs/data.md ("Bad
input") gives how well the 1/8 decode agrees with a full decode, and what the scan costs.
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
CACHE_VERSION = 2  # 2: the pixel stream is decoded, not only the header and tail


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


def _listing(folder: Path, keep) -> list[os.DirEntry]:
    """The entries of ``folder`` that ``keep`` accepts; a ``DataError`` naming it when it cannot be read."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if keep(e)]
    except OSError as err:
        raise DataError(f"cannot read the folder {folder}: {err.strerror or err}; every dataset folder must be "
                        "readable (and listable) by this user.") from None


def _is_folder(path: Path, what: str) -> None:
    """A ``DataError`` when ``path`` exists but is not a folder."""
    if path.exists() and not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder; a dataset folder holds train/<class>/*.jpg and "
                        "val/<class>/*.jpg.")


def _class_folders(split_dir: Path) -> list[str]:
    _is_folder(split_dir, "split")
    if not split_dir.is_dir():
        raise DataError(
            f"{split_dir} is missing: a dataset folder holds train/<class>/*.jpg and val/<class>/*.jpg "
            "(make one with `alexnet-mp make-dataset DIR`)."
        )
    classes = sorted(e.name for e in _listing(split_dir, lambda e: e.is_dir() and not e.name.startswith(".")))
    if not classes:
        raise DataError(f"{split_dir} holds no class folders; expected {split_dir}/<class>/*.jpg.")
    return classes


def _images(class_dir: Path) -> list[str]:
    return sorted(e.path for e in _listing(
        class_dir, lambda e: e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")))


def classes_of(root: str | Path) -> list[str]:
    """The class names, checking that train and val hold the same class folders."""
    root = Path(root)
    _is_folder(root, "dataset folder")
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
    """(height, width, "") for an image every decoder here can read, else (0, 0, reason)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return 0, 0, "empty file (0 bytes)"
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            why = _header_problem(path, fmt, size, h, w) or _decode_problem(im)
        return (0, 0, why) if why else (h, w, "")
    except Image.DecompressionBombError as err:
        return 0, 0, f"too many pixels to decode safely ({err})"
    except Image.UnidentifiedImageError:
        return 0, 0, "not an image (PIL cannot identify it)"
    except Exception as err:  # PIL's header parsers raise more than OSError on a malformed file
        return 0, 0, f"unreadable: {' '.join(str(err).split()) or type(err).__name__}"


def _header_problem(path: str, fmt: str, size: int, h: int, w: int) -> str:
    """Why the header or tail rules the file out ("" if they do not): format, end marker, size."""
    if fmt not in DECODABLE_FORMATS:
        return f"{fmt} image; decodable formats are {', '.join(DECODABLE_FORMATS)}"
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    if h < 1 or w < 1:
        return f"image of size {w}x{h}"
    return ""


def _decode_problem(im: Image.Image) -> str:
    """Why PIL cannot decode the pixel stream ("" if it can); JPEGs at 1/8 scale (module docstring)."""
    try:
        im.draft(None, (1, 1))
        im.load()
    except Exception as err:  # whatever the decoder raises, the file is what it cannot decode
        return f"corrupt {im.format} data, PIL cannot decode it ({' '.join(str(err).split()) or type(err).__name__})"
    return ""


def _cache_file(split_dir: Path, classes: list[str], cache_dir: str) -> Path:
    key = hashlib.sha256(str(split_dir.resolve()).encode())
    for c in classes:
        key.update(f"{c}:{os.stat(split_dir / c).st_mtime_ns}".encode())
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet-mp"
    return base / f"index-v{CACHE_VERSION}-{split_dir.name}-{key.hexdigest()[:24]}.json"


def _read_cache(cache: Path, num_classes: int) -> list | None:
    """The cached entries, or ``None`` (rescan) when the file is missing, unreadable or not an index we wrote."""
    try:
        entries = json.loads(cache.read_text())["entries"]
        ok = type(entries) is list and all(
            type(p) is str and type(k) is int and type(h) is int and type(w) is int and type(why) is str
            and 0 <= k < num_classes for p, k, h, w, why in entries)  # cost at ImageNet scale: docs/data.md
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entries if ok else None


def scan_split(
    root: str | Path, split: str, *, on_bad_file: str = "skip", threads: int = 8, cache_dir: str = "",
    progress: bool = False,
) -> Split:
    """Lists and checks one split; bad files are skipped (logged) or raise a ``DataError``."""
    root = Path(root)
    classes = classes_of(root)
    split_dir = root / split
    cache = _cache_file(split_dir, classes, cache_dir)
    entries = _read_cache(cache, len(classes))
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
