"""``DataConfig`` rejects bad values by name and reads a TOML ``[data]`` table."""

import pytest

from alexnet_mp.data import DataConfig
from alexnet_mp.errors import ConfigError


@pytest.mark.parametrize(
    "field, value, accepted",
    [
        ("loader", "pillow", "'dali', 'torchvision'"),
        ("on_bad_file", "ignore", "'skip', 'fail'"),
        ("color_stats", "mine", "'imagenet', 'dataset'"),
        ("column_feed", "half", "'exchange', 'duplicate'"),
        ("decode_device", "tpu", "'auto', 'cpu', 'gpu'"),
        ("torchvision_decoder", "cv2", "'pil', 'decode_jpeg'"),
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


def test_from_dict_reads_toml_values_and_rejects_unknown_keys():
    cfg = DataConfig.from_dict({"path": "/x", "loader": "torchvision", "threads": 3, "mean": [0, 0.5, 1]})
    assert (cfg.path, cfg.loader, cfg.threads, cfg.mean) == ("/x", "torchvision", 3, [0.0, 0.5, 1.0])
    with pytest.raises(ConfigError, match="unknown key\\(s\\) bogus, thread"):
        DataConfig.from_dict({"thread": 2, "bogus": 1})
