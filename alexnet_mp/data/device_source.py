"""``[data] source = "synthetic"``: images made once on the device, augmented there.

A step's speed is then the model's, apart from decoding (NVIDIA's reference trainers offer the
same). The pool is ``synthetic_images`` uint8 256×256 RGB squares — what the folder loaders
crop from after their resize — drawn from a fixed generator on the CPU, so every device and
every run holds the same pool, and copied to the device once; label ``i % num_classes``.
Each batch then costs what the folder loaders' augmentation costs: a gather from the pool, a
random 224 crop, a horizontal flip, the colour normalisation and the PCA lighting, on the
device, with the per-sample plan of :mod:`.augment` — a function of (seed, epoch, position),
so a resumed run sees exactly the batches the uninterrupted one would. Validation uses the
first ``synthetic_val_images`` images of the pool: their centre crop, or the ten patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .augment import CROP, RESIZE, TEN_PATCHES, ColorStats, lighting_shift, plan_epoch
from .folder import DatasetInfo

POOL_SEED = 2012


def synthetic_info(images: int, val_images: int, num_classes: int) -> DatasetInfo:
    return DatasetInfo(root=Path("<synthetic>"), classes=[f"synthetic_{k:04d}" for k in range(num_classes)],
                       num_train=images, num_val=val_images)


_POOLS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def pool(images: int, num_classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (N, 3, 256, 256), int64 (N,)) on ``device``; made once per process and device."""
    device = torch.device(device or "cpu")
    key = (images, num_classes, str(device))
    if key not in _POOLS:
        g = torch.Generator().manual_seed(POOL_SEED)
        pixels = torch.randint(0, 256, (images, 3, RESIZE, RESIZE), generator=g, dtype=torch.uint8)
        _POOLS.clear()  # one pool at a time: a second one is a new configuration
        _POOLS[key] = pixels.to(device), (torch.arange(images) % num_classes).to(device)
    return _POOLS[key]


def augment(pixels: torch.Tensor, offsets, mirror, shift, stats: ColorStats) -> torch.Tensor:
    """The paper's training augmentation of uint8 256 squares, on their device: float32
    (B, 3, 224, 224) = ((crop / 255) + shift - mean) / std, crops at ``offsets`` (B, 2) (y, x),
    mirrored where ``mirror`` (B,) is 1, ``shift`` (B, 3) the PCA lighting in [0, 1] units."""
    dev = pixels.device
    b = pixels.shape[0]
    ramp = torch.arange(CROP, device=dev)
    off = torch.as_tensor(offsets, device=dev)
    flip = torch.as_tensor(mirror, device=dev).bool()
    rows = off[:, :1] + ramp  # (B, 224)
    cols = off[:, 1:] + torch.where(flip[:, None], CROP - 1 - ramp, ramp)
    crops = pixels[torch.arange(b, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    return _normalised(crops, shift, stats)


def patches(squares: torch.Tensor, shift, stats: ColorStats, ten_crop: bool) -> torch.Tensor:
    """The evaluation views of uint8 256 squares: the ten patches as float32 (B, 10, 3, 224, 224)
    in ``TenCrop`` order, or the centre crop (B, 3, 224, 224). Fixed windows, so plain slices:
    no index tensors, nothing copied from the host but ``shift`` (B, 3), once."""
    light = torch.as_tensor(shift, dtype=torch.float32, device=squares.device)
    views = []
    for top, left, flip in (TEN_PATCHES if ten_crop else ((16, 16, 0),)):
        crop = squares[:, :, top:top + CROP, left:left + CROP]
        views.append(_normalised(crop.flip(-1) if flip else crop, light, stats))
    return torch.stack(views, 1) if ten_crop else views[0]


def _normalised(crops: torch.Tensor, shift, stats: ColorStats) -> torch.Tensor:
    """float32 ((uint8 ``crops`` / 255) + ``shift`` (B, 3) - mean) / std."""
    mean, std = _stats_on(stats, crops.device)
    light = torch.as_tensor(shift, dtype=torch.float32, device=crops.device).view(-1, 3, 1, 1)
    return (crops.float() / 255.0 + light - mean) / std


_STATS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _stats_on(stats: ColorStats, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std as (1, 3, 1, 1) tensors on ``dev``, uploaded once (not per batch)."""
    key = (tuple(stats.mean), tuple(stats.std), str(dev))
    if key not in _STATS:
        _STATS[key] = (torch.tensor(stats.mean, device=dev).view(1, 3, 1, 1),
                       torch.tensor(stats.std, device=dev).view(1, 3, 1, 1))
    return _STATS[key]


class DeviceBatches:
    """Training batches from the pool: the positions of this process, ``batch`` at a time."""

    def __init__(self, pixels, labels, *, idx, offsets, mirror, shift, stats: ColorStats, batch_size: int):
        self.pixels, self.labels, self.idx = pixels, labels, idx
        self.offsets, self.mirror, self.shift, self.stats, self.batch = offsets, mirror, shift, stats, batch_size

    def __iter__(self):
        # The epoch's plan goes to the device once, here: a copy from pageable host memory per
        # batch would make the host wait for the GPU's queue to drain, every step.
        dev = self.pixels.device
        idx, offsets, mirror, shift = (torch.as_tensor(np.asarray(a)).to(dev)
                                       for a in (self.idx, self.offsets, self.mirror, self.shift))
        shift = shift.float()
        for s in range(0, len(idx), self.batch):
            sel = idx[s:s + self.batch]
            yield (augment(self.pixels[sel], offsets[s:s + self.batch], mirror[s:s + self.batch],
                           shift[s:s + self.batch], self.stats), self.labels[sel])


class DeviceEvalBatches:
    """The first images of the pool: centre crops, or the ten patches as (B, 10, 3, 224, 224)."""

    def __init__(self, pixels, labels, *, idx, stats: ColorStats, batch_size: int, ten_crop: bool):
        self.pixels, self.labels, self.idx, self.stats = pixels, labels, idx, stats
        self.batch, self.ten_crop = batch_size, ten_crop

    def __iter__(self):
        dev = self.pixels.device
        idx = torch.as_tensor(np.asarray(self.idx)).to(dev)  # once, not per batch (as DeviceBatches)
        for s in range(0, len(idx), self.batch):
            sel = idx[s:s + self.batch]
            yield patches(self.pixels[sel], torch.zeros(len(sel), 3, device=dev), self.stats,
                          self.ten_crop), self.labels[sel]


def train_batches(n: int, num_classes: int, *, positions: np.ndarray, seed: int, epoch: int, stats: ColorStats,
                  pca_std: float, batch_size: int, device) -> DeviceBatches:
    pixels, labels = pool(n, num_classes, device)
    plan = plan_epoch(n, seed, epoch)
    return DeviceBatches(pixels, labels, idx=plan.order[positions], offsets=plan.offsets[positions],
                         mirror=plan.mirror[positions], shift=lighting_shift(plan.alphas[positions], stats, pca_std),
                         stats=stats, batch_size=batch_size)


def eval_batches(n: int, num_classes: int, *, positions: np.ndarray, stats: ColorStats, batch_size: int, device,
                 ten_crop: bool) -> DeviceEvalBatches:
    pixels, labels = pool(n, num_classes, device)
    return DeviceEvalBatches(pixels, labels, idx=positions, stats=stats, batch_size=batch_size, ten_crop=ten_crop)
