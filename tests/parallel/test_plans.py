"""Plans as data: the exchanges each plan derives from the layer table, the shards' offsets, the
whole-mask dropout. No processes here (tests/commands/test_verify_plans.py runs the plans)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet_mp import layers as L
from alexnet_mp.parallel import Shard, plans
from alexnet_mp.parallel.planned import WholeMaskDropout, assemble, whole_shapes


def test_the_paper_plan_derives_the_papers_five_exchanges():
    crossings = plans.crossings(plans.get("paper"))
    assert [(c.name, c.kind) for c in crossings] == [(e, "gather") for e in L.exchange_bytes(1)]
    for b in (1, 128):
        assert {c.name: c.bytes(b, 2)["forward"] for c in crossings} == L.exchange_bytes(b)
        assert {c.name: c.bytes(b, 2)["backward"] for c in crossings} == L.exchange_bytes(b)


def test_the_2014_scheme_replicates_the_convolutions_and_exchanges_the_batch_at_fc6():
    crossings = {c.name: c for c in plans.crossings(plans.get("one-weird-trick"), 4)}
    assert [n for n, c in crossings.items() if c.kind == "grads"] == [f"conv{i}.grad" for i in range(1, 6)]
    assert sum(c.numel for c in crossings.values() if c.kind == "grads") == 2_334_080  # the convolutions' weights
    assert crossings["fc6"].kind == "batch"
    assert crossings["fc6"].bytes(128, 4) == {"forward": 9216 * 32 * 3 * 4, "backward": 9216 * 32 * 3 * 4}
    assert crossings["fc7"].bytes(128, 4)["forward"] == 1024 * 128 * 3 * 4  # its quarter of fc6 to 3 others
    assert crossings["logits"].bytes(128, 4)["forward"] == 250 * 128 * 3 * 4


def test_megatron_pairs_fc6_and_fc7_with_one_all_reduce():
    crossings = {c.name: c for c in plans.crossings(plans.get("megatron"))}
    assert list(crossings) == ["conv3", "fc6", "fc7.out", "fc8", "logits"]
    assert (crossings["fc7.out"].kind, crossings["fc8"].kind) == ("reduce", "copy")
    paper = sum(sum(c.bytes(128, 2).values()) for c in plans.crossings(plans.get("paper")))
    megatron = sum(sum(c.bytes(128, 2).values()) for c in crossings.values())
    assert megatron == paper  # an all-reduce over 2 moves what the two gathers it replaces moved


@pytest.mark.parametrize("name,world,needle", [
    ("paper", 4, "exactly 2 workers"), ("megatron", 4, "exactly 2 workers"), ("one-weird-trick", 3, "fc6"),
    ("one-weird-trick", 1, "at least 2")])
def test_plans_refuse_worker_counts_they_cannot_split_into(name, world, needle):
    assert needle in plans.get(name).workers_allowed(world)
    with pytest.raises(ValueError, match=needle):
        plans.crossings(plans.get(name), world)


def test_a_layer_by_inputs_after_replicated_convolutions_is_refused():
    plan = plans.Plan("bad", "fc6 by inputs after the batch split",
                      tuple((n, {"fc6": "inputs"}.get(n, "replicated" if n.startswith("conv") else "outputs"))
                            for n, _ in plans.get("paper").placed))
    with pytest.raises(ValueError, match="fc6 placed by inputs cannot read an activation that is 'batch'"):
        plans.crossings(plan, 2)


def test_unknown_plan_names_what_is_accepted():
    with pytest.raises(KeyError, match="paper, one-weird-trick, megatron"):
        plans.get("pipeline")


def test_shard_offsets_default_from_the_column():
    p = nn.Parameter(torch.zeros(48, 3, 11, 11))
    assert Shard("conv1.weight", None, p).offsets == (0, 0, 0, 0)
    assert Shard("conv1.weight", 1, p).offsets == (48, 0, 0, 0)
    whole = torch.arange(96 * 3 * 11 * 11.).reshape(96, 3, 11, 11)
    assert torch.equal(Shard("conv1.weight", 1, p).of(whole), whole[48:])
    by_inputs = Shard("fc7.weight", None, nn.Parameter(torch.zeros(4096, 1024)), offsets=(0, 2048))
    assert by_inputs.of(torch.zeros(4096, 4096)).shape == (4096, 1024)


def test_assemble_needs_every_element_exactly_once():
    shapes = whole_shapes(10)
    parts = [(n, (0,) * len(s), torch.ones(s)) for n, s in shapes.items()]
    assert all(bool((t == 1).all()) for t in assemble(parts, 10).values())
    half = (shapes["fc7.weight"][0], shapes["fc7.weight"][1] // 2)
    gap = [p for p in parts if p[0] != "fc7.weight"] + [("fc7.weight", (0, 0), torch.ones(half))]
    with pytest.raises(ValueError, match="fc7.weight: the parts cover 8388608 elements 0 times"):
        assemble(gap, 10)
    with pytest.raises(ValueError, match="fc8.bias: .* 10 more than once"):
        assemble(parts + [("fc8.bias", (0,), torch.ones(10))], 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_whole_mask_dropout_draws_nn_dropouts_masks(dtype):
    x = torch.randn(4, 4096, dtype=dtype)
    torch.manual_seed(5)
    expected = nn.Dropout(0.5).train()(x)
    torch.manual_seed(5)
    assert torch.equal(WholeMaskDropout(0.5, 4096, 0).train()(x), expected)
    torch.manual_seed(5)  # worker 1 of 2, holding features 2048-4095
    assert torch.equal(WholeMaskDropout(0.5, 4096, 1).train()(x[:, 2048:]), expected[:, 2048:])
    assert torch.equal(WholeMaskDropout(0.5, 4096, 1).eval()(x), x)
