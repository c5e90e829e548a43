"""``dataset-stats`` computes mean/std/PCA correctly and the loaders use what it writes."""

from __future__ import annotations

import errno
import json
import logging
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from alexnet_mp.commands import main
from alexnet_mp.data import build_eval_loader
from alexnet_mp.data.augment import load_color_stats
from alexnet_mp.errors import ConfigError, DataError

from data_fixtures import cfg_for, corrupt_scan_data, jpeg_bytes, textured


@pytest.fixture()
def flat_root(tmp_path):
    """Flat-colour PNGs (exact pixels) whose statistics are known in closed form."""
    colours = np.array([[250, 10, 10], [10, 240, 30], [20, 20, 200], [128, 128, 128], [200, 180, 20], [0, 90, 255]])
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "ds" / split / c).mkdir(parents=True)
    for i, col in enumerate(colours):
        Image.fromarray(np.full((256, 256, 3), col, np.uint8)).save(tmp_path / "ds" / "train" / "ab"[i % 2] / f"{i}.png")
        Image.fromarray(np.full((256, 256, 3), col, np.uint8)).save(tmp_path / "ds" / "val" / "ab"[i % 2] / f"{i}.png")
    return tmp_path / "ds", colours / 255.0


def test_stats_are_the_pixel_mean_std_and_covariance_eigenpairs(flat_root, tmp_path):
    root, colours = flat_root
    result = CliRunner().invoke(main, ["dataset-stats", str(root), "--quiet"])
    assert result.exit_code == 0, result.output
    stats = json.loads((root / "color_stats.json").read_text())
    cov = np.cov(colours.T, bias=True)  # every image contributes equally many pixels
    eigval, eigvec = np.linalg.eigh(cov)
    assert np.allclose(stats["mean"], colours.mean(0), atol=1e-5)
    assert np.allclose(stats["std"], colours.std(0), atol=1e-5)
    assert np.allclose(stats["eigval"], eigval[::-1], atol=1e-5)
    got = np.array(stats["eigvec"])
    assert np.allclose(np.abs(got.T @ eigvec[:, ::-1]), np.eye(3), atol=1e-4)  # same axes, signs free


def test_loader_normalises_with_dataset_stats(flat_root, tmp_path):
    root, colours = flat_root
    CliRunner().invoke(main, ["dataset-stats", str(root), "--quiet"])
    cfg = cfg_for(root, tmp_path, color_stats="dataset")
    stats = load_color_stats(cfg)
    x = torch.cat([x for x, _ in build_eval_loader(cfg, batch_size=6)])
    expected = (torch.tensor(colours[[0, 2, 4, 1, 3, 5]], dtype=torch.float32) - torch.tensor(stats.mean)) / torch.tensor(stats.std)
    assert torch.allclose(x.mean(dim=(2, 3)), expected, atol=1e-3)  # files sort a/0,2,4 then b/1,3,5


def test_dataset_stats_missing_file_is_a_config_error(flat_root, tmp_path):
    root, _ = flat_root
    with pytest.raises(ConfigError, match="color_stats.json does not exist; run `alexnet-mp dataset-stats"):
        load_color_stats(cfg_for(root, tmp_path, color_stats="dataset"))


def test_dataset_stats_skips_a_corrupt_training_file(flat_root, tmp_path, monkeypatch, caplog):
    root, colours = flat_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    victim = root / "train" / "a" / "corrupt.jpg"
    victim.write_bytes(corrupt_scan_data(jpeg_bytes(textured(300, 260))))
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, ["dataset-stats", str(root), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{victim}: corrupt JPEG data" in caplog.text  # the scan's warning names it
    stats = json.loads((root / "color_stats.json").read_text())
    assert np.allclose(stats["mean"], colours.mean(0), atol=1e-5)  # the six flat images alone
    assert "(1 undecodable files skipped)" in stats["source"]


def test_dataset_stats_writes_its_json_whole_or_not_at_all(flat_root, tmp_path, monkeypatch):
    root, _ = flat_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = root / "color_stats.json"
    out.write_text("previous statistics\n")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    result = CliRunner().invoke(main, ["dataset-stats", str(root), "--quiet"])
    assert result.exit_code == 2
    assert f"cannot write the statistics to {out}: No space left on device; choose another file with --out" \
        in result.output
    assert out.read_text() == "previous statistics\n"
    assert sorted(p.name for p in root.iterdir()) == ["color_stats.json", "train", "val"]  # no temporary left


def test_dataset_stats_reports_an_unwritable_out(flat_root, tmp_path, monkeypatch):
    root, _ = flat_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "missing" / "stats.json"
    result = CliRunner().invoke(main, ["dataset-stats", str(root), "--quiet", "--out", str(out)])
    assert result.exit_code == 2 and f"cannot write the statistics to {out}: No such file" in result.output


@pytest.mark.parametrize("args, needle", [(["--seed", "-1"], "--seed -1: use a whole number >= 0"),
                                          (["--images", "0"], "--images 0: use a whole number >= 1")])
def test_dataset_stats_bad_numbers_are_named(flat_root, tmp_path, monkeypatch, args, needle):
    root, _ = flat_root
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(main, ["dataset-stats", str(root), "--quiet", *args])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (root / "color_stats.json").exists()


@pytest.mark.parametrize("field,value", [("mean", ["a", 0, 0]), ("std", [0, 0, 0]), ("eigval", [1, 2]),
                                         ("eigvec", [[1, 0, 0], [0, 1, 0]]), ("eigvec", [["x", 0, 0]] * 3),
                                         ("mean", [True, 0.5, 0.5])])
def test_a_stats_file_of_the_wrong_shape_is_named(flat_root, tmp_path, field, value):
    import json

    from alexnet_mp.data.augment import IMAGENET, load_color_stats

    path = tmp_path / "stats.json"
    path.write_text(json.dumps({**IMAGENET.to_json(), field: value}))
    with pytest.raises(DataError, match=f"{path} is not a colour-statistics file.*{field.split()[0]}"):
        load_color_stats(cfg_for(flat_root, tmp_path, color_stats="dataset", stats_file=str(path)))
