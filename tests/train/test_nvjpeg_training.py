"""The trainer on the nvJPEG loader: the same run as on the torchvision loader.

On the CPU the two loaders make bit-identical batches (tests/data/test_nvjpeg.py), so a few
training steps on each must give the same losses and weights, bit for bit; anything the
trainer does differently with the new loader's batches (order, device, dtype, layout) shows.
"""

from __future__ import annotations

import pytest
import torch

from train_fixtures import config, dataset, run_trainer  # noqa: F401


@pytest.mark.slow
def test_a_run_on_the_nvjpeg_loader_is_the_run_on_the_torchvision_loader(dataset, tmp_path):  # noqa: F811
    sets = {"training.max_steps": 4, "checkpoint.enable": False, "model.dropout": 0.5,
            "data.torchvision_decoder": "decode_jpeg"}
    losses, weights = run_trainer(config(dataset, tmp_path / "tv", **sets))
    nv_losses, nv_weights = run_trainer(config(dataset, tmp_path / "nv", **sets, **{"data.loader": "nvjpeg",
                                                                                    "data.decode_device": "cpu"}))
    assert len(losses) == 4 and nv_losses == losses
    assert all(torch.equal(nv_weights[k], weights[k]) for k in weights)
