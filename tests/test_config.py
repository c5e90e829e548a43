"""One config idiom for training, data and profile: the same error type and message shape."""

import pytest

from alexnet_mp.config import ModelConfig, TrainingConfig
from alexnet_mp.data import DataConfig
from alexnet_mp.errors import ConfigError
from alexnet_mp.profile import ProfileConfig


@pytest.mark.parametrize("build,message", [
    (lambda: TrainingConfig(device="tpu"), "[training] device = 'tpu' is not accepted: 'auto' or 'cpu' or 'cuda'."),
    (lambda: DataConfig(decode_device="tpu"), "[data] decode_device = 'tpu' is not accepted: 'auto' or 'cpu' or 'gpu'."),
    (lambda: ProfileConfig(device="tpu"), "--device = 'tpu' is not accepted: 'auto' or 'cpu' or 'cuda'."),
    (lambda: ModelConfig(init="xavier"), "[model] init = 'xavier' is not accepted: 'paper' or 'kaiming'."),
])
def test_a_choice_outside_its_literal_is_named_with_what_is_accepted(build, message):
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value) == message


@pytest.mark.parametrize("build,message", [
    (lambda: TrainingConfig(batch_size="big"), "[training] batch_size = 'big' has the wrong type; it must be a whole number."),
    (lambda: DataConfig(threads=1.5), "[data] threads = 1.5 has the wrong type; it must be a whole number."),
    (lambda: ProfileConfig(steps=True), "--steps = True has the wrong type; it must be a whole number."),
    (lambda: DataConfig(mean=["a", 1, 2]), "[data] mean = ['a', 1, 2] has the wrong type; it must be a list of numbers or absent."),
])
def test_a_value_of_the_wrong_type_is_named_with_the_type(build, message):
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value) == message


@pytest.mark.parametrize("build,needle", [
    (lambda: TrainingConfig(batch_size=0), "[training] batch_size = 0 is not accepted: a whole number >= 1."),
    (lambda: DataConfig(prefetch=0), "[data] prefetch = 0 is not accepted: a whole number >= 1."),
    (lambda: ProfileConfig(batch_size=0), "--batch-size = 0 is not accepted: a whole number >= 1"),
])
def test_a_value_out_of_range_is_named_with_the_range(build, needle):
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value).startswith(needle)


def test_an_int_is_taken_where_a_float_is_asked_and_stored_as_a_float():
    assert isinstance(TrainingConfig().batch_size, int)
    assert ModelConfig(dropout=0).dropout == 0.0 and isinstance(ModelConfig(dropout=0).dropout, float)


def test_without_tomllib_the_config_reads_toml_with_tomli(tmp_path):
    """Python 3.10 has no tomllib; the same parser ships as tomli (a dependency there)."""
    import subprocess
    import sys

    pytest.importorskip("tomli")
    (tmp_path / "run.toml").write_text('[training]\nbatch_size = 64\n[data]\nloader = "torchvision"\n')
    child = ("import sys; sys.modules['tomllib'] = None\n"  # as on Python 3.10: import tomllib fails
             "from alexnet_mp.config import load_config\n"
             "import alexnet_mp.config as c\n"
             f"cfg = load_config({str(tmp_path / 'run.toml')!r}, ['training.epochs=3'])\n"
             "print(c.tomllib.__name__, cfg.training.batch_size, cfg.training.epochs, cfg.data.loader)\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["tomli", "64", "3", "torchvision"]
