"""``alexnet-mp verify --plan``: the 2014 scheme and the Megatron pairing compute the single-device
function in float64 with every exchange's bytes exact, and fail when one exchange is removed.

The runs share worker processes (one spawn at 2 workers for every case, one CLI run at 4): each
worker runs the plan once per case, with the case's fault planted in its own module globals.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from alexnet_mp.commands import main
from alexnet_mp.commands import verify as V
from alexnet_mp.model import AlexNet
from alexnet_mp.parallel.spawn import run_workers

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

CASE = V.Case(batch_size=2, seed=0, num_classes=10)
DROPOUT_SEED = 99


FAULTS = {  # the crossing kind replaced, and by what
    "no gradient sum": ("grads", lambda t, group: t),
    "no all-reduce": ("reduce", lambda t, group: t),
    "no all-reduce backward": ("copy", lambda t, group: t),
}


def _dropout_run(rank, world, case, plan_name, seed):
    """Logits of one training-mode forward with dropout 0.5, the generator seeded with ``seed``."""
    import torch.distributed as dist

    from alexnet_mp.parallel import plans
    from alexnet_mp.parallel.planned import place_plan

    torch.manual_seed(case.seed)
    net = AlexNet(case.num_classes, dropout=0.5).double()
    placed = place_plan(net, plans.get(plan_name), dist.group.WORLD, "cpu").train()
    x, _ = V.batch(case)
    if placed.plan.splits_batch:
        x = x.chunk(world)[rank]
    torch.manual_seed(seed)
    return placed(x.double()).detach()


def _cases(rank, world, case, jobs):
    from alexnet_mp.parallel import planned

    out = []
    for plan, fault in jobs:
        saved = dict(planned._EXCHANGE)
        if fault in FAULTS:
            kind, fn = FAULTS[fault]
            planned._EXCHANGE[kind] = fn
        try:
            if fault and fault.startswith("dropout"):
                seed = DROPOUT_SEED + (rank if fault == "dropout, seeds differ" else 0)
                out.append(_dropout_run(rank, world, case, plan, seed))
            else:
                out.append(V._plan_worker(rank, world, case, 0, plan))
        finally:
            planned._EXCHANGE.update(saved)
    return out


JOBS = [("one-weird-trick", None), ("megatron", None),
        ("one-weird-trick", "no gradient sum"), ("megatron", "no all-reduce"), ("megatron", "no all-reduce backward"),
        ("one-weird-trick", "dropout"), ("megatron", "dropout"), ("one-weird-trick", "dropout, seeds differ")]


@pytest.fixture(scope="module")
def results():
    """{(plan, fault): every worker's result}, and the float64 single-device reference."""
    per_rank = run_workers(_cases, 2, (CASE, JOBS), threads=1)
    x, y = V.batch(CASE)
    ref = V._tensors(V._outputs(V.reference(CASE, torch.device("cpu"), torch.float64), x.double(), y,
                                V._single_grads))
    return {job: [r[i] for r in per_rank] for i, job in enumerate(JOBS)}, ref


@pytest.mark.parametrize("plan", ["one-weird-trick", "megatron"])
def test_each_plan_is_the_single_device_function_with_exact_bytes(results, plan):
    by_job, ref = results
    report = V.plan_report(by_job[(plan, None)], CASE, ref, None, plan)
    assert report["ok"], report
    assert report["bytes_exact"] and not report["unexpected_exchanges"]
    assert max(t["rel"] for t in report["tensors"].values()) < 1e-12  # float64 rounding, far under the gate
    assert len(report["tensors"]) == 2 + 16  # logits, loss and every parameter's gradient


def test_the_bytes_are_the_plans_own():
    """Figures typed from the paper's sizes (9216 = 256x6x6 pooled conv5, 4096, 10 classes), fp64 = 8 B."""
    trick = V.analytic_bytes(CASE, "one-weird-trick", 2)
    assert trick["fc6"] == {"forward": 9216 * 1 * 1 * 8, "backward": 9216 * 8}  # 1 sample to 1 other worker
    assert trick["conv3.grad"] == {"forward": 0, "backward": (384 * 256 * 9 + 384) * 8}
    megatron = V.analytic_bytes(CASE, "megatron", 2)
    assert megatron["fc7.out"] == {"forward": 2 * 4096 * 8, "backward": 0}
    assert megatron["fc8"] == {"forward": 0, "backward": 2 * 4096 * 8}
    assert "fc7" not in megatron  # fc7 reads fc6's split outputs as they are


@pytest.mark.parametrize("plan,fault", [j for j in JOBS if j[1] in FAULTS])
def test_removing_one_exchange_fails_the_proof(results, plan, fault):
    by_job, ref = results
    report = V.plan_report(by_job[(plan, fault)], CASE, ref, None, plan)
    assert not report["ok"]
    assert report["worst"] > 1e4  # far outside the tolerance, not at its edge
    assert report["bytes_exact"]  # the bytes alone cannot see it: the Function ran, its collective did not


def _dropout_reference(seed):
    torch.manual_seed(CASE.seed)
    net = AlexNet(CASE.num_classes, dropout=0.5).double().train()
    torch.manual_seed(seed)
    return net(V.batch(CASE)[0].double()).detach()


@pytest.mark.parametrize("plan", ["one-weird-trick", "megatron"])
def test_dropout_draws_the_single_device_masks(results, plan):
    by_job, _ = results
    ref = _dropout_reference(DROPOUT_SEED)
    assert not torch.allclose(ref, _dropout_reference(DROPOUT_SEED + 1))  # masks matter at this size

    def logits(fault):
        parts = by_job[(plan, fault)]
        return torch.cat(parts) if plan == "one-weird-trick" else parts[0]

    assert V.difference(logits("dropout"), ref)["rel"] < 1e-12


def test_dropout_with_a_seed_per_worker_is_caught(results):
    """The planted fault for the test above: each worker's generator in its own state."""
    by_job, _ = results
    assert V.difference(torch.cat(by_job[("one-weird-trick", "dropout, seeds differ")]),
                        _dropout_reference(DROPOUT_SEED))["rel"] > 1e-3


def test_the_2014_scheme_on_four_workers_from_the_command_line():
    result = CliRunner().invoke(main, ["verify", "--plan", "one-weird-trick", "--workers", "4", "--batch-size", "4",
                                       "--num-classes", "20", "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.output)
    assert report["plan"] == "one-weird-trick" and report["workers"] == 4 and report["ok"]
    run = report["runs"]["processes"]
    assert len(run["devices"]) == 4 and run["bytes_exact"]
    assert run["exchanges"]["fc6"]["forward"]["analytic"] == 9216 * 1 * 3 * 8  # its 1 sample to 3 others


@pytest.mark.parametrize("args,needle", [
    (["--plan", "tensor-parallel"], "--plan 'tensor-parallel' is not accepted"),
    (["--plan", "megatron", "--workers", "4"], "exactly 2 workers"),
    (["--plan", "one-weird-trick", "--workers", "3"], "not divisible by 3"),
    (["--plan", "one-weird-trick", "--batch-size", "3"], "use a multiple of 2"),
    (["--plan", "megatron", "--one-process-only"], "--one-process-only is not accepted"),
])
def test_bad_plans_are_one_paragraph(args, needle):
    result = CliRunner().invoke(main, ["verify", *args])
    assert result.exit_code == 2 and needle in result.output, result.output
