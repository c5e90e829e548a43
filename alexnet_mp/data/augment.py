"""The paper's augmentation as numbers: geometry, per-sample parameters, PCA lighting, colours.

Both loaders (DALI and torchvision) apply what this module computes, so they crop, flip
and light each image identically. Every training sample's parameters are a pure function
of (seed, epoch, position in the epoch): resuming at any step repeats the uninterrupted
epoch exactly, and the two columns of one model, which share the seed, see one batch.

Geometry (docs/paper.md): rescale the short side to 256 (the long side is
``int(256 * long / short)``, torchvision's ``Resize(256)`` rule), take the centre 256×256
(offset ``round((side - 256) / 2)``, torchvision's ``CenterCrop``), then a random
224×224 crop inside it (offsets 0…32) and a horizontal flip with probability 1/2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

RESIZE = 256
CROP = 224
MAX_OFFSET = RESIZE - CROP  # 32: a random crop's offsets are 0..32 inclusive

# Published ImageNet values for pixels in [0, 1] (torchvision's / fb.resnet.torch's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# fb.resnet.torch's PCA of ImageNet RGB covariance, pixels in [0, 1]: eigenvalues and
# eigenvectors as *columns* (docs/paper.md).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# The paper's ten test patches in torchvision ``TenCrop`` order: (top, left, mirror) inside
# the 256 centre square. The last five are the five crops of the *mirrored* square, so
# mirrored top-left is the mirror of the unmirrored top-right crop.
TEN_PATCHES = (
    (0, 0, 0), (0, MAX_OFFSET, 0), (MAX_OFFSET, 0, 0), (MAX_OFFSET, MAX_OFFSET, 0), (16, 16, 0),
    (0, MAX_OFFSET, 1), (0, 0, 1), (MAX_OFFSET, MAX_OFFSET, 1), (MAX_OFFSET, 0, 1), (16, 16, 1),
)


@dataclass(frozen=True, slots=True)
class ColorStats:
    """Mean, std and the PCA eigen-pairs (columns of ``eigvec``) of RGB pixels in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, float, float], ...]
    source: str

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "eigval": list(self.eigval),
                "eigvec": [list(r) for r in self.eigvec], "source": self.source}


IMAGENET = ColorStats(IMAGENET_MEAN, IMAGENET_STD, IMAGENET_EIGVAL, IMAGENET_EIGVEC, "imagenet (published)")


def load_color_stats(cfg) -> ColorStats:
    """The statistics ``cfg`` asks for: published ImageNet values or ``dataset-stats`` output."""
    stats = IMAGENET
    if cfg.color_stats == "dataset":
        from .config import STATS_FILE_NAME

        path = Path(cfg.stats_file) if cfg.stats_file else Path(cfg.path) / STATS_FILE_NAME
        try:
            raw = json.loads(path.read_text())
            stats = ColorStats(_numbers(raw["mean"], "mean"), _numbers(raw["std"], "std", positive=True),
                               _numbers(raw["eigval"], "eigval"),
                               tuple(_numbers(r, "eigvec row") for r in _rows(raw["eigvec"])), str(path))
        except FileNotFoundError:
            raise ConfigError(
                f"[data] color_stats = \"dataset\" but {path} does not exist; run `alexnet-mp dataset-stats "
                f"{cfg.path}` or set color_stats = \"imagenet\"."
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path} is not a colour-statistics file written by dataset-stats: {err}.") from None
    if cfg.mean is not None or cfg.std is not None:
        stats = ColorStats(tuple(cfg.mean or stats.mean), tuple(cfg.std or stats.std), stats.eigval, stats.eigvec,
                           stats.source + " with [data] mean/std")
    return stats


def _numbers(value, name: str, *, positive: bool = False) -> tuple[float, float, float]:
    """Three finite numbers (not booleans), each > 0 if ``positive``; a ValueError naming ``name`` otherwise."""
    ok = (isinstance(value, list) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value))
    if not ok or (positive and min(value) <= 0):
        raise ValueError(f"{name} must be three finite numbers{' > 0' if positive else ''}, got {value!r}")
    return tuple(float(v) for v in value)


def _rows(value) -> list:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"eigvec must be a 3x3 list of rows, got {value!r}")
    return value


def resized_size(sizes: np.ndarray) -> np.ndarray:
    """(H', W') after rescaling the short side to 256 (``int(256 * long / short)`` for the long)."""
    h, w = sizes[:, 0], sizes[:, 1]
    short = np.minimum(h, w)
    rh = np.where(h <= w, RESIZE, (RESIZE * h) // short)
    rw = np.where(w <= h, RESIZE, (RESIZE * w) // short)
    return np.stack([rh, rw], 1)


def centre_offset(resized: np.ndarray, crop: int = RESIZE) -> np.ndarray:
    """Top-left of the centre ``crop`` square in the resized image (torchvision's rounding)."""
    return np.round((resized - crop) / 2.0).astype(np.int64)  # numpy rounds half to even, as Python's round


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The one generator an epoch's order and parameters are drawn from."""
    return np.random.default_rng([int(seed), int(epoch)])


@dataclass(frozen=True, slots=True)
class EpochPlan:
    """An epoch's sample order and, per position, the crop offset, the flip and the PCA alphas."""

    order: np.ndarray  # int64 (N,): dataset index at each position
    offsets: np.ndarray  # int64 (N, 2): top, left of the 224 crop inside the 256 centre square
    mirror: np.ndarray  # int64 (N,): 1 = horizontal flip
    alphas: np.ndarray  # float64 (N, 3): N(0, 1) draws; scaled by pca_std when applied


def plan_epoch(n: int, seed: int, epoch: int) -> EpochPlan:
    """Draws the whole epoch at once: position ``p``'s parameters never depend on the batch size."""
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(n)
    offsets = rng.integers(0, MAX_OFFSET + 1, size=(n, 2))
    mirror = (rng.random(n) < 0.5).astype(np.int64)
    alphas = rng.standard_normal((n, 3))
    return EpochPlan(order=order, offsets=offsets, mirror=mirror, alphas=alphas)


def lighting_shift(alphas: np.ndarray, stats: ColorStats, pca_std: float) -> np.ndarray:
    """The paper's Σᵢ αᵢλᵢpᵢ per sample, (N, 3) RGB in [0, 1] units, αᵢ = pca_std · alphas."""
    eigvec = np.asarray(stats.eigvec, dtype=np.float64)
    return (pca_std * alphas * np.asarray(stats.eigval, dtype=np.float64)) @ eigvec.T


def crop_window(sizes: np.ndarray, offsets: np.ndarray, side: int = CROP) -> tuple[np.ndarray, np.ndarray]:
    """Where a ``side`` crop at ``offsets`` in the 256 square lies in the *original* image.

    Returns (start, end), float (N, 2) in (y, x) pixel-edge coordinates. Resampling this
    window straight to ``side``×``side`` lands every output pixel on the same source point
    as resizing the whole image and then cropping: DALI resizes only the window.
    """
    resized = resized_size(sizes)
    top_left = centre_offset(resized) + offsets
    scale = sizes / resized  # source pixels per resized pixel, per axis
    return top_left * scale, (top_left + side) * scale


def decode_window(sizes: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer region to decode around a crop window: the window plus the filter's reach.

    The antialiasing filter reads about one resized pixel's footprint (``size / resized``
    source pixels, at least 1) beyond each edge; 2 more pixels cover rounding.
    Returns (anchor, shape), int64 (N, 2) in (y, x).
    """
    reach = np.ceil(np.maximum(sizes / resized_size(sizes), 1.0)) + 2
    anchor = np.maximum(np.floor(start - reach), 0).astype(np.int64)
    stop = np.minimum(np.ceil(end + reach), sizes).astype(np.int64)
    return anchor, stop - anchor
