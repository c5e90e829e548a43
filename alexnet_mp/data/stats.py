"""``dataset-stats``: the training set's RGB mean, std and PCA eigen-pairs (docs/paper.md).

Computed on a random sample of training images (decoded, short side rescaled to 256 as
the network sees them), pixels in [0, 1]; the eigen-pairs are those of the 3×3 RGB
covariance, largest first, eigenvectors as columns (each one's sign is arbitrary — the
lighting's αᵢ are symmetric — and fixed here by a non-positive first row). Written as JSON to
``<dataset>/color_stats.json`` (or ``--out``), read back with ``[data] color_stats = "dataset"``.
Files the scan finds undecodable are skipped (logged); the JSON is written atomically.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import numpy as np
from PIL import Image

from ..errors import DataError
from .augment import RESIZE, ColorStats
from .folder import scan_split


def _pixels(path: str, rng: np.random.Generator, per_image: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except Exception as err:  # the scan decoded it: any failure now is a file that changed since
        raise DataError(f"{path} cannot be decoded ({' '.join(str(err).split()) or type(err).__name__}); it "
                        "changed after the dataset was scanned: remove or replace it and delete the cached file "
                        "index (~/.cache/alexnet-mp) so the next run rescans.") from None
    scale = RESIZE / min(rgb.size)
    rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BILINEAR)
    px = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
    return px[rng.choice(len(px), size=min(per_image, len(px)), replace=False)]


def compute_color_stats(root: str | Path, *, images: int = 2000, pixels_per_image: int = 4096, seed: int = 0,
                        progress: bool = True, cache_dir: str = "") -> ColorStats:
    """Mean, std and PCA of RGB over ``images`` random training images (all if fewer)."""
    for name, value, least in (("--images", images, 1), ("pixels_per_image", pixels_per_image, 1), ("--seed", seed, 0)):
        if value < least:
            raise DataError(f"{name} {value}: use a whole number >= {least}.")
    split = scan_split(root, "train", on_bad_file="skip", cache_dir=cache_dir)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(split), size=min(images, len(split)), replace=False)
    total, total_sq, count = np.zeros(3), np.zeros((3, 3)), 0
    items = split.files.take(chosen)
    bar = click.progressbar(items, label=f"dataset-stats {root}", file=sys.stderr) if progress else None
    try:
        for path in (bar.__enter__() if bar else items):
            px = _pixels(path, rng, pixels_per_image)
            total += px.sum(0)
            total_sq += px.T @ px
            count += len(px)
    finally:
        if bar:
            bar.__exit__(None, None, None)
    mean = total / count
    cov = total_sq / count - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    eigvec *= np.where(eigvec[0] > 0, -1.0, 1.0)
    std = np.sqrt(np.diag(cov))
    r = lambda v: tuple(round(float(x), 6) for x in v)  # noqa: E731 - six digits are plenty
    return ColorStats(r(mean), r(std), r(np.maximum(eigval, 0)), tuple(r(row) for row in eigvec),
                      f"dataset-stats over {len(items)} images of {Path(root) / 'train'}"
                      + (f" ({len(split.bad)} undecodable files skipped)" if split.bad else ""))


def write_color_stats(stats: ColorStats, out: str | Path) -> Path:
    """Writes the JSON through a temporary file in the same folder: ``out`` is whole or unchanged."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(stats.to_json(), indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
