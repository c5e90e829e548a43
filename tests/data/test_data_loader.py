"""The training and evaluation loaders: shapes, exact resume, shards, crops, patches, lighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from alexnet_mp.data import build_eval_loader, build_train_loader, dataset_info
from alexnet_mp.data.augment import IMAGENET, lighting_shift, plan_epoch
from alexnet_mp.data.folder import scan_split

from data_fixtures import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, cfg_for, textured, tiny_root  # noqa: F401

LOADERS = ["dali", "torchvision"]
MEAN = torch.tensor(IMAGENET.mean).reshape(3, 1, 1)
STD = torch.tensor(IMAGENET.std).reshape(3, 1, 1)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised output back to grey levels 0..255."""
    return (x * STD + MEAN) * 255.0


def run(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_dataset_info_lists_classes_and_counts(tiny_root):
    info = dataset_info(tiny_root)
    assert info.num_classes == CLASSES and info.classes == sorted(info.classes)
    assert (info.num_train, info.num_val) == (CLASSES * TRAIN_PER_CLASS, CLASSES * VAL_PER_CLASS)


@pytest.mark.parametrize("loader", LOADERS)
def test_train_batches_shape_dtype_layout_and_labels(tiny_root, tmp_path, loader):
    cfg = cfg_for(tiny_root, tmp_path, loader=loader, threads=1 if loader == "dali" else 0)
    batches = build_train_loader(cfg, batch_size=8, seed=3, epoch=0)
    assert len(batches) == 36 // 8
    out = run(batches)
    assert len(out) == 4
    split = scan_split(tiny_root, "train", cache_dir=str(tmp_path / "cache"))
    order = plan_epoch(36, 3, 0).order
    for step, (x, y) in enumerate(out):
        assert x.shape == (8, 3, 224, 224) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (8,) and y.dtype == torch.int64
        assert torch.equal(y, torch.from_numpy(split.labels[order[step * 8:(step + 1) * 8]]))
    # normalised: roughly zero-mean, unit-scale, and within the range of (0..1 - mean) / std +- lighting
    allx = torch.cat([x for x, _ in out])
    assert -2.5 < allx.min() and allx.max() < 2.9 and abs(allx.mean()) < 1.0


@pytest.mark.parametrize("loader", LOADERS)
def test_resume_repeats_the_uninterrupted_epoch_and_epochs_differ(tiny_root, tmp_path, loader):
    cfg = cfg_for(tiny_root, tmp_path, loader=loader, threads=1 if loader == "dali" else 0)
    full = run(build_train_loader(cfg, batch_size=8, seed=5, epoch=2))
    again = run(build_train_loader(cfg, batch_size=8, seed=5, epoch=2))
    resumed = run(build_train_loader(cfg, batch_size=8, seed=5, epoch=2, start_step=2))
    assert len(resumed) == 2
    for (a, la), (b, lb) in zip(full[2:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(full, again))
    other = run(build_train_loader(cfg, batch_size=8, seed=5, epoch=3))
    assert not torch.equal(full[0][1], other[0][1]) or not torch.equal(full[0][0], other[0][0])


def test_crops_and_flips_vary_between_epochs_for_the_same_image(tiny_root, tmp_path):
    """The same file, two epochs: different crop/flip/lighting; same seed and epoch: identical."""
    cfg = cfg_for(tiny_root, tmp_path, pca_std=0.0)
    views = {}
    for epoch in (0, 1, 0):
        plan = plan_epoch(36, 11, epoch)
        out = run(build_train_loader(cfg, batch_size=36, seed=11, epoch=epoch))[0][0]
        pos = int(np.flatnonzero(plan.order == 0)[0])  # where dataset image 0 landed
        key = (epoch, tuple(plan.offsets[pos]), int(plan.mirror[pos]))
        if epoch in views:
            assert torch.equal(views[epoch][1], out[pos])
        views[epoch] = (key, out[pos])
    assert views[0][0][1:] != views[1][0][1:]  # the plan differs (offset or flip) ...
    assert (views[0][1] - views[1][1]).abs().mean() > 0.05  # ... and so do the pixels


def test_dali_train_crop_matches_torchvision_path(tiny_root, tmp_path):
    """Same plan, two libraries: DALI's fused window resample equals resize-then-crop to < 1 grey level."""
    d = run(build_train_loader(cfg_for(tiny_root, tmp_path, loader="dali"), batch_size=12, seed=1, epoch=0))
    t = run(build_train_loader(cfg_for(tiny_root, tmp_path, loader="torchvision", threads=0), batch_size=12,
                               seed=1, epoch=0))
    for (a, la), (b, lb) in zip(d, t):
        assert torch.equal(la, lb)
        diff = (pixels(a) - pixels(b)).abs()
        assert diff.mean() < 0.5 and diff.amax() < 4.0


@pytest.mark.parametrize("dp_size, batch", [(2, 6), (3, 4)])
def test_train_shards_are_disjoint_and_cover_the_used_part_of_the_epoch(tiny_root, tmp_path, dp_size, batch):
    cfg = cfg_for(tiny_root, tmp_path)
    split = scan_split(tiny_root, "train", cache_dir=str(tmp_path / "cache"))
    steps = 36 // (dp_size * batch)
    seen = []
    for rank in range(dp_size):
        b = build_train_loader(cfg, batch_size=batch, seed=9, epoch=1, dp_rank=rank, dp_size=dp_size)
        assert len(b) == steps
        seen.append(torch.cat([y for _, y in run(b)]))
    # Each global step is the epoch order's next dp_size * batch images, rank r the r-th block.
    order = plan_epoch(36, 9, 1).order
    for step in range(steps):
        for rank in range(dp_size):
            lo = (step * dp_size + rank) * batch
            assert torch.equal(seen[rank][step * batch:(step + 1) * batch], torch.from_numpy(split.labels[order[lo:lo + batch]]))
    assert steps * dp_size * batch == 36  # both cases use every image exactly once


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("dp_size", [1, 2, 4])
def test_eval_sees_every_image_exactly_once(tiny_root, tmp_path, loader, dp_size):
    cfg = cfg_for(tiny_root, tmp_path, loader=loader, threads=1 if loader == "dali" else 0)
    labels = []
    for rank in range(dp_size):
        b = build_eval_loader(cfg, batch_size=4, dp_rank=rank, dp_size=dp_size)
        out = run(b)
        assert len(out) == len(b)
        assert all(x.shape[1:] == (3, 224, 224) and x.shape[0] == y.shape[0] for x, y in out)
        labels.append(torch.cat([y for _, y in out]))
    split = scan_split(tiny_root, "val", cache_dir=str(tmp_path / "cache"))
    assert torch.equal(torch.cat(labels), torch.from_numpy(split.labels))  # 15 images, in order, none twice


@pytest.fixture(scope="module")
def odd_sizes(tmp_path_factory):
    """Textured images whose resized sides are odd/even, portrait and landscape, plus an upscale."""
    root = tmp_path_factory.mktemp("odd") / "ds"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        for i, (h, w) in enumerate([(300, 451), (517, 333), (256, 256), (120, 97), (400, 300)]):
            Image.fromarray(textured(h, w, i)).save(root / split / "a" / f"{i}.png")
    return root


def _reference(path, transform):
    with Image.open(path) as im:
        return T.functional.pil_to_tensor(transform(im.convert("RGB"))).float()


@pytest.mark.parametrize("loader", LOADERS)
def test_eval_centre_crop_matches_torchvision_center_crop(odd_sizes, tmp_path, loader):
    """Against ``Resize(256)`` + ``CenterCrop(224)`` on the same decoded image (PNG: no decoder differences).

    Tolerance: mean |diff| < 1 grey level, max < 6. The two resamplers use the same
    antialiased linear filter on the same sampling grid but different arithmetic (PIL:
    8-bit fixed-point coefficients, two passes rounded to uint8; DALI/torch: float), so
    pixels differ by a level or two at most; a crop one pixel off gives ~10x more
    (asserted below), so the tolerance does pin the geometry.
    """
    cfg = cfg_for(odd_sizes, tmp_path, loader=loader, threads=1 if loader == "dali" else 0)
    (x, _), = run(build_eval_loader(cfg, batch_size=8))
    files = scan_split(odd_sizes, "val", cache_dir=str(tmp_path / "cache")).files
    for got, path in zip(pixels(x), files):
        ref = _reference(path, T.Compose([T.Resize(256), T.CenterCrop(224)]))
        diff = (got - ref).abs()
        assert diff.mean() < 1.0 and diff.amax() < 6.0, path
        shifted = _reference(path, T.Compose([T.Resize(256), T.CenterCrop(226)]))[:, 1:-1, 2:]
        assert (got - shifted).abs().mean() > 5 * max(diff.mean(), 0.5), path


@pytest.mark.parametrize("loader", LOADERS)
def test_ten_patches_match_torchvision_tencrop(odd_sizes, tmp_path, loader):
    cfg = cfg_for(odd_sizes, tmp_path, loader=loader, threads=1 if loader == "dali" else 0)
    (x, y), = run(build_eval_loader(cfg, batch_size=8, ten_crop=True))
    assert x.shape == (5, 10, 3, 224, 224) and y.shape == (5,)
    files = scan_split(odd_sizes, "val", cache_dir=str(tmp_path / "cache")).files
    for got, path in zip(x, files):
        with Image.open(path) as im:
            square = T.CenterCrop(256)(T.Resize(256)(im.convert("RGB")))
        ref = torch.stack([T.functional.pil_to_tensor(p).float() for p in T.TenCrop(224)(square)])
        diff = (pixels(got) - ref).abs().mean(dim=(1, 2, 3))
        assert (diff < 1.0).all(), (path, diff)
        # and each patch is closer to its own reference than to any other patch's
        cross = (pixels(got)[:, None] - ref[None]).abs().mean(dim=(2, 3, 4))
        assert torch.equal(cross.argmin(dim=1), torch.arange(10)), path


def test_pca_lighting_shifts_have_the_papers_distribution():
    """shift = P (α ∘ λ), α ~ N(0, 0.1²): mean 0, covariance 0.01 · P diag(λ²) Pᵀ."""
    n = 200_000
    plan = plan_epoch(n, 0, 0)
    shift = lighting_shift(plan.alphas, IMAGENET, 0.1)
    p, lam = np.asarray(IMAGENET.eigvec), np.asarray(IMAGENET.eigval)
    expected = 0.01 * p @ np.diag(lam**2) @ p.T
    # Tolerances: 6 standard errors of each estimate from n samples of a normal distribution.
    var = np.diag(expected)
    assert np.all(np.abs(shift.mean(0)) <= 6 * np.sqrt(var / n))  # the mean: sigma / sqrt(n)
    cov_se = np.sqrt((np.outer(var, var) + expected**2) / n)  # a sample covariance: sqrt((s_ii s_jj + s_ij^2) / n)
    assert np.all(np.abs(np.cov(shift.T) - expected) <= 6 * cov_se)
    # back to the alphas, each ~ N(0, 0.1): P's columns are orthonormal to 5e-5, so each recovered
    # alpha carries < 2e-3 of another (lam_1 / lam_3 x 5e-5), far inside the tolerances below
    alphas = shift @ p / lam
    assert np.all(np.abs(alphas.std(0) - 0.1) <= 6 * 0.1 / np.sqrt(2 * n))  # a sample sd: sigma / sqrt(2n)
    assert np.all(np.abs(alphas.mean(0)) <= 6 * 0.1 / np.sqrt(n))


@pytest.mark.parametrize("loader", LOADERS)
def test_lighting_adds_one_rgb_shift_to_every_pixel(tiny_root, tmp_path, loader):
    threads = 1 if loader == "dali" else 0
    lit = run(build_train_loader(cfg_for(tiny_root, tmp_path, loader=loader, threads=threads), batch_size=6,
                                 seed=2, epoch=0))[0][0]
    plain = run(build_train_loader(cfg_for(tiny_root, tmp_path, loader=loader, threads=threads, pca_std=0.0),
                                   batch_size=6, seed=2, epoch=0))[0][0]
    plan = plan_epoch(36, 2, 0)
    expected = torch.from_numpy(lighting_shift(plan.alphas[:6], IMAGENET, 0.1)).float()
    assert expected.abs().max() > 1e-3  # shifts of ~1e-2: far above the bound below
    delta = (lit - plain) * STD  # back to [0, 1] units
    # The same shift at every pixel. Each of lit and plain is a handful (<= 8) of fp32 roundings
    # of quantities <= 1.1 in [0, 1] units (pixel, shift, mean; normalised values |x| < 3 times
    # std < 0.23 are smaller): 16 x 1.1 u ~ 18 u per pixel, bounded by 32 u (u = 2^-24).
    assert (delta - expected[:, :, None, None]).abs().max() <= 32 * 2.0**-24


def test_without_dali_the_dali_loader_falls_back_to_torchvision_with_the_same_batches(tiny_root, tmp_path,
                                                                                        monkeypatch, caplog):
    from alexnet_mp.data import loader as loader_module

    monkeypatch.setattr(loader_module, "dali_available", lambda: False)
    monkeypatch.setattr(loader_module, "_fallback_noted", False)
    torchvision = run(build_train_loader(cfg_for(tiny_root, tmp_path, loader="torchvision", threads=0),
                                         batch_size=12, seed=1, epoch=0))
    with caplog.at_level("WARNING", logger=loader_module.__name__):
        fallen = run(build_train_loader(cfg_for(tiny_root, tmp_path, loader="dali", threads=0), batch_size=12,
                                        seed=1, epoch=0))
        run(build_eval_loader(cfg_for(tiny_root, tmp_path, loader="dali", threads=0), batch_size=5))
    assert len(fallen) == len(torchvision)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fallen, torchvision))
    notes = [r.getMessage() for r in caplog.records if "NVIDIA DALI is not installed" in r.getMessage()]
    assert len(notes) == 1 and "torchvision loader instead" in notes[0]  # said once, not per loader
    assert loader_module.effective_loader(cfg_for(tiny_root, tmp_path, loader="dali")) == "torchvision"
    monkeypatch.setattr(loader_module, "dali_available", lambda: True)
    assert loader_module.effective_loader(cfg_for(tiny_root, tmp_path, loader="dali")) == "dali"
