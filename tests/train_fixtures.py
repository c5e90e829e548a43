"""A tiny generated dataset and short training configs shared by the training tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alexnet_mp.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from alexnet_mp.data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("ds") / "tiny", classes=2, train_per_class=24, val_per_class=6,
                        seed=1, progress=False)


def config(dataset, tmp_path, **overrides):
    sets = {"job.dump_folder": str(tmp_path / "runs"), "job.name": "t", "data.path": str(dataset),
            "data.loader": "torchvision", "data.threads": 0, "data.cache_dir": str(tmp_path / "cache"),
            "training.batch_size": 4, "training.epochs": 1, "training.device": "cpu", "model.dropout": 0.0,
            "validation.batch_size": 6, "validation.ten_crop": "never", "metrics.projector_images": 0,
            "metrics.enable_tensorboard": False, "checkpoint.interval": 0, "metrics.log_freq": 1000}
    sets.update(overrides)
    return load_config(None, [f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
                              for k, v in sets.items()])


def run_trainer(cfg):
    from alexnet_mp.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        trainer.train()
        model = trainer.model
        # the whole network's weights when this process holds every column, else this column's
        weights = model.whole() if not trainer.layout.distributed else \
            {k: v.detach().clone() for k, v in model.state_dict().items()}
        return trainer.losses, weights
    finally:
        trainer.close()


FP32_LOSS_FLOOR = 2.0**-24 * 64
"""The least fp32 loss difference a check allows (64 ulps at 1): losses that underflow to 0 or
sit at a sum of a few rounded logits differ by that much without any error."""


def within_fp32_noise(got: list[float], fp32: list[float], exact: list[float], factor: float = 4.0) -> None:
    """Each of ``got`` within ``factor`` x the single-device fp32 run's own distance from float64."""
    for i, (a, b, e) in enumerate(zip(got, fp32, exact, strict=True)):
        allowed = factor * max(abs(b - e), FP32_LOSS_FLOOR * max(1.0, abs(e)))
        assert abs(a - e) <= allowed, (i, a, b, e, allowed)


def single_device_losses(cfg, steps, batch_size=None, dtype=torch.float32):
    """The same recipe on alexnet_mp.AlexNet with the same batches: (losses, model)."""
    from alexnet_mp import AlexNet
    from alexnet_mp.data import build_train_loader

    torch.manual_seed(cfg.job.seed)
    model = AlexNet(2, dropout=0.0, init=cfg.model.init).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=0.9, weight_decay=5e-4)
    losses = []
    batch_size = batch_size or cfg.training.batch_size
    epoch = 0
    while len(losses) < steps:  # across epoch boundaries: each epoch has its own order
        for images, labels in build_train_loader(cfg.data, batch_size=batch_size, seed=cfg.job.seed, epoch=epoch):
            loss = F.cross_entropy(model(images.to(dtype)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
        epoch += 1
    return losses, model


def torchrun(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def overrides(dataset, tmp_path, **extra):
    sets = {"job.dump_folder": str(tmp_path / "runs"), "job.name": "tr", "data.path": str(dataset),
            "data.cache_dir": str(tmp_path / "cache"), "training.batch_size": 4, "training.epochs": 1,
            "training.device": "cpu", "validation.batch_size": 6, "validation.ten_crop": "end",
            "metrics.projector_images": 8, "metrics.log_freq": 2, "checkpoint.interval": 3, "optimizer.lr": 0.001}
    sets.update(extra)
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out
