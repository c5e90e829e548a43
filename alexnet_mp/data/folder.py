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
file changes it), so a second run over ImageNet's 1.28M files reads one file (``index.py``:
flat arrays, never pickled, checked on reading). Under a process group the scan is split:
each rank checks every world-th file and the results are summed over the (CPU) group, so the
job decodes each file once. ImageNet's flat ``val/`` with a ground-truth file
(``imagenet.py``) is read where it lies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .imagenet import read_val_labels
from .index import PathTable, read_index, write_index

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DECODABLE_FORMATS = ("JPEG", "PNG", "BMP", "MPO")  # what DALI and PIL both decode
_TAIL = 4096


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What a dataset folder holds: class names (label = index) and image counts per split."""

    root: Path
    classes: list[str]
    num_train: int
    num_val: int
    names: list[str] | None = None
    """Each class's words (``[data] class_names``), or ``None``: the class folder names are all there is."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> list[str]:
        """What to show for each class: ``"n01440764 tench, Tinca tinca"``, or the folder name."""
        return [f"{c} {w}" if w != c else c for c, w in zip(self.classes, self.names or self.classes)]


@dataclass(frozen=True, slots=True)
class Split:
    """One split's decodable images: paths, labels, (height, width), and what was skipped."""

    root: Path
    classes: list[str]
    files: PathTable
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
        flat = " (ImageNet's flat val/: set [data] val_labels to its ground truth)" if split_dir.name == "val" else ""
        raise DataError(f"{split_dir} holds no class folders; expected {split_dir}/<class>/*.jpg{flat}.")
    return classes


def _images(class_dir: Path) -> list[str]:
    return sorted(e.path for e in _listing(
        class_dir, lambda e: e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")))


def classes_of(root: str | Path, *, flat_val: bool = False) -> list[str]:
    """The class names, checking that train and val hold the same class folders (with
    ``flat_val``, the classes are train's and ``val/`` is one folder of images)."""
    root = Path(root)
    _is_folder(root, "dataset folder")
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist (make one with `alexnet-mp make-dataset {root}`).")
    train = _class_folders(root / "train")
    if flat_val:
        _is_folder(root / "val", "split")
        if not (root / "val").is_dir():
            raise DataError(f"{root / 'val'} is missing: with [data] val_labels the validation images lie in "
                            f"{root / 'val'}/ (ILSVRC2012_val_00000001.JPEG …).")
        return train
    val = _class_folders(root / "val")
    if train != val:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise DataError(
            f"{root}: train and val class folders differ; only in train: {only_train[:5] or 'none'}"
            f"{' …' if len(only_train) > 5 else ''}; only in val: {only_val[:5] or 'none'}"
            f"{' …' if len(only_val) > 5 else ''}. Both splits must hold the same classes (or, for ImageNet's "
            "flat val/ folder, set [data] val_labels to its ground-truth file)."
        )
    return train


def dataset_info(root: str | Path, *, val_labels: str = "", val_synsets: str = "",
                 class_names: str = "") -> DatasetInfo:
    """Classes and file counts (no decoding); a ``DataError`` for a folder that cannot be used."""
    from .imagenet import names_for

    root = Path(root)
    classes = classes_of(root, flat_val=bool(val_labels))
    counts = {split: len(_listing_of(root, split, classes, val_labels, val_synsets)[0]) for split in SPLITS}
    return DatasetInfo(root=root, classes=classes, num_train=counts["train"], num_val=counts["val"],
                       names=names_for(classes, class_names) if class_names else None)


def _listing_of(root: Path, split: str, classes: list[str], val_labels: str, val_synsets: str
                ) -> tuple[list[str], list[int]]:
    """(relative paths, labels) of a split, sorted by class then name: class folders, or the flat
    ``val/`` labelled by ``val_labels``."""
    split_dir = root / split
    if split == "val" and val_labels:
        return _flat_listing(split_dir, classes, val_labels, val_synsets)
    names, labels = [], []
    for label, c in enumerate(classes):
        paths = _images(split_dir / c)
        if not paths:
            raise DataError(f"class folder {split_dir / c} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        names += [os.path.relpath(p, split_dir) for p in paths]
        labels += [label] * len(paths)
    return names, labels


def _flat_listing(val_dir: Path, classes: list[str], val_labels: str, val_synsets: str
                  ) -> tuple[list[str], list[int]]:
    """The flat folder's images labelled by the ground truth; every row and every image accounted for."""
    rows = read_val_labels(val_labels, synsets=val_synsets)
    present = {os.path.basename(p) for p in _images(val_dir)}
    index = {c: k for k, c in enumerate(classes)}
    seen: dict[str, int] = {}
    for r in rows:
        why = (f"names it a second time (first on line {seen[r.name]})" if r.name in seen else
               f"gives the class {r.wnid!r}, which is not a folder of {val_dir.parent / 'train'}"
               if r.wnid not in index else
               f"names {r.name}, which is not in {val_dir}" if r.name not in present else "")
        if why:
            raise DataError(f"{val_labels}, line {r.line}: {why}. Each image of {val_dir} needs exactly one row, "
                            "naming one of the training classes.")
        seen[r.name] = r.line
    unlabelled = sorted(present - seen.keys())
    if unlabelled:
        raise DataError(f"{val_labels} has no row for {len(unlabelled)} image(s) of {val_dir} "
                        f"({', '.join(unlabelled[:3])}{' …' if len(unlabelled) > 3 else ''}); each image needs one.")
    ordered = sorted((index[r.wnid], r.name) for r in rows)
    return [name for _, name in ordered], [k for k, _ in ordered]


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


def _cache_file(split_dir: Path, classes: list[str], cache_dir: str, sources: tuple[str, ...]) -> Path:
    """Keyed by the split's path, its class folders' mtimes, or (a flat split labelled by the files
    ``sources``) the folder's mtime, the classes and those files' paths, mtimes and sizes."""
    key = hashlib.sha256(str(split_dir.resolve()).encode())
    folders = [split_dir] if sources else [split_dir / c for c in classes]
    for f in folders:
        key.update(f"{f.name}:{os.stat(f).st_mtime_ns}".encode())
    for s in sources:
        st = os.stat(s)
        key.update(f"{Path(s).resolve()}:{st.st_mtime_ns}:{st.st_size}:{','.join(classes)}".encode())
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet-mp"
    return base / f"index-v3-{split_dir.name}-{key.hexdigest()[:24]}.bin"


def _inside_split(paths: PathTable, labels: np.ndarray, classes: list[str], flat: bool) -> bool:
    """Whether every cached path is ``<its class>/<name>`` (``<name>`` in a flat split), no name
    empty or starting with a dot: a hostile index cannot point outside the split folder."""
    buf, off = paths.buf, paths.offsets
    starts, lengths = off[:-1], np.diff(off)
    if len(buf) and (buf == 0).any() or (lengths < 1).any() or (len(buf) and (buf[starts] == ord(".")).any()):
        return False
    slashes = np.flatnonzero(buf == ord("/"))
    owner = np.searchsorted(off, slashes, side="right") - 1
    if not np.array_equal(np.bincount(owner, minlength=len(labels)), np.full(len(labels), 0 if flat else 1)):
        return False
    if flat:
        return True
    names = [os.fsencode(c) for c in classes]
    name_len = np.array([len(b) for b in names], dtype=np.int64)
    if not np.array_equal(slashes - starts, name_len[labels]) or (slashes + 1 >= off[1:]).any():
        return False
    if (buf[slashes + 1] == ord(".")).any():
        return False
    return _prefixes_are_classes(buf, starts, labels, names)


def _prefixes_are_classes(buf: np.ndarray, starts: np.ndarray, labels: np.ndarray, names: list[bytes],
                          chunk: int = 1 << 16) -> bool:
    """Whether entry i's bytes start with ``names[labels[i]]``; in chunks of ``chunk`` entries, so
    the check's temporaries stay small next to the index itself, whatever its size."""
    name_len = np.array([len(b) for b in names], dtype=np.int64)
    name_buf = np.frombuffer(b"".join(names), dtype=np.uint8)
    name_off = np.concatenate([[0], np.cumsum(name_len)])
    for lo in range(0, len(labels), chunk):
        k = labels[lo:lo + chunk]
        n = name_len[k]
        within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        if not np.array_equal(buf[np.repeat(starts[lo:lo + chunk], n) + within],
                              name_buf[np.repeat(name_off[k], n) + within]):
            return False
    return True


def _read_cache(cache: Path, split_dir: Path, classes: list[str], flat: bool) -> dict | None:
    """The cached arrays, or ``None`` (rescan) when missing, unreadable or not an index of this split."""
    found = read_index(cache)
    if found is None:
        return None
    header, a = found
    need = {"path_buf": 1, "path_offsets": 1, "labels": 1, "sizes": 2, "bad_index": 1, "why_buf": 1, "why_offsets": 1}
    if header.get("split") != str(split_dir.resolve()) or any(k not in a or a[k].ndim != d for k, d in need.items()):
        return None
    n, off, bad, why_off = len(a["labels"]), a["path_offsets"], a["bad_index"], a["why_offsets"]
    labels, sizes = a["labels"], a["sizes"]
    ok = (len(off) == n + 1 and off[0] == 0 and off[-1] == len(a["path_buf"]) and (np.diff(off) >= 0).all()
          and sizes.shape == (n, 2) and (sizes >= 0).all() and ((labels >= 0) & (labels < len(classes))).all()
          and len(why_off) == len(bad) + 1 and why_off[0] == 0 and why_off[-1] == len(a["why_buf"])
          and (np.diff(why_off) > 0).all() and ((bad >= 0) & (bad < n)).all() and (np.diff(bad) > 0).all())
    if not ok or not _inside_split(PathTable("", a["path_buf"], off), a["labels"], classes, flat):
        return None
    return a


def _check_all(paths: PathTable, *, threads: int, group, progress: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Every file's (height, width) and the bad files' reasons. Under ``group`` each rank checks
    every world-th file and the results are summed over the group (the entries are disjoint)."""
    rank, world = (0, 1) if group is None else (_dist().get_rank(group), _dist().get_world_size(group))
    mine = range(rank, len(paths), world)
    sizes = np.zeros((len(paths), 2), dtype=np.int32)
    why: dict[int, str] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        checked = pool.map(check_image, (paths[i] for i in mine), chunksize=256)
        if progress:
            import click

            label = f"checking {paths.base}" + (f" (1/{world} of the files on each rank)" if world > 1 else "")
            with click.progressbar(checked, length=len(mine), label=label, file=sys.stderr) as bar:
                checked = list(bar)
        for i, (h, w, reason) in zip(mine, checked):
            sizes[i] = h, w
            if reason:
                why[i] = reason
    if world > 1:
        import torch

        _dist().all_reduce(torch.from_numpy(sizes), group=group)
        everyone: list = [None] * world
        _dist().all_gather_object(everyone, why, group=group)
        why = {i: r for part in everyone for i, r in part.items()}
    return sizes, why


def _dist():
    import torch.distributed as dist

    return dist


def _scan(split_dir: Path, names: list[str], labels: list[int], *, threads: int, group, progress: bool) -> dict:
    """The index arrays of a fresh scan."""
    paths = PathTable.from_strings(str(split_dir), names)
    sizes, why = _check_all(paths, threads=threads, group=group, progress=progress)
    bad = np.array(sorted(why), dtype=np.int64)
    reasons = PathTable.from_strings("", [why[i] for i in bad.tolist()])
    return {"path_buf": paths.buf, "path_offsets": paths.offsets, "labels": np.asarray(labels, dtype=np.int32),
            "sizes": sizes, "bad_index": bad, "why_buf": reasons.buf, "why_offsets": reasons.offsets}


def _writes_cache(group) -> bool:
    """One writer per node: torchrun's local rank 0 (rank 0 of ``group`` outside torchrun)."""
    if group is None:
        return True
    return int(os.environ.get("LOCAL_RANK", _dist().get_rank(group))) == 0


def _index(root: Path, split: str, classes: list[str], *, val_labels: str, val_synsets: str, threads: int,
           cache_dir: str, group, progress: bool) -> dict:
    """The split's index arrays: the cache when every rank has a valid one, else a (split) scan."""
    split_dir = root / split
    flat = split == "val" and bool(val_labels)
    if flat:
        read_val_labels(val_labels, synsets=val_synsets)  # a missing or malformed file is named before the key
        synsets = val_synsets or str(Path(val_labels).parent / "meta.mat")
        sources = (val_labels, synsets) if Path(synsets).exists() else (val_labels,)
    cache = _cache_file(split_dir, classes, cache_dir, sources if flat else ())
    arrays = _read_cache(cache, split_dir, classes, flat)
    if group is not None and _dist().get_world_size(group) > 1:
        import torch

        have = torch.tensor([arrays is not None], dtype=torch.int32)
        _dist().all_reduce(have, op=_dist().ReduceOp.MIN, group=group)
        arrays = arrays if have.item() else None
    if arrays is not None:
        return arrays
    names, labels = _listing_of(root, split, classes, val_labels, val_synsets)
    arrays = _scan(split_dir, names, labels, threads=threads, group=group, progress=progress)
    if _writes_cache(group):
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_index(cache, {"split": str(split_dir.resolve())}, arrays)
        except OSError as err:  # a read-only cache only costs the next run a rescan
            log.warning("could not cache the file index at %s: %s", cache, err)
    return arrays


def scan_split(
    root: str | Path, split: str, *, on_bad_file: str = "skip", threads: int = 8, cache_dir: str = "",
    progress: bool = False, val_labels: str = "", val_synsets: str = "", group=None,
) -> Split:
    """Lists and checks one split; bad files are skipped (logged) or raise a ``DataError``.
    Every rank of ``group`` (a CPU process group) must call it: each checks 1/world of the files."""
    root = Path(root)
    val = root / "val"
    flat_val = bool(val_labels) or split == "train" and val.is_dir() and not _listing(val, lambda e: e.is_dir())
    classes = classes_of(root, flat_val=flat_val)  # the train split alone needs no val labels
    split_dir = root / split
    a = _index(root, split, classes, val_labels=val_labels if split == "val" else "", val_synsets=val_synsets,
               threads=threads, cache_dir=cache_dir, group=group, progress=progress)
    paths = PathTable(str(split_dir), a["path_buf"], a["path_offsets"])
    reasons = PathTable("", a["why_buf"], a["why_offsets"])
    bad = [(paths[i], reasons.relative(k)) for k, i in enumerate(a["bad_index"].tolist())]
    _report_bad(split_dir, bad, on_bad_file)
    good = np.ones(len(paths), dtype=bool)
    good[a["bad_index"]] = False
    labels = a["labels"][good].astype(np.int64)
    if not good.any():
        raise DataError(f"{split_dir} holds no decodable images.")
    empty = sorted(set(range(len(classes))) - set(np.unique(labels).tolist()))
    if empty:
        if split == "val" and val_labels:
            raise DataError(f"class(es) with no decodable images in {split_dir} as {val_labels} labels them: "
                            f"{', '.join(classes[k] for k in empty[:5])}; every training class needs one.")
        raise DataError(
            f"class folder(s) with no decodable images: {', '.join(str(split_dir / classes[k]) for k in empty[:5])}.")
    return Split(root=root, classes=classes, files=paths if good.all() else paths.select(good), labels=labels,
                 sizes=a["sizes"][good].astype(np.int64), bad=bad)


def _report_bad(split_dir: Path, bad: list[tuple[str, str]], on_bad_file: str) -> None:
    if not bad:
        return
    listed = "; ".join(f"{p}: {why}" for p, why in bad[:10]) + (" …" if len(bad) > 10 else "")
    if on_bad_file == "fail":
        raise DataError(
            f"{len(bad)} undecodable file(s) in {split_dir}: {listed}. "
            "Remove or replace them, or set [data] on_bad_file = \"skip\"."
        )
    log.warning("skipping %d undecodable file(s) in %s: %s", len(bad), split_dir, listed)
