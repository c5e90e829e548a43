"""``[data] source = "synthetic"``: the paper's augmentation of a device-made pool, exact on resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet_mp.config import load_config
from alexnet_mp.data import build_eval_loader, build_train_loader
from alexnet_mp.data.augment import IMAGENET, TEN_PATCHES, lighting_shift, plan_epoch
from alexnet_mp.data.device_source import pool
from alexnet_mp.errors import ConfigError

N, CLASSES = 40, 6


def _cfg(**sets):
    base = {"data.source": '"synthetic"', "data.synthetic_images": N, "data.synthetic_val_images": 10,
            "data.synthetic_classes": CLASSES}
    base.update(sets)
    return load_config(None, [f"{k}={v}" for k, v in base.items()]).data


def _expected(pixels: np.ndarray, top: int, left: int, flip: bool, shift) -> np.ndarray:
    """One sample by plain slicing, in float64: the folder loaders' formula."""
    crop = pixels[:, top:top + 224, left:left + 224].astype(np.float64)
    if flip:
        crop = crop[:, :, ::-1]
    mean, std = np.array(IMAGENET.mean)[:, None, None], np.array(IMAGENET.std)[:, None, None]
    return (crop / 255.0 + np.asarray(shift)[:, None, None] - mean) / std


def test_training_batches_are_the_planned_crops_flips_and_lighting():
    cfg = _cfg()
    pixels, labels = (t.numpy() for t in pool(N, CLASSES, "cpu"))
    assert pixels.shape == (N, 3, 256, 256) and pixels.dtype == np.uint8 and list(labels) == [i % CLASSES for i in range(N)]
    plan = plan_epoch(N, 7, 3)
    shift = lighting_shift(plan.alphas, IMAGENET, cfg.pca_std)
    batches = list(build_train_loader(cfg, batch_size=8, seed=7, epoch=3))
    assert len(batches) == N // 8
    seen_flip = set()
    for step, (images, got_labels) in enumerate(batches):
        assert images.shape == (8, 3, 224, 224) and images.dtype == torch.float32
        for j in range(8):
            p = step * 8 + j
            i = plan.order[p]
            want = _expected(pixels[i], *plan.offsets[p], bool(plan.mirror[p]), shift[p])
            assert np.abs(images[j].double().numpy() - want).max() < 1e-5 * np.abs(want).max()
            assert got_labels[j] == labels[i]
            seen_flip.add(bool(plan.mirror[p]))
    assert seen_flip == {True, False}  # both branches checked


def test_a_resumed_epoch_yields_the_uninterrupted_steps_and_replicas_split_the_batch():
    cfg = _cfg()
    whole = list(build_train_loader(cfg, batch_size=4, seed=1, epoch=0))
    resumed = list(build_train_loader(cfg, batch_size=4, seed=1, epoch=0, start_step=6))
    assert len(resumed) == len(whole) - 6
    for (a, la), (b, lb) in zip(whole[6:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    halves = [list(build_train_loader(cfg, batch_size=2, seed=1, epoch=0, dp_rank=r, dp_size=2)) for r in (0, 1)]
    for step, (a, b) in enumerate(zip(*halves)):
        assert torch.equal(torch.cat([a[0], b[0]]), whole[step][0])


def test_validation_is_the_first_images_centre_crop_or_ten_patches():
    cfg = _cfg()
    pixels, labels = (t.numpy() for t in pool(N, CLASSES, "cpu"))
    centre = list(build_eval_loader(cfg, batch_size=4))
    assert [len(y) for _, y in centre] == [4, 4, 2]
    images = torch.cat([x for x, _ in centre])
    for i in range(10):
        assert np.allclose(images[i].double().numpy(), _expected(pixels[i], 16, 16, False, (0, 0, 0)), atol=1e-5)
    ten = torch.cat([x for x, _ in build_eval_loader(cfg, batch_size=4, ten_crop=True)])
    assert ten.shape == (10, 10, 3, 224, 224)
    for k, (top, left, flip) in enumerate(TEN_PATCHES):
        assert np.allclose(ten[3, k].double().numpy(), _expected(pixels[3], top, left, bool(flip), (0, 0, 0)),
                           atol=1e-5)
    assert torch.cat([y for _, y in centre]).tolist() == list(labels[:10])


@pytest.mark.parametrize("sets,names", [
    ({"data.synthetic_classes": 7}, "synthetic_classes = 7"),
    ({"data.synthetic_val_images": 99}, "synthetic_val_images = 99"),
    ({"data.source": '"camera"'}, "source = 'camera'"),
])
def test_bad_synthetic_settings_are_named(sets, names):
    with pytest.raises(ConfigError, match=names):
        _cfg(**sets)


def test_fewer_pool_images_than_a_batch_is_named():
    with pytest.raises(ConfigError, match=r"synthetic_images = 40 is fewer than one global batch \(32 x 2"):
        build_train_loader(_cfg(), batch_size=32, seed=0, epoch=0, dp_size=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_synthetic_batches_never_make_the_host_wait():
    """After the epoch's plan is uploaded (the first batch), a batch is queued work only: no
    copy from pageable host memory, which would drain the GPU's queue every step."""
    batches = iter(build_train_loader(_cfg(), batch_size=8, seed=7, epoch=0, device="cuda"))
    next(batches)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            images, labels = next(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.is_cuda and images.shape == (8, 3, 224, 224) and labels.is_cuda
