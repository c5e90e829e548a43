"""The file index on disk and in memory: flat numpy arrays, never Python lists of 1.28M strings.

On disk: a magic line, a little-endian length, a JSON header naming each array (dtype from a
short allow-list, shape, byte offset), then the arrays' raw bytes. Nothing is pickled; a
header that does not parse, names another version, an unknown dtype or an array outside the
file makes :func:`read_index` return ``None`` (the caller rescans). What the arrays *say*
(paths inside the split, labels in range) is checked by the caller, which knows the split.

In memory: :class:`PathTable` holds every relative path in one ``uint8`` buffer with
``int64`` offsets, and builds a path string only when one is asked for.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"ALEXNET-MP-INDEX\n"
VERSION = 3  # 3: binary arrays (2: JSON rows with the decode check; 1: JSON rows, header check only)
_DTYPES = ("uint8", "int32", "int64")
_ALIGN = 64


class PathTable:
    """Paths ``base/<relative path i>``: one bytes buffer, ``offsets[i]:offsets[i+1]`` per entry."""

    __slots__ = ("base", "buf", "offsets")

    def __init__(self, base: str, buf: np.ndarray, offsets: np.ndarray) -> None:
        self.base, self.buf, self.offsets = base, buf, offsets

    @classmethod
    def from_strings(cls, base: str, names: list[str]) -> PathTable:
        encoded = [os.fsencode(n) for n in names]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(base, np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __eq__(self, other) -> bool:
        return (isinstance(other, PathTable) and self.base == other.base and np.array_equal(self.buf, other.buf)
                and np.array_equal(self.offsets, other.offsets))

    __hash__ = None

    def relative(self, i: int) -> str:
        return os.fsdecode(self.buf[self.offsets[i]:self.offsets[i + 1]].tobytes())

    def __getitem__(self, i: int) -> str:
        return os.path.join(self.base, self.relative(int(i)))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, idx) -> list[str]:
        """The full paths of entries ``idx``, in that order."""
        return [self[i] for i in np.asarray(idx, dtype=np.int64).reshape(-1)]

    def select(self, keep: np.ndarray) -> PathTable:
        """A table of the entries where the boolean mask ``keep`` is true."""
        starts, ends = self.offsets[:-1][keep], self.offsets[1:][keep]
        lengths = ends - starts
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return PathTable(self.base, self.buf[gather], offsets)

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes + self.offsets.nbytes


def write_index(path: Path, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (uint8/int32/int64) and ``header`` to ``path`` through a temporary file."""
    table, pos = {}, 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        table[name] = [a.dtype.name, list(a.shape), pos]
        pos += -(-a.nbytes // _ALIGN) * _ALIGN
    head = json.dumps({**header, "version": VERSION, "arrays": table}).encode()
    start = -(-(len(MAGIC) + 8 + len(head)) // _ALIGN) * _ALIGN
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for name, a in arrays.items():
                f.seek(start + table[name][2])
                f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
            f.truncate(start + pos)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_index(path: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(header, arrays) of an index :func:`write_index` wrote, or ``None`` when it is anything else."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 1 << 20:
                return None
            header = json.loads(f.read(n))
            start = -(-(len(MAGIC) + 8 + n) // _ALIGN) * _ALIGN
            size = os.fstat(f.fileno()).st_size
            if type(header) is not dict or header.get("version") != VERSION or type(header.get("arrays")) is not dict:
                return None
            arrays = {}
            for name, spec in header["arrays"].items():
                a = _read_array(f, spec, start, size)
                if a is None:
                    return None
                arrays[name] = a
    except (OSError, ValueError, struct.error):
        return None
    return header, arrays


def _read_array(f, spec, start: int, size: int) -> np.ndarray | None:
    """One array of the index, or ``None`` when its entry is malformed or points outside the file."""
    if type(spec) is not list or len(spec) != 3 or spec[0] not in _DTYPES or type(spec[1]) is not list:
        return None
    dtype, shape, offset = np.dtype(spec[0]).newbyteorder("<"), spec[1], spec[2]
    if type(offset) is not int or offset < 0 or not all(type(d) is int and d >= 0 for d in shape):
        return None
    count = int(np.prod(shape, dtype=np.int64))
    if start + offset + count * dtype.itemsize > size:
        return None
    f.seek(start + offset)
    return np.fromfile(f, dtype=dtype, count=count).astype(dtype.newbyteorder("="), copy=False).reshape(shape)
