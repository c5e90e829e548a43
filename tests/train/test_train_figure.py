"""The training run's TensorBoard figure: per-rank memory beside the bytes of each exchange."""

from __future__ import annotations

import pytest

from train_fixtures import config, dataset, run_trainer  # noqa: F401

pytest.importorskip("matplotlib")

FLOATS = {"conv3": 21_632, "fc6": 4_608, "fc7": 2_048, "fc8": 2_048, "logits": 1}
"""Floats per sample one column sends at each exchange; 2 classes: one logit per column."""


@pytest.mark.slow
def test_training_writes_one_memory_and_traffic_figure_of_the_analytic_bytes(dataset, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alexnet_mp import charts

    drawn = []
    original = charts.memory_traffic_figure

    def spy(bars, **kwargs):
        drawn.append(bars)
        return original(bars, **kwargs)

    monkeypatch.setattr(charts, "memory_traffic_figure", spy)
    cfg = config(dataset, tmp_path, **{"training.max_steps": 2, "parallelism.one_process": "columns",
                                        "metrics.enable_tensorboard": True, "metrics.log_freq": 1,
                                        "checkpoint.enable": False})
    run_trainer(cfg)
    acc = EventAccumulator(str(tmp_path / "runs" / "t" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    (image,) = acc.Images("profile/memory_and_traffic")
    assert image.step == 2 and image.encoded_image_string.startswith(b"\x89PNG") and image.width >= 1000
    (bars,) = drawn
    traffic = {b.exchange: b.bytes for b in bars.traffic}
    expected = {f"{name} {op}": floats * 4 * 4  # batch 4, fp32
                for name, floats in FLOATS.items() for op in ("all-gather fwd", "reduce-scatter bwd")}
    assert traffic == expected
    assert [b.device for b in bars.memory] == ["rank 0"] and bars.memory[0].parts["resident"] > 2**28
