"""``DataConfig`` rejects bad values by name and reads a TOML ``[data]`` table."""

import pytest

from alexnet_mp.data import DataConfig
from alexnet_mp.errors import ConfigError


@pytest.mark.parametrize(
    "field, value, accepted",
    [
        ("loader", "pillow", "'dali' or 'torchvision'"),
        ("on_bad_file", "ignore", "'skip' or 'fail'"),
        ("color_stats", "mine", "'imagenet' or 'dataset'"),
        ("column_feed", "half", "'exchange' or 'duplicate'"),
        ("decode_device", "tpu", "'auto' or 'cpu' or 'gpu'"),
        ("torchvision_decoder", "cv2", "'pil' or 'decode_jpeg'"),
    ],
)
def test_bad_choice_names_field_and_accepted_values(field, value, accepted):
    with pytest.raises(ConfigError) as err:
        DataConfig(**{field: value})
    assert f"[data] {field} = {value!r}" in str(err.value)
    assert accepted in str(err.value)


@pytest.mark.parametrize("field, value", [("threads", -1), ("threads", 1.5), ("prefetch", True), ("pca_std", -0.1),
                                          ("mean", [0.5, 0.5]), ("std", [0.2, 0.0, 0.2]), ("path", "")])
def test_bad_numbers_are_rejected_by_name(field, value):
    with pytest.raises(ConfigError, match=f"\\[data\\] {field}"):
        DataConfig(**{field: value})


def test_from_table_reads_toml_values_and_rejects_unknown_keys():
    cfg = DataConfig.from_table({"path": "/x", "loader": "torchvision", "threads": 3, "mean": [0, 0.5, 1]})
    assert (cfg.path, cfg.loader, cfg.threads, cfg.mean) == ("/x", "torchvision", 3, [0.0, 0.5, 1.0])
    with pytest.raises(ConfigError, match="unknown keys data.thread, data.bogus; \\[data\\] accepts: path, loader"):
        DataConfig.from_table({"thread": 2, "bogus": 1})


def test_gpu_decoding_without_cuda_is_a_config_error(tmp_path, monkeypatch):
    import torch

    from alexnet_mp.data import build_eval_loader
    from alexnet_mp.data.synthetic import make_dataset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = make_dataset(tmp_path / "d", classes=2, train_per_class=1, val_per_class=1, progress=False)
    cfg = DataConfig(path=str(root), decode_device="gpu", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match='decode_device = "gpu" but CUDA is not available'):
        build_eval_loader(cfg, batch_size=2)


def test_auto_picks_mixed_decoding_when_cuda_is_present(tmp_path, monkeypatch):
    """No GPU here: check the choice (device_id handed to the pipeline), not the decoding."""
    import torch

    from alexnet_mp.data import build_eval_loader
    from alexnet_mp.data.synthetic import make_dataset

    root = make_dataset(tmp_path / "d", classes=2, train_per_class=1, val_per_class=1, progress=False)
    cfg = DataConfig(path=str(root), cache_dir=str(tmp_path / "c"))
    assert build_eval_loader(cfg, batch_size=2).inner._args["device_id"] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert build_eval_loader(cfg, batch_size=2).inner._args["device_id"] == 0
    assert build_eval_loader(cfg, batch_size=2, device="cpu").inner._args["device_id"] is None
    cpu = DataConfig(path=str(root), cache_dir=str(tmp_path / "c"), decode_device="cpu")
    assert build_eval_loader(cpu, batch_size=2).inner._args["device_id"] is None
