"""The profiler's yardstick and its input checks: fast, no processes started."""

from __future__ import annotations


import pytest
import torch
from click.testing import CliRunner

from alexnet_mp import layers as L
from alexnet_mp.commands import main
from alexnet_mp.errors import UserError
from alexnet_mp.model import AlexNet
from alexnet_mp.profile import analytic, strategies
from alexnet_mp.profile.measure import flop_counter
from alexnet_mp.profile.runner import ProfileConfig, resolve_device, verdict


def test_paper_transfers_are_the_layer_tables_exchanges_both_ways():
    transfers = analytic.paper_transfers(128)
    # the paper's floats per sample per column, typed: conv3 13x13x128, fc6 6x6x128, fc7/fc8 2048, logits 500
    floats = {"conv3": 21_632, "fc6": 4_608, "fc7": 2_048, "fc8": 2_048, "logits": 500}
    assert {(t.name, t.direction): t.payload for t in transfers} == {
        (n, d): f * 128 * 4 for n, f in floats.items() for d in ("forward", "backward")}
    assert {(t.name, t.op) for t in transfers} == {
        (n, op) for n in floats for op in ("all-gather", "reduce-scatter")}
    # docs/paper.md, communication: ~31.6 MB per column per step at batch 128, fp32
    assert sum(t.payload for t in transfers) == 31_576_064


def test_data_parallel_allreduces_every_parameter_once_per_step_whatever_the_batch():
    transfers = analytic.data_parallel_transfers(2)
    assert sum(t.payload for t in transfers) == 243_860_896  # the paper's 60,965,224 parameters x 4 bytes
    # each layer's weights + biases, typed from Figure 2, in the order backward produces them
    params = {"fc8": 4_097_000, "fc7": 16_781_312, "fc6": 37_752_832, "conv5": 442_624, "conv4": 663_936,
              "conv3": 885_120, "conv2": 307_456, "conv1": 34_944}
    assert [(t.name, t.payload) for t in transfers] == [(f"{n}.grad", p * 4) for n, p in params.items()]
    model = AlexNet()
    for t in transfers:
        layer = getattr(model, t.name.removesuffix(".grad"))
        assert t.payload == sum(p.numel() for p in layer.parameters()) * 4
    # a ring sends 2(W-1)/W of the buffer: the whole buffer for 2 ranks, 1.5x for 4
    assert all(t.wire == t.payload for t in transfers)
    assert analytic.ring_allreduce_wire(1000, 4) == 1500


def test_row_partition_sends_half_the_outputs_and_is_cheaper_at_fc6_and_fc8():
    # floats per sample one column sends: gathering its half of the input (the paper) or
    # reduce-scattering the other half of the outputs (by rows); typed from Figure 2
    parts = {p.name: (p.by_columns, p.by_rows, p.cheaper) for p in analytic.fc_partitions()}
    assert parts == {"fc6": (4_608, 2_048, "rows"), "fc7": (2_048, 2_048, "same"), "fc8": (2_048, 500, "rows")}
    # bytes at batch 8 (x 32): conv3 and the logits as in the paper, the fc layers by rows
    assert analytic.row_fc_bytes(8, choice="rows") == {"conv3": 21_632 * 32, "fc6": 2_048 * 32, "fc7": 2_048 * 32,
                                                       "fc8": 500 * 32, "logits": 500 * 32}
    # with 10 classes fc8 by rows (5 floats) still beats gathering 2048
    assert analytic.row_fc_bytes(8, num_classes=10)["fc8"] == 5 * 8 * 4


def test_flop_count_of_grouped_convolutions_matches_the_split_columns():
    # torch's own formula counts a grouped conv's weight gradient twice; ours must make the
    # single-device net (grouped conv2/4/5) cost exactly what the two dense columns cost.
    x, y = torch.randn(2, *L.INPUT_SHAPE), torch.randint(0, 10, (2,))
    torch.manual_seed(0)
    single = AlexNet(10, dropout=0.0)
    counter = flop_counter()
    with counter:
        torch.nn.functional.cross_entropy(single(x), y).backward()
    # One column's conv2 is dense, 48 -> 128 maps, 5x5, on 27x27: 2 x 2 x 729 x 128 x 48 x 25 =
    # 447,897,600 FLOPs forward at batch 2, twice that backward (input and weight gradients).
    # The grouped single-device conv2 must cost the two columns together: 2x each.
    counts = counter.get_flop_counts()["AlexNet.conv2"]
    assert counts[torch.ops.aten.convolution] == 2 * 447_897_600
    assert counts[torch.ops.aten.convolution_backward] == 2 * 2 * 447_897_600


def test_verdict_names_the_smaller_and_the_quieter_by_ratio():
    rows = [{"name": "paper", "peak_tensors_per_device": 100 * 2**20, "bytes_per_step": 10,
             "step_time": 2.0},
            {"name": "single", "peak_tensors_per_device": 200 * 2**20, "bytes_per_step": 0, "step_time": 3.0},
            {"name": "data-parallel", "peak_tensors_per_device": 250 * 2**20, "bytes_per_step": 80,
             "step_time": 1.0}]
    text = verdict(rows)
    assert "paper holds the least per device (100 MiB peak), 0.50x single's, 0.40x data-parallel's" in text
    assert "paper sends the fewest bytes" in text and "0.125x data-parallel's" in text
    assert "fastest step here: data-parallel" in text


@pytest.mark.parametrize("kwargs, words", [
    ({"strategies": ["pipeline"]}, ["'pipeline'", "paper, single, data-parallel"]),
    ({"strategies": ["hybrid"], "batch_size": 3}, ["--batch-size = 3", "'hybrid'", "multiple of 2"]),
    ({"strategies": ["data-parallel"], "batch_size": 7}, ["--batch-size = 7", "'data-parallel'", "multiple of 2"]),
    ({"batch_size": 0}, ["--batch-size = 0", ">= 1"]),
    ({"steps": 0}, ["--steps = 0", ">= 1"]),
    ({"warmup": -1}, ["--warmup = -1", ">= 0"]),
    ({"num_classes": 7}, ["--num-classes = 7", "an even number"]),
    ({"strategies": ["paper", "paper"]}, ["--strategy/--compare = ['paper', 'paper']", "each strategy listed once"]),
    ({"data": "/nonexistent/imagenet"}, ["/nonexistent/imagenet", "train", "synthetic"]),
])
def test_bad_input_is_one_clear_user_error(kwargs, words):
    with pytest.raises(UserError) as err:
        ProfileConfig(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_cuda_without_cuda_is_a_user_error_and_ranks_may_share_a_gpu(monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    cfg = ProfileConfig(strategies=["paper", "single"], device="cuda", batch_size=2)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device(cfg, gpus=0)
    assert resolve_device(cfg, gpus=1) == "cuda"  # asked for: the two ranks share the GPU over gloo
    assert resolve_device(cfg, gpus=2) == "cuda"
    auto = ProfileConfig(strategies=["paper"], device="auto", batch_size=2)
    assert resolve_device(auto, gpus=1) == "cpu" and resolve_device(auto, gpus=2) == "cuda"
    assert resolve_device(ProfileConfig(strategies=["single"], batch_size=2), gpus=1) == "cuda"


def test_the_command_line_reports_bad_input_as_one_paragraph_and_status_2():
    result = CliRunner().invoke(main, ["profile", "--compare", "paper,data-parallel", "--batch-size", "5"])
    assert result.exit_code == 2
    assert "alexnet-mp: error: --batch-size = 5 is not accepted" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["profile", "--strategy", "bogus"])
    assert result.exit_code == 2 and "'bogus'" in result.output
    if not torch.cuda.is_available():
        result = CliRunner().invoke(main, ["profile", "--device", "cuda", "--batch-size", "2"])
        assert result.exit_code == 2 and "--device cuda" in result.output


def test_registry_lists_every_strategy_as_runnable():
    assert strategies.available() == ["paper", "single", "data-parallel", "hybrid", "one-weird-trick", "megatron",
                                      "data-parallel-4", "one-weird-trick-4"]
    trick4 = strategies.STRATEGIES["one-weird-trick-4"]
    assert trick4.processes == 4 and trick4.local_batch(128) == 32 and [trick4.part(r) for r in range(4)] == [0, 1, 2, 3]
    assert strategies.STRATEGIES["megatron"].local_batch(128) == 128
    assert strategies.STRATEGIES["data-parallel"].local_batch(128) == 64
    hybrid = strategies.STRATEGIES["hybrid"]
    assert hybrid.processes == 4 and [hybrid.part(r) for r in range(4)] == [0, 0, 1, 1]
    assert [strategies.STRATEGIES["data-parallel"].part(r) for r in range(2)] == [0, 1]


def test_a_folder_with_more_classes_than_fc8_is_refused(tmp_path):
    for split in ("train", "val"):
        for k in range(3):
            (tmp_path / split / f"class{k}").mkdir(parents=True)
            (tmp_path / split / f"class{k}" / "a.jpg").touch()  # counted, not decoded, by dataset_info
    with pytest.raises(UserError, match="3 classes but fc8 has --num-classes 2; give --num-classes 4"):
        ProfileConfig(data=str(tmp_path), num_classes=2)


def _per_step(strategy: str, batch: int) -> int:
    return sum(t.payload for t in strategies.get(strategy).transfers(batch, 1000))


def test_which_plan_moves_fewest_bytes_where_docs_profile_says():
    """The crossovers of docs/profile.md's table, from the plans' analytic transfers."""
    assert _per_step("megatron", 128) == _per_step("paper", 128) == 31_576_064
    assert _per_step("one-weird-trick", 128) == 18_761_216 and _per_step("one-weird-trick-4", 128) == 23_473_664
    assert _per_step("paper", 53) < _per_step("one-weird-trick", 53)
    assert _per_step("one-weird-trick", 54) < _per_step("paper", 54)
    assert _per_step("one-weird-trick", 3185) < _per_step("data-parallel", 3185) < _per_step("one-weird-trick", 3186)
    for b in (2, 128, 2048):
        assert _per_step("one-weird-trick-4", b) < _per_step("hybrid", b)
    assert _per_step("one-weird-trick-4", 2123) < _per_step("data-parallel-4", 2123) < _per_step("one-weird-trick-4", 2124)
