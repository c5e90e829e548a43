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
