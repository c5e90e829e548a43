"""``alexnet-mp predict``: a run trained on ImageNet's flat layout names each image's classes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from alexnet_mp.commands import main
from alexnet_mp.data import DataConfig, build_eval_loader
from alexnet_mp.data.folder import scan_split
from alexnet_mp.train import checkpoint as ckpt

from train_fixtures import config, run_trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from imagenet_standin import ROOT, make_standin, plan  # noqa: E402

pytestmark = pytest.mark.slow  # trains a few steps
LINE = re.compile(r"^\s+(\d+\.\d\d)%  (n\d{8}) (stand-in class \d+, synthetic \d+)$")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three steps on a 4-class miniature of ImageNet's download: flat val/, Kaggle CSV, synset words."""
    out = tmp_path_factory.mktemp("imagenet")
    make_standin(out, classes=4, train=16, val=8, pool=6, seed=5)
    cfg = config(out / ROOT, out, **{"data.val_labels": str(out / "LOC_val_solution.csv"),
                                     "data.class_names": str(out / "LOC_synset_mapping.txt"),
                                     "training.max_steps": 3, "data.generate_if_missing": False})
    run_trainer(cfg)
    return out, Path(cfg.job.dump_folder) / cfg.job.name


def _predict(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["predict", *map(str, args)])
    return result.exit_code, result.output


def _parsed(output: str) -> dict[str, list[tuple[float, str]]]:
    table, current = {}, None
    for line in output.splitlines():
        m = LINE.match(line)
        if m:
            table[current].append((float(m[1]), f"{m[2]} {m[3]}"))
        else:
            current = line.rsplit(" (", 1)[0]
            table[current] = []
    return table


def test_names_and_probabilities_equal_the_ten_patch_validation(run, tmp_path):
    out, run_dir = run
    code, text = _predict(run_dir, out / ROOT / "val")
    assert code == 0, text
    table = _parsed(text)
    assert len(table) == 8 and all(len(rows) == 4 for rows in table.values())  # top-5 of 4 classes
    state, meta = ckpt.reference_state(ckpt.latest(run_dir))
    from alexnet_mp.model import AlexNet

    model = AlexNet(meta["num_classes"]).eval()
    model.load_state_dict(state)
    files, probs = _validation_ten_patches(model, out, tmp_path)
    p = plan(4, 16, 8, seed=5)
    words = [f"{w} stand-in class {k}, synthetic {k}" for k, w in enumerate(p.wnids)]
    for f, row in zip(files, probs):
        want = sorted(((float(v), words[k]) for k, v in enumerate(row)), reverse=True)
        got = table[f]
        assert [n for _, n in got] == [n for _, n in want]
        assert np.allclose([v for v, _ in got], [100 * v for v, _ in want], atol=0.006)


def test_a_jpeg_a_png_and_the_centre_crop(run, tmp_path):
    out, run_dir = run
    jpeg = out / ROOT / "val" / "ILSVRC2012_val_00000001.JPEG"
    png = tmp_path / "one.png"
    with Image.open(jpeg) as im:
        im.save(png)
    code, text = _predict(run_dir, jpeg, png, "--top", "2")
    assert code == 0, text
    table = _parsed(text)
    assert list(table) == [str(jpeg), str(png)] and [len(v) for v in table.values()] == [2, 2]
    assert [n for _, n in table[str(jpeg)]] == [n for _, n in table[str(png)]]  # the same pixels
    code, centre = _predict(run_dir, jpeg, "--centre-crop")
    assert code == 0 and "(centre crop)" in centre and "(ten patches)" in text
    assert _parsed(centre)[str(jpeg)] != _parsed(text)[str(jpeg)]


def test_a_bad_image_is_named_in_one_paragraph(run, tmp_path):
    _, run_dir = run
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    code, text = _predict(run_dir, bad)
    assert code == 2 and f"{bad} is not an image this toolkit can read" in text and "Traceback" not in text
    code, text = _predict(run_dir, tmp_path / "missing.jpg")
    assert code == 2 and "missing.jpg does not exist" in text


def test_a_checkpoint_without_names_says_how_to_give_them(run, tmp_path):
    import shutil

    out, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("classes.json"))
    jpeg = out / ROOT / "val" / "ILSVRC2012_val_00000001.JPEG"
    code, text = _predict(copy, jpeg)
    assert code == 2 and "has no class names" in text and "--names FILE" in text and "Traceback" not in text
    code, named = _predict(copy, jpeg, "--names", out / "LOC_synset_mapping.txt")
    assert code == 0 and _parsed(named) == _parsed(_predict(run_dir, jpeg)[1])


def test_the_scores_are_validation_s_ten_patch_average(run, tmp_path):
    """predict() on its own, with a network whose outputs differ from patch to patch (random Kaiming
    weights; the paper's init and a 3-step run give nearly the same softmax for every input): its
    probabilities equal the ten-patch validation's, and the centre crop's differ."""
    from alexnet_mp.model import AlexNet
    from alexnet_mp.train.predict import predict, prepare

    out, run_dir = run
    _, meta = ckpt.reference_state(ckpt.latest(run_dir))
    torch.manual_seed(0)
    model = AlexNet(meta["num_classes"], init="kaiming").eval()
    files, want = _validation_ten_patches(model, out, tmp_path)
    got = predict(model, prepare(files, meta, ten_crop=True), top=4, ten_crop=True)
    centre = predict(model, prepare(files, meta, ten_crop=False), top=4, ten_crop=False)
    assert want.max(1).values.min() < 0.99  # the patches disagree: the test can tell an average from one patch
    for (k, p), row in zip(got, want):
        assert np.allclose(p, row[k].numpy(), atol=1e-5) and k == row.argsort(descending=True).tolist()
    assert max(abs(a - b) for (_, p), (_, q) in zip(got, centre) for a, b in zip(p, q)) > 1e-3


def _validation_ten_patches(model, out, tmp_path):
    """The miniature's val files and the model's softmax averaged over their ten patches, as validation does."""
    cfg = DataConfig(path=str(out / ROOT), loader="torchvision", threads=0, cache_dir=str(tmp_path / "c"),
                     val_labels=str(out / "LOC_val_solution.csv"))
    files = list(scan_split(cfg.path, "val", cache_dir=cfg.cache_dir, val_labels=cfg.val_labels).files)
    with torch.no_grad():
        return files, torch.cat([model(x.flatten(0, 1)).softmax(-1).view(len(x), 10, -1).mean(1)
                                 for x, _ in build_eval_loader(cfg, batch_size=4, ten_crop=True)])
