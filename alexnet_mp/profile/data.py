"""Batches for the profiled steps: synthetic tensors, or an ImageNet-style folder.

``synthetic``: every step draws N(0, 1) images of shape ``(B, 3, 224, 224)`` (float32)
and uniform labels on the rank's device, from a generator seeded by (seed, step, batch
part), so both columns of the paper's split draw the identical batch and each
data-parallel rank its own half. Drawing them is the step's data time.

A folder goes through :mod:`alexnet_mp.data` (the DALI loader), imported only when asked
for, so the profiler works while that package is absent or changing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from .. import layers as L
from ..errors import DataError

SYNTHETIC = "synthetic"


def check_source(source: str, num_classes: int) -> None:
    """Fail early, in the parent, on a folder that is missing, too many classes, or no loader."""
    if source == SYNTHETIC:
        return
    root = Path(source)
    if not (root / "train").is_dir():
        raise DataError(f"--data {source!r}: no folder {root / 'train'} — give an ImageNet-style folder "
                        "(train/<class>/*.jpg), or 'synthetic' for random tensors of the right shape.")
    try:
        from alexnet_mp.data import dataset_info
    except ImportError as err:
        raise DataError(f"--data {source!r}: reading a folder needs the alexnet_mp.data loader, which is "
                        f"not installed here ({err}); use --data synthetic.") from None
    classes = dataset_info(root).num_classes
    if classes > num_classes:
        raise DataError(f"--data {source!r} has {classes} classes but fc8 has --num-classes {num_classes}; "
                        f"give --num-classes {classes + classes % 2} or more (even).")


def synthetic(batch: int, *, device: torch.device, num_classes: int, seed: int, part: int) -> Iterator:
    """Endless ``(images, labels)`` of random values, the same for ranks with the same ``part``."""
    step = 0
    while True:
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 101 + part)
        images = torch.randn((batch, *L.INPUT_SHAPE), generator=g, device=device)
        labels = torch.randint(0, num_classes, (batch,), generator=g, device=device)
        yield images, labels
        del images, labels  # free the last batch before drawing the next
        step += 1


def folder(root: str, batch: int, *, device: torch.device, seed: int, part: int, parts: int) -> Iterator:
    """Endless batches of the folder's training split, epoch after epoch.

    HOOK: the only place that touches :mod:`alexnet_mp.data`. ``column_feed="duplicate"``
    keeps the loader's own all-gather out of the exchange figures: both columns decode
    the same batch, as the paper's data-parallel part ``part`` of ``parts``.
    """
    from alexnet_mp.data import DataConfig, build_train_loader

    cfg = DataConfig(path=root, column_feed="duplicate")
    epoch = 0
    while True:
        batches = build_train_loader(cfg, batch_size=batch, seed=seed, epoch=epoch, dp_rank=part,
                                     dp_size=parts, device=device)
        for images, labels in batches:
            yield images, labels
        epoch += 1


def batches(source: str, batch: int, *, device: torch.device, num_classes: int, seed: int,
            part: int, parts: int) -> Iterator:
    """The rank's batches: ``part`` of ``parts`` equal parts of each global batch."""
    if source == SYNTHETIC:
        return synthetic(batch, device=device, num_classes=num_classes, seed=seed, part=part)
    return folder(source, batch, device=device, seed=seed, part=part, parts=parts)
