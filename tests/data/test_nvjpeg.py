"""The nvJPEG loader (batched ``decode_jpeg`` + augmentation on the decoding device) and its selection.

On the CPU the nvJPEG loader decodes with the same libjpeg-turbo call as the torchvision loader
with ``torchvision_decoder = "decode_jpeg"`` (``decode_image`` hands JPEGs to ``decode_jpeg``),
resizes with the same ``F.resize`` kernel on the same uint8 images (the CPU's uint8 path, whose
result per image does not depend on how many images share the call), and normalises with the
same float32 operations in the same order ((x / 255 + shift − mean) / std). Every step is the
same arithmetic on the same inputs, so the batches must be *bit-identical*: the tests compare
with ``torch.equal``, no tolerance. The CUDA test at the end (skipped without a GPU) allows for
nvJPEG's own IDCT and chroma upsampling and the float resize of uint8 on the GPU.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_mp.data import DataConfig, build_eval_loader, build_train_loader
from alexnet_mp.data import loader as loader_module
from alexnet_mp.data.augment import IMAGENET, lighting_shift, plan_epoch
from alexnet_mp.data.folder import scan_split
from alexnet_mp.data.nvjpeg import NvjpegBatches, is_jpeg, read_bytes
from alexnet_mp.errors import ConfigError, DataError

from data_fixtures import cfg_for, corrupt_scan_data, jpeg_bytes, textured, tiny_root  # noqa: F401

MEAN = torch.tensor(IMAGENET.mean).reshape(3, 1, 1)
STD = torch.tensor(IMAGENET.std).reshape(3, 1, 1)


def run(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


def nvjpeg(root, tmp_path, **kw):
    kw.setdefault("decode_device", "cpu")
    return cfg_for(root, tmp_path, loader="nvjpeg", **kw)


def reference(root, tmp_path, **kw):
    """The torchvision loader with the same libjpeg-turbo decode, in process."""
    return cfg_for(root, tmp_path, loader="torchvision", torchvision_decoder="decode_jpeg", threads=0, **kw)


def assert_same(got, want):
    assert len(got) == len(want) > 0
    for (x, y), (u, v) in zip(got, want):
        assert x.shape == u.shape and x.dtype == u.dtype == torch.float32 and x.is_contiguous()
        assert y.dtype == v.dtype == torch.int64 and torch.equal(y, v)
        assert torch.equal(x, u), (x - u).abs().max()


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    """Two classes of odd images: three JPEGs of one size (resized together), portrait and
    landscape, an upscale, 4:4:4 chroma, a grayscale JPEG and PNGs (decoded on the host)."""
    root = tmp_path_factory.mktemp("mixed") / "ds"
    shapes = [(300, 451), (300, 451), (300, 451), (517, 333), (120, 97), (256, 256), (400, 300)]
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate(shapes):
                img = textured(h, w, 10 * c + i)
                if i == 4:
                    Image.fromarray(img).save(folder / f"{i}.png")
                elif i == 6:
                    (folder / f"{i}.jpg").write_bytes(jpeg_bytes(img, "L"))
                else:
                    (folder / f"{i}.jpg").write_bytes(jpeg_bytes(img, subsampling=0 if i == 5 else 2))
            Image.fromarray(textured(333, 517, 99 + c)).save(folder / "wide.png")
    return root


# -- the same batches as the torchvision loader ---------------------------------------------


def test_train_batches_equal_the_torchvision_loaders(tiny_root, tmp_path):
    got = run(build_train_loader(nvjpeg(tiny_root, tmp_path), batch_size=8, seed=3, epoch=1))
    want = run(build_train_loader(reference(tiny_root, tmp_path), batch_size=8, seed=3, epoch=1))
    assert len(got) == 36 // 8
    assert_same(got, want)
    order = plan_epoch(36, 3, 1).order
    labels = scan_split(tiny_root, "train", cache_dir=str(tmp_path / "cache")).labels
    assert torch.equal(torch.cat([y for _, y in got]), torch.from_numpy(labels[order[:32]]))


def test_odd_images_pngs_and_grayscale_equal_the_torchvision_loaders(mixed_root, tmp_path, monkeypatch):
    from alexnet_mp.data import nvjpeg as module

    calls, real = [], module.decode_jpeg
    monkeypatch.setattr(module, "decode_jpeg", lambda data, **kw: calls.append(data) or real(data, **kw))
    for epoch in (0, 1):
        got = run(build_train_loader(nvjpeg(mixed_root, tmp_path, threads=3, prefetch=3), batch_size=4, seed=0,
                                     epoch=epoch))
        assert_same(got, run(build_train_loader(reference(mixed_root, tmp_path), batch_size=4, seed=0,
                                                epoch=epoch)))
    got = run(build_eval_loader(nvjpeg(mixed_root, tmp_path), batch_size=5))
    assert [x.shape[0] for x, _ in got] == [5, 5, 5, 1]
    assert_same(got, run(build_eval_loader(reference(mixed_root, tmp_path), batch_size=5)))
    # one batched call per batch (of 4 + 4 train, 4 val), JPEGs only: the PNGs go to PIL, not
    # through a failed batch call; every JPEG once (each split: 16 images, 4 of them PNGs)
    assert len(calls) <= 12 and all(isinstance(c, list) and all(map(is_jpeg, c)) for c in calls)
    assert sum(len(c) for c in calls) == 2 * 12 + 12


def test_ten_patches_equal_the_torchvision_loaders(mixed_root, tmp_path):
    got = run(build_eval_loader(nvjpeg(mixed_root, tmp_path), batch_size=6, ten_crop=True))
    assert [tuple(x.shape) for x, _ in got] == [(6, 10, 3, 224, 224), (6, 10, 3, 224, 224), (4, 10, 3, 224, 224)]
    assert_same(got, run(build_eval_loader(reference(mixed_root, tmp_path), batch_size=6, ten_crop=True)))
    x = got[0][0]
    assert not torch.equal(x[:, 0], x[:, 6])  # the mirrored patches are not the plain ones
    assert torch.equal(x[:, 4].flip(-1), x[:, 9])  # centre and mirrored centre


def test_flip_crop_and_lighting_follow_the_plan(mixed_root, tmp_path):
    """Independent of the reference loader: the plan's flips, crop offsets and lighting show in the pixels."""
    seed, epoch, n = 4, 2, 16
    plan = plan_epoch(n, seed, epoch)
    lit = run(build_train_loader(nvjpeg(mixed_root, tmp_path), batch_size=16, seed=seed, epoch=epoch))[0][0]
    plain = run(build_train_loader(nvjpeg(mixed_root, tmp_path, pca_std=0.0), batch_size=16, seed=seed,
                                   epoch=epoch))[0][0]
    shift = torch.from_numpy(lighting_shift(plan.alphas, IMAGENET, 0.1)).float()
    assert ((lit - plain) * STD - shift[:, :, None, None]).abs().max() <= 32 * 2.0**-24  # as test_data_loader
    # Every sample against the 256 centre square of its image (checked against torchvision's
    # resize and centre crop in _squares), cropped at the planned offset and flipped as planned.
    pixels = (plain * STD + MEAN) * 255
    squares = _squares(mixed_root, tmp_path, "train")
    assert plan.mirror.min() == 0 and plan.mirror.max() == 1 and len(set(map(tuple, plan.offsets))) > 5
    for p in range(n):
        (top, left), flip = plan.offsets[p], plan.mirror[p]
        crop = squares[plan.order[p], :, top:top + 224, left:left + 224]
        want = crop.flip(-1) if flip else crop
        assert torch.allclose(pixels[p], want, atol=1e-3), p


def _squares(root, tmp_path, split) -> torch.Tensor:
    """uint8 256 centre squares of the split's images in scan order, through NvjpegBatches.squares."""
    s = scan_split(root, split, cache_dir=str(tmp_path / "cache"))
    n = len(s)
    b = NvjpegBatches(files=s.files, labels=s.labels, sizes=s.sizes, offsets=np.zeros((n, 2)), mirror=np.zeros(n),
                      shift=np.zeros((n, 3)), stats=IMAGENET, batch_size=n, threads=1, prefetch=1, device="cpu",
                      ten_crop=False)
    images = b.decode(0, n, [read_bytes(f) for f in s.files])
    out = b.squares(0, images).float()
    # the squares themselves against PIL-free torchvision geometry, image by image
    import torchvision.transforms.v2.functional as F
    from torchvision.io import ImageReadMode, decode_image

    for i, f in enumerate(s.files):
        img = decode_image(f, mode=ImageReadMode.RGB)
        want = F.center_crop(F.resize(img, 256, antialias=True), [256, 256])
        assert torch.equal(out[i].to(torch.uint8), want), f
    return out


def test_resume_at_a_step_repeats_the_uninterrupted_epoch(tiny_root, tmp_path):
    cfg = nvjpeg(tiny_root, tmp_path, threads=2)
    full = run(build_train_loader(cfg, batch_size=6, seed=5, epoch=2))
    resumed = run(build_train_loader(cfg, batch_size=6, seed=5, epoch=2, start_step=4))
    assert len(full) == 6 and len(resumed) == 2
    assert_same(resumed, full[4:])
    other = run(build_train_loader(cfg, batch_size=6, seed=5, epoch=3))
    assert not torch.equal(full[0][0], other[0][0])


def test_data_parallel_shards_equal_the_torchvision_loaders(tiny_root, tmp_path):
    for rank in range(3):
        got = run(build_train_loader(nvjpeg(tiny_root, tmp_path), batch_size=4, seed=9, epoch=0, dp_rank=rank,
                                     dp_size=3))
        assert_same(got, run(build_train_loader(reference(tiny_root, tmp_path), batch_size=4, seed=9, epoch=0,
                                                dp_rank=rank, dp_size=3)))


def test_stopping_early_ends_the_decoding_thread(tiny_root, tmp_path, monkeypatch):
    """A loop left after one batch (max_steps, an exception): the decoding thread stops at once,
    having made at most the batches in flight, and does not decode the rest of the epoch."""
    made = []
    batch = NvjpegBatches.batch
    monkeypatch.setattr(NvjpegBatches, "batch", lambda self, lo, hi, data: made.append(lo) or batch(self, lo, hi, data))
    batches = build_train_loader(nvjpeg(tiny_root, tmp_path, prefetch=1), batch_size=4, seed=0, epoch=0)
    assert len(batches) == 9
    for _ in batches:
        break
    deadline = time.monotonic() + 10
    while any(t.name == "nvjpeg-decode" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.name == "nvjpeg-decode" for t in threading.enumerate())
    assert 1 <= len(made) <= 3  # the one taken, the one queued (prefetch 1), the one being made


def test_jpegs_are_told_from_other_files(mixed_root):
    files = sorted(mixed_root.rglob("*"))
    kinds = {f.suffix: {is_jpeg(read_bytes(str(g))) for g in files if g.suffix == f.suffix} for f in files if f.suffix}
    assert kinds == {".jpg": {True}, ".png": {False}}
    assert not is_jpeg(torch.empty(0, dtype=torch.uint8))


# -- bad input ------------------------------------------------------------------------------


@pytest.fixture()
def copied(tiny_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    return root


def _error(batches) -> str:
    with pytest.raises(DataError) as err:
        run(batches)
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_file_broken_after_the_scan_is_named(copied, tmp_path):
    batches = build_eval_loader(nvjpeg(copied, tmp_path), batch_size=4)  # scanned while the files were good
    victim = sorted((copied / "val").rglob("*.jpg"))[6]  # the second batch's third file: the others decode
    victim.write_bytes(corrupt_scan_data(victim.read_bytes()))  # in place: the cached index still lists it
    assert _error(batches).startswith(f"{victim} cannot be decoded (")


def test_a_file_replaced_by_another_size_or_removed_is_named(copied, tmp_path):
    batches = build_eval_loader(nvjpeg(copied, tmp_path), batch_size=4)
    files = sorted((copied / "val").rglob("*.jpg"))
    files[5].write_bytes(jpeg_bytes(textured(100, 120)))
    text = _error(batches)
    assert text.startswith(f"{files[5]} is 120x100 pixels, ") and "when the dataset was scanned" in text
    files[5].unlink()
    assert _error(batches).startswith(f"{files[5]} cannot be read (")
    files[5].write_bytes(b"")
    assert _error(batches).startswith(f"{files[5]} cannot be decoded (")


def test_a_png_broken_after_the_scan_is_named(mixed_root, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(mixed_root, root)
    batches = build_eval_loader(nvjpeg(root, tmp_path), batch_size=8)
    victim = root / "val" / "b" / "4.png"
    victim.write_bytes(victim.read_bytes()[:200])
    assert _error(batches).startswith(f"{victim} cannot be decoded (")


def test_a_jpeg_the_batched_decoder_declines_is_decoded_on_the_host(mixed_root, tmp_path, monkeypatch):
    """As nvJPEG declines some valid JPEGs (CMYK, lossless): the batch call fails, the file is
    decoded alone on the host (here: PIL after decode_jpeg), the rest of the batch as before."""
    from alexnet_mp.data import nvjpeg as module

    victim = (mixed_root / "val" / "a" / "3.jpg").read_bytes()
    real = module.decode_jpeg

    def declining(data, **kw):
        if any(bytes(d.numpy()) == victim for d in (data if isinstance(data, list) else [data])):
            raise RuntimeError("nvjpeg declines this one")
        return real(data, **kw)

    monkeypatch.setattr(module, "decode_jpeg", declining)
    got = run(build_eval_loader(nvjpeg(mixed_root, tmp_path), batch_size=8))
    want = run(build_eval_loader(reference(mixed_root, tmp_path), batch_size=8))
    files = scan_split(mixed_root, "val", cache_dir=str(tmp_path / "cache")).files
    k = list(files).index(str(mixed_root / "val" / "a" / "3.jpg"))
    x, u = torch.cat([x for x, _ in got]), torch.cat([u for u, _ in want])
    assert torch.equal(torch.cat([y for _, y in got]), torch.cat([v for _, v in want]))
    assert torch.equal(torch.cat([x[:k], x[k + 1:]]), torch.cat([u[:k], u[k + 1:]]))
    assert ((x[k] - u[k]) * STD * 255).abs().mean() < 1.0  # PIL's libjpeg-turbo, not torchvision's


# -- choosing the loader --------------------------------------------------------------------


@pytest.fixture()
def no_dali(monkeypatch):
    monkeypatch.setattr(loader_module, "dali_available", lambda: False)
    monkeypatch.setattr(loader_module, "_fallback_noted", False)
    monkeypatch.setattr(loader_module, "_cpu_nvjpeg_noted", False)


def test_without_dali_a_gpu_machine_falls_back_to_nvjpeg_said_once(tiny_root, tmp_path, monkeypatch, no_dali,
                                                                     caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cfg = cfg_for(tiny_root, tmp_path)  # loader = "dali", decode_device = "auto": the defaults
    with caplog.at_level(logging.WARNING, logger=loader_module.__name__):
        assert loader_module.effective_loader(cfg) == "nvjpeg"
        assert loader_module.effective_loader(cfg, "cuda:1") == "nvjpeg"
        train = build_train_loader(cfg, batch_size=8, seed=0, epoch=0)  # built, not iterated: no GPU here
        val = build_eval_loader(cfg, batch_size=8, device="cuda:1", ten_crop=True)
    assert isinstance(train.inner, NvjpegBatches) and train.inner.device == torch.device("cuda", 0)
    assert isinstance(val.inner, NvjpegBatches) and val.inner.device == torch.device("cuda", 1)
    assert val.inner.ten_crop and not train.inner.ten_crop
    notes = [r.getMessage() for r in caplog.records if "DALI is not installed" in r.getMessage()]
    assert len(notes) == 1 and "torchvision.io.decode_jpeg (nvJPEG)" in notes[0]
    # decoding on the CPU, asked for or forced: the torchvision loader, as before
    assert loader_module.effective_loader(cfg_for(tiny_root, tmp_path, decode_device="cpu")) == "torchvision"
    assert loader_module.effective_loader(cfg, "cpu") == "torchvision"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader_module.effective_loader(cfg) == "torchvision"
    assert loader_module.effective_loader(cfg, "cuda") == "torchvision"
    monkeypatch.setattr(loader_module, "dali_available", lambda: True)
    assert loader_module.effective_loader(cfg) == "dali"


def test_without_dali_or_cuda_the_fallback_is_the_torchvision_loader(tiny_root, tmp_path, monkeypatch, no_dali):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    batches = build_train_loader(cfg_for(tiny_root, tmp_path, threads=0), batch_size=8, seed=0, epoch=0)
    assert type(batches.inner).__name__ == "TorchvisionBatches"


def test_nvjpeg_asked_for_explicitly(tiny_root, tmp_path, monkeypatch, no_dali, caplog):
    monkeypatch.setattr(loader_module, "dali_available", lambda: True)  # DALI present: nvjpeg is still nvjpeg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=loader_module.__name__):
        for _ in range(2):
            b = build_eval_loader(cfg_for(tiny_root, tmp_path, loader="nvjpeg"), batch_size=4)
            assert isinstance(b.inner, NvjpegBatches) and b.inner.device == torch.device("cpu")
    notes = [r.getMessage() for r in caplog.records if 'loader = "nvjpeg" decodes on the CPU' in r.getMessage()]
    assert len(notes) == 1
    with pytest.raises(ConfigError, match='decode_device = "gpu" but CUDA is not available'):
        build_eval_loader(cfg_for(tiny_root, tmp_path, loader="nvjpeg", decode_device="gpu"), batch_size=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    b = build_eval_loader(cfg_for(tiny_root, tmp_path, loader="nvjpeg"), batch_size=4)
    assert b.inner.device == torch.device("cuda", 0)
    b = build_eval_loader(cfg_for(tiny_root, tmp_path, loader="nvjpeg", decode_device="cpu"), batch_size=4)
    assert b.inner.device == torch.device("cpu")


def test_config_accepts_nvjpeg_and_lists_it_when_rejecting():
    assert DataConfig(loader="nvjpeg").loader == "nvjpeg"
    with pytest.raises(ConfigError) as err:
        DataConfig(loader="nvjpg")
    assert str(err.value) == "[data] loader = 'nvjpg' is not accepted: 'dali' or 'torchvision' or 'nvjpeg'."


# -- on a GPU -------------------------------------------------------------------------------


def _planned(root, tmp_path, device, *, delta=0, ten_crop=False) -> NvjpegBatches:
    """Epoch 0 (seed 0) of ``root``'s train split as NvjpegBatches on ``device``; ``delta``
    moves every crop by that many pixels (down and right; left and up where that leaves the square)."""
    s = scan_split(root, "train", cache_dir=str(tmp_path / "cache"))
    plan = plan_epoch(len(s), 0, 0)
    offsets = plan.offsets + delta
    offsets = np.where(offsets > 32, offsets - 2 * delta, offsets)
    return NvjpegBatches(files=[s.files[i] for i in plan.order], labels=s.labels[plan.order],
                         sizes=s.sizes[plan.order], offsets=offsets, mirror=plan.mirror,
                         shift=lighting_shift(plan.alphas, IMAGENET, 0.1), stats=IMAGENET, batch_size=8, threads=2,
                         prefetch=2, device=device, ten_crop=ten_crop)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_on_the_gpu_batches_match_the_cpu_decode_within_decoder_differences(mixed_root, tiny_root, tmp_path):
    """nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's (nor is the GPU's float
    resize of uint8 the CPU's fixed point), so the GPU batches differ from the CPU's by an amount
    no test here could measure. The bound is relative instead: the GPU batch is much closer
    (< half the mean difference) to the same plan decoded on the CPU than to the plan with every
    crop one pixel off, and within 4 grey levels on average (DALI's libjpeg against torchvision:
    0.5). Labels are the same, and the same plan on the same GPU gives the same bits (resume)."""
    from alexnet_mp.data.loader import dali_available, effective_loader

    if not dali_available():
        assert effective_loader(DataConfig()) == "nvjpeg"  # the fallback this loader exists for
    for root in (tiny_root, mixed_root):
        gpu = run(_planned(root, tmp_path, "cuda"))
        cpu = run(_planned(root, tmp_path, "cpu"))
        off = run(_planned(root, tmp_path, "cpu", delta=1))
        assert len(gpu) == len(cpu) == len(off)
        for (x, y), (u, v), (w, _) in zip(gpu, cpu, off):
            assert x.is_cuda and y.is_cuda and x.shape == u.shape and torch.equal(y.cpu(), v)
            near = ((x.cpu() - u) * STD * 255).abs().mean()
            far = ((x.cpu() - w) * STD * 255).abs().mean()
            assert near < 4.0 and near < far / 2, (near, far)
    kw = dict(batch_size=8, seed=1, epoch=0)
    full = run(build_train_loader(nvjpeg(tiny_root, tmp_path, decode_device="gpu"), **kw))
    again = run(build_train_loader(nvjpeg(tiny_root, tmp_path, decode_device="gpu"), start_step=2, **kw))
    assert len(again) == len(full) - 2 and all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], again))
    ten = run(_planned(mixed_root, tmp_path, "cuda", ten_crop=True))
    ref = run(_planned(mixed_root, tmp_path, "cpu", ten_crop=True))
    for (x, _), (u, _) in zip(ten, ref):
        assert x.shape == u.shape and x.shape[1:] == (10, 3, 224, 224)
        cross = (x.cpu()[:, :, None] - u[:, None]).abs().mean(dim=(3, 4, 5))  # (B, 10 got, 10 reference)
        assert torch.equal(cross.argmin(dim=2), torch.arange(10).expand(x.shape[0], 10))
