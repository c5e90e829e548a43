"""Tiny generated datasets (and broken files) shared by the ``test_data_*`` modules."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_mp.data import DataConfig
from alexnet_mp.data.synthetic import make_dataset

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 12, 5


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """3 classes x (12 train + 5 val) generated JPEGs: 36 train, 15 val."""
    root = tmp_path_factory.mktemp("tiny") / "ds"
    make_dataset(root, classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=7,
                 progress=False)
    return root


def cfg_for(root, tmp_path, **kw) -> DataConfig:
    """A config reading ``root`` with its index cached under ``tmp_path`` (never in ~/.cache)."""
    kw.setdefault("threads", 1)
    return DataConfig(path=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def jpeg_bytes(array: np.ndarray, mode: str | None = None, **save) -> bytes:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-plus-noise RGB image: misplacing a crop by one pixel changes it visibly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 7.0), 128 + 100 * np.cos(yy / 5.0), (xx + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def corrupt_scan_data(jpeg: bytes) -> bytes:
    """``jpeg`` with 256 bytes in the middle of its entropy-coded data overwritten, header and ``FF D9`` kept.

    The garbage opens with ``FF 7B``, which is no JPEG marker: libjpeg gives up on it
    ("Unsupported marker type"), PIL raises "broken data stream", DALI decodes garbage with a
    warning. The header and the end marker are intact, so a header-and-tail check passes it.
    """
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    mid = (start + len(jpeg) - 2) // 2
    garbage = b"\xff\x7b" + bytes((i * 73 + 29) % 255 for i in range(254))  # no other 0xFF
    return jpeg[:mid] + garbage + jpeg[mid + len(garbage):]


def jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny valid JPEG whose frame header (SOF0) claims ``width`` x ``height`` pixels."""
    small = bytearray(jpeg_bytes(textured(16, 16)))
    sof = small.index(b"\xff\xc0")
    small[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(small)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG (valid chunks and CRCs) whose IHDR claims ``width`` x ``height`` RGB pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
