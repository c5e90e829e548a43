"""Tensors in the safetensors file format, read as data: no pickle, no file outside its folder,
nothing allocated that the file's own bytes have not been checked to hold.

A file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the raw bytes (the format of the ``safetensors`` library, which can read
these files too). Reading one:

* :func:`open_inside` opens a name that must be a plain file name directly inside the folder,
  without following a symbolic link (``O_NOFOLLOW``) and without waiting on a FIFO
  (``O_NONBLOCK``), then ``fstat``\\ s it: anything but a regular file within a size bound is refused;
* :func:`read_header` bounds the header, parses it, and checks that the byte ranges tile the data
  exactly — each range the size its dtype and shape say, no gap, no overlap, no byte beyond or
  missing — so a record can never claim more bytes than the file holds (there is no compression);
* :func:`read_into` copies a byte range straight into a tensor the caller has already allocated
  for the shape *it* expects.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
          "I64": torch.int64, "U8": torch.uint8}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 1 << 20
"""A header lists a few dozen tensors in a few kB; a megabyte bounds what a hostile one can make us parse."""
MAX_DIMS = 8
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def hostile(path: Path | str, what: str) -> CheckpointError:
    """A value alexnet-mp never writes: the file was altered or crafted."""
    return CheckpointError(f"{path}: {what}. alexnet-mp never writes that, so the checkpoint was altered or "
                           "crafted; refusing it (nothing was loaded). Use a checkpoint from a source you trust.")


def damaged(path: Path | str, what: str) -> CheckpointError:
    """What an interrupted write or a bad disk leaves."""
    return CheckpointError(f"{path} is damaged ({what}); nothing was loaded. Use an earlier checkpoint.")


def open_inside(folder: Path, name: object, limit: int) -> tuple[BinaryIO, int]:
    """``folder/name`` opened for reading, with its size: ``name`` a plain file name (no ``/``, no
    ``..``, not absolute), the file regular (no symbolic link, FIFO or device) and at most ``limit`` bytes."""
    if not isinstance(name, str) or not _FILE_NAME.match(name) or name in (".", ".."):
        raise hostile(folder, f"it names the file {name!r}, which is not a plain file name inside the folder")
    path = folder / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise damaged(path, "the file is missing") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise hostile(path, "it is a symbolic link; every file of a checkpoint lies inside its folder") from None
        raise CheckpointError(f"{path} cannot be read ({err.strerror or err}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise hostile(path, "it is not a regular file (a FIFO, device or folder)")
        if info.st_size > limit:
            raise hostile(path, f"it is {info.st_size:,} bytes, over the {limit:,} this file may hold")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True, slots=True)
class Entry:
    """One tensor of a file: its dtype, shape and absolute byte offset."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(f: BinaryIO, size: int, path: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """Every tensor of the file and its ``__metadata__``, each range checked against the file's size."""
    head = _read_exact(f, 0, 8, path)
    length = int.from_bytes(head, "little")
    if length > MAX_HEADER:
        raise hostile(path, f"its header claims {length:,} bytes, over the {MAX_HEADER:,} a header may hold")
    if 8 + length > size:
        raise damaged(path, f"the header claims {length:,} bytes but the file has {size:,}")
    try:
        header = json.loads(_read_exact(f, 8, length, path))
    except RecursionError:
        raise hostile(path, "its header's JSON is nested deeper than Python parses") from None
    except ValueError as err:
        raise damaged(path, f"its header is not JSON: {str(err)[:120]}") from None
    if not isinstance(header, dict):
        raise hostile(path, "its header is not a table of tensors")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise hostile(path, "its __metadata__ is not a table of strings")
    entries = {name: _entry(path, name, spec, 8 + length) for name, spec in header.items()}
    _check_tiling(path, entries, 8 + length, size)
    return entries, meta


def _entry(path: Path, name: str, spec: object, base: int) -> Entry:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise hostile(path, f"tensor {name!r} is described as {str(spec)[:80]!r}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPES:
        raise hostile(path, f"tensor {name!r} has dtype {str(dtype)[:20]!r} (accepted: {', '.join(DTYPES)})")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(is_whole(n) and n >= 0 for n in shape)):
        raise hostile(path, f"tensor {name!r} has shape {str(shape)[:80]} (up to {MAX_DIMS} whole numbers >= 0)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_whole(n) for n in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise hostile(path, f"tensor {name!r} has data offsets {str(offsets)[:80]}")
    entry = Entry(DTYPES[dtype], tuple(shape), base + offsets[0])
    if offsets[1] - offsets[0] != entry.nbytes:
        raise hostile(path, f"tensor {name!r} of shape {tuple(shape)} and dtype {dtype} spans "
                      f"{offsets[1] - offsets[0]:,} bytes instead of {entry.nbytes:,}")
    return entry


def is_whole(n: object) -> bool:
    """A JSON whole number (not a bool)."""
    return isinstance(n, int) and not isinstance(n, bool)


def _check_tiling(path: Path, entries: dict[str, Entry], base: int, size: int) -> None:
    """The ranges cover ``[base, size)`` exactly, one after another."""
    at = base
    for name, e in sorted(entries.items(), key=lambda item: item[1].start):
        if e.start != at:
            raise hostile(path, f"tensor {name!r} starts at byte {e.start:,}, not where the one before it "
                          f"ends ({at:,})")
        at += e.nbytes
    if at != size:
        raise damaged(path, f"its tensors end at byte {at:,} but the file has {size:,} (truncated or padded)")


def _read_exact(f: BinaryIO, offset: int, n: int, path: Path) -> bytes:
    data = os.pread(f.fileno(), n, offset)
    if len(data) != n:
        raise damaged(path, f"it ends before byte {offset + n:,}")
    return data


def read_into(f: BinaryIO, offset: int, out: torch.Tensor, path: Path) -> None:
    """Fill the contiguous CPU tensor ``out`` with the bytes at ``offset``."""
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(view):
        got = os.preadv(f.fileno(), [view[done:]], offset + done)
        if got == 0:
            raise damaged(path, f"it ends before byte {offset + len(view):,}")
        done += got


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (any device) as one safetensors file, flushed to disk."""
    host = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header: dict[str, object] = {"__metadata__": metadata}
    at = 0
    for name, t in host.items():
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + t.nbytes]}
        at += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the format's own writer does
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for t in host.values():
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())
