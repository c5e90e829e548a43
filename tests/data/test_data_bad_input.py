"""Bad input: each broken file is skipped (counted) or named; odd but valid images decode right."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from alexnet_mp.commands import main
from alexnet_mp.data import build_eval_loader, build_train_loader, dataset_info
from alexnet_mp.data.augment import IMAGENET
from alexnet_mp.errors import DataError

from data_fixtures import (cfg_for, corrupt_scan_data, jpeg_bytes, jpeg_declaring, png_declaring,  # noqa: F401
                           textured, tiny_root)

BROKEN = {  # file name -> what the report must say
    "zero.jpg": "empty file",
    "text.jpg": "not an image",
    "truncated.jpg": "truncated JPEG",
    "garbage_body.jpg": "truncated JPEG",
}


def _write_broken(folder):
    good = jpeg_bytes(textured(200, 300))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "garbage_body.jpg").write_bytes(good[:600] + bytes(range(256)) * 8)


ODD = {  # valid images a real dataset holds: all must decode to the right pixels
    "gray.jpg": lambda: jpeg_bytes(textured(180, 240, 1), "L"),
    "cmyk.jpg": lambda: jpeg_bytes(textured(180, 240, 2), "CMYK"),
    "png_named.jpg": None,  # written as PNG below
    "one_by_one.jpg": lambda: jpeg_bytes(np.full((1, 1, 3), (200, 30, 90), np.uint8)),
    "small_100x80.jpg": lambda: jpeg_bytes(textured(80, 100, 3)),
    "wide_4000x20.jpg": lambda: jpeg_bytes(textured(20, 4000, 4)),
}


@pytest.fixture()
def messy_root(tiny_root, tmp_path):
    root = tmp_path / "messy"
    shutil.copytree(tiny_root, root)
    val = sorted((root / "val").iterdir())[0]
    _write_broken(val)
    for name, make in ODD.items():
        if make is None:
            Image.fromarray(textured(150, 160, 5)).save(val / name, format="PNG")
        else:
            (val / name).write_bytes(make())
    return root


def test_skip_logs_the_count_and_every_good_file_loads(messy_root, tmp_path, caplog):
    cfg = cfg_for(messy_root, tmp_path, on_bad_file="skip")
    with caplog.at_level(logging.WARNING):
        loader = build_eval_loader(cfg, batch_size=8)
    assert loader.skipped == len(BROKEN)
    assert f"skipping {len(BROKEN)} undecodable file(s)" in caplog.text
    for name, why in BROKEN.items():
        assert f"{name}: {why}" in caplog.text
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 15 + len(ODD)


def test_fail_names_the_files(messy_root, tmp_path):
    with pytest.raises(DataError) as err:
        build_eval_loader(cfg_for(messy_root, tmp_path, on_bad_file="fail"), batch_size=8)
    for name, why in BROKEN.items():
        assert f"{name}: {why}" in str(err.value)
    assert 'on_bad_file = "skip"' in str(err.value)


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_odd_images_decode_like_pil(messy_root, tmp_path, loader):
    """Grayscale, CMYK, PNG-named-.jpg, 1x1, 100x80, 4000x20: each matches PIL's RGB decode, resized."""
    import torchvision.transforms as T

    cfg = cfg_for(messy_root, tmp_path, loader=loader, threads=1 if loader == "dali" else 0)
    from alexnet_mp.data.folder import scan_split

    files = scan_split(messy_root, "val", cache_dir=str(tmp_path / "cache")).files
    images = torch.cat([x for x, _ in build_eval_loader(cfg, batch_size=8)])
    got = (images * torch.tensor(IMAGENET.std).reshape(3, 1, 1) + torch.tensor(IMAGENET.mean).reshape(3, 1, 1)) * 255
    for name in ODD:
        i = next(k for k, f in enumerate(files) if f.endswith("/" + name))
        with Image.open(files[i]) as im:
            ref = T.functional.pil_to_tensor(T.CenterCrop(224)(T.Resize(256)(im.convert("RGB")))).float()
        assert (got[i] - ref).abs().mean() < 2.0, name  # extreme upscales: a level or two of filter arithmetic
        if name == "gray.jpg":
            assert (got[i][0] - got[i][1]).abs().max() < 1e-3  # still gray after decoding to RGB


def test_empty_class_folder_is_named(tiny_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "train").iterdir())[1]
    for f in victim.iterdir():
        f.unlink()
    with pytest.raises(DataError, match=f"class folder {victim} holds no images"):
        dataset_info(root)
    with pytest.raises(DataError, match=str(victim)):
        build_train_loader(cfg_for(root, tmp_path), batch_size=4, seed=0, epoch=0)


def test_class_of_only_broken_files_is_named(tiny_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "train").iterdir())[0]
    for f in victim.iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=f"no decodable images: {victim}"):
        build_train_loader(cfg_for(root, tmp_path), batch_size=4, seed=0, epoch=0)


def test_missing_empty_and_mismatched_dataset_folders(tiny_root, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        dataset_info(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty/train is missing"):
        dataset_info(tmp_path / "empty")
    (tmp_path / "empty" / "train").mkdir()
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DataError, match="holds no class folders"):
        dataset_info(tmp_path / "empty")
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    first = sorted((root / "val").iterdir())[0]
    first.rename(root / "val" / "zzz_renamed")
    with pytest.raises(DataError) as err:
        dataset_info(root)
    assert f"only in train: ['{first.name}']" in str(err.value) and "only in val: ['zzz_renamed']" in str(err.value)


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["dataset-stats", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["make-dataset", str(tmp_path / "d"), "--classes", "1"])
    assert result.exit_code == 2 and "--classes 1" in result.output


def test_cached_index_is_reused_and_refreshed_when_a_folder_changes(tiny_root, tmp_path, monkeypatch):
    from alexnet_mp.data import folder

    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    calls = []
    real = folder.check_image
    monkeypatch.setattr(folder, "check_image", lambda p: calls.append(p) or real(p))
    first = folder.scan_split(root, "val", cache_dir=str(tmp_path / "c"))
    assert len(calls) == 15
    again = folder.scan_split(root, "val", cache_dir=str(tmp_path / "c"))
    assert len(calls) == 15 and again.files == first.files and np.array_equal(again.sizes, first.sizes)
    victim = sorted((root / "val").iterdir())[0]
    (victim / "zero.jpg").write_bytes(b"")
    third = folder.scan_split(root, "val", cache_dir=str(tmp_path / "c"))
    assert len(calls) == 31 and len(third) == 15 and third.bad[0][0].endswith("zero.jpg")


def test_a_file_broken_after_the_scan_is_named_not_a_dali_traceback(tiny_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    cfg = cfg_for(root, tmp_path)
    loader = build_eval_loader(cfg, batch_size=4)  # scanned and cached while the files were good
    victim = sorted((root / "val").rglob("*.jpg"))[6]
    victim.write_bytes(b"overwritten after the scan, not an image")  # the folder's mtime does not change
    with pytest.raises(DataError, match=f"{victim} cannot be decoded"):
        list(loader)


@pytest.fixture()
def corrupt_root(tiny_root, tmp_path):
    """The tiny dataset with one generated train JPEG and one val JPEG damaged inside the scan data."""
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_root, root)
    victims = [sorted((root / split).rglob("*.jpg"))[4] for split in ("train", "val")]
    for victim in victims:
        victim.write_bytes(corrupt_scan_data(victim.read_bytes()))
        assert victim.read_bytes()[-2:] == b"\xff\xd9"  # header and end marker intact: the old check passed it
        with pytest.raises(OSError, match="broken data stream"), Image.open(victim) as im:
            im.load()
    return root, victims


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
def test_corrupt_scan_data_is_skipped_by_both_loaders(corrupt_root, tmp_path, loader, caplog):
    root, (train_victim, val_victim) = corrupt_root
    cfg = cfg_for(root, tmp_path, loader=loader, threads=1 if loader == "dali" else 0)
    with caplog.at_level(logging.WARNING):
        val = build_eval_loader(cfg, batch_size=8)
        train = build_train_loader(cfg, batch_size=7, seed=0, epoch=0)
    assert val.skipped == 1 and train.skipped == 1
    for victim in (train_victim, val_victim):
        assert f"{victim}: corrupt JPEG data, PIL cannot decode it (broken data stream" in caplog.text
    assert len(torch.cat([y for _, y in val])) == 14
    assert len(torch.cat([y for _, y in train])) == 35


def test_corrupt_scan_data_fails_by_name_when_asked(corrupt_root, tmp_path):
    root, (_, val_victim) = corrupt_root
    with pytest.raises(DataError, match=f"{val_victim}: corrupt JPEG data"):
        build_eval_loader(cfg_for(root, tmp_path, on_bad_file="fail"), batch_size=8)


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
@pytest.mark.slow
def test_eval_command_skips_a_corrupt_file(corrupt_root, tmp_path, monkeypatch, loader):
    """``alexnet-mp eval`` on a folder with a damaged JPEG: the other 14 images, no traceback."""
    from alexnet_mp.model import AlexNet
    from alexnet_mp.train import checkpoint

    root, _ = corrupt_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(checkpoint, "reference_state", lambda path: (AlexNet(4).state_dict(), {"num_classes": 4}))
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "ckpt"), "--data", str(root), "--loader", loader,
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "(14 images, centre crop)" in result.output


def test_a_decompression_bomb_is_a_bad_file_naming_its_pixels(tiny_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    val = sorted((root / "val").iterdir())[0]
    (val / "bomb.jpg").write_bytes(jpeg_declaring(30000, 30000))
    (val / "bomb.png").write_bytes(png_declaring(30000, 30000))
    limit = Image.MAX_IMAGE_PIXELS
    loader = build_eval_loader(cfg_for(root, tmp_path), batch_size=8)
    assert loader.skipped == 2 and len(torch.cat([y for _, y in loader])) == 15
    with pytest.raises(DataError) as err:
        build_eval_loader(cfg_for(root, tmp_path, on_bad_file="fail"), batch_size=8)
    for name in ("bomb.jpg", "bomb.png"):
        assert f"{name}: too many pixels to decode safely (Image size (900000000 pixels) exceeds limit of " \
               f"{2 * limit} pixels" in str(err.value)
    assert Image.MAX_IMAGE_PIXELS == limit  # the global limit is left alone


@pytest.mark.parametrize("threads", [0, 1])
def test_a_file_broken_after_the_scan_is_named_not_a_torchvision_traceback(tiny_root, tmp_path, threads):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    loader = build_eval_loader(cfg_for(root, tmp_path, loader="torchvision", threads=threads), batch_size=4)
    victim = sorted((root / "val").rglob("*.jpg"))[6]
    victim.write_bytes(corrupt_scan_data(victim.read_bytes()))  # in place: the folder's mtime does not change
    with pytest.raises(DataError) as err:
        list(loader)
    assert str(err.value).startswith(f"{victim} cannot be decoded (broken data stream")  # a worker's, unwrapped
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("loader", ["dali", "torchvision"])
@pytest.mark.slow
def test_a_file_shrunk_after_the_scan_is_named(tiny_root, tmp_path, loader):
    """Replaced in place by a smaller valid image: the crop planned from the scanned size no longer fits."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    loader = build_eval_loader(cfg_for(root, tmp_path, loader=loader, threads=1 if loader == "dali" else 0),
                               batch_size=4)
    victim = sorted((root / "val").rglob("*.jpg"))[2]
    victim.write_bytes(jpeg_bytes(textured(100, 120)))
    with pytest.raises(DataError, match=f"{victim} is 120x100 pixels, .* scanned"):
        list(loader)


def test_a_file_where_a_folder_belongs_is_named(tiny_root, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match=f"dataset folder {tmp_path / 'file'} is a file, not a folder"):
        dataset_info(tmp_path / "file")
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    shutil.rmtree(root / "val")
    (root / "val").write_text("not a folder")
    with pytest.raises(DataError, match=f"split {root / 'val'} is a file, not a folder"):
        build_eval_loader(cfg_for(root, tmp_path), batch_size=4)


def test_an_unlistable_class_folder_is_named(tiny_root, tmp_path, monkeypatch):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "val").iterdir())[1]
    real = os.scandir

    def scandir(path):
        if os.fspath(path) == str(victim):
            raise PermissionError(13, "Permission denied", str(victim))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=f"cannot read the folder {victim}: Permission denied"):
        build_eval_loader(cfg_for(root, tmp_path), batch_size=4)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_a_chmod_000_class_folder_is_named(tiny_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "train").iterdir())[0]
    victim.chmod(0)
    try:
        with pytest.raises(DataError, match=f"cannot read the folder {victim}"):
            dataset_info(root)
    finally:
        victim.chmod(0o755)


def test_a_cached_index_of_the_wrong_shape_is_rescanned(tiny_root, tmp_path):
    from alexnet_mp.data.folder import scan_split

    cache = str(tmp_path / "c")
    first = scan_split(tiny_root, "val", cache_dir=cache)
    for junk in ('{"entries": [[1, 2]]}', '{"entries": 5}', '[1, 2, 3]', '{"entries": [["a.jpg", 99, 1, 1, ""]]}'):
        for f in (tmp_path / "c").iterdir():
            f.write_text(junk)
        again = scan_split(tiny_root, "val", cache_dir=cache)
        assert again.files == first.files and np.array_equal(again.sizes, first.sizes), junk
