"""Each exchange against the unsplit math, forward and backward, and what it records."""

import pytest
import torch
import torch.distributed as dist

from alexnet_mp.parallel import ExchangeStats, gather_from_columns, gather_logits
from alexnet_mp.parallel.mappings import gather_on_devices, mean_of_copies
from alexnet_mp.parallel.spawn import run_workers
from alexnet_mp.parallel.stats import record_forward, watch_backward


def parts_and_weights():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(3, 4, 5, 5, generator=g) for _ in range(2)]
    weights = [torch.randn(3, 8, 5, 5, generator=g) for _ in range(2)]  # each column's use of the whole
    return parts, weights


def unsplit():
    """The math the exchange must reproduce: every column consumes cat(parts)."""
    parts, weights = parts_and_weights()
    parts = [p.requires_grad_() for p in parts]
    full = torch.cat(parts, dim=1)
    loss = sum((full * w).sum() for w in weights)
    loss.backward()
    return full.detach(), [p.grad for p in parts]


def test_gather_on_devices_forward_backward_and_its_record():
    full_ref, grads_ref = unsplit()
    parts, weights = parts_and_weights()
    parts = [p.requires_grad_() for p in parts]
    stats = ExchangeStats()
    devices = [torch.device("cpu")] * 2
    fulls = record_forward(stats, [0, 1], "conv3", parts, lambda: gather_on_devices(parts, devices), 2)
    watch_backward(stats, [0, 1], "conv3", parts, fulls, 2)
    sum((f * w).sum() for f, w in zip(fulls, weights)).backward()
    # each column sends its (3, 4, 5, 5) fp32 part forward and the other's slice of its gradient back
    for column in (0, 1):
        for direction in ("forward", "backward"):
            assert stats.bytes(column, direction) == {"conv3": 1200}, (column, direction)
    for f in fulls:
        assert torch.equal(f, full_ref)
    # Each part's gradient is the sum of the two columns' partial gradients: two fp32 addends,
    # and fp32 addition is commutative, so the exchange must give the reference's bits exactly.
    for p, g in zip(parts, grads_ref):
        assert torch.equal(p.grad, g)


def test_the_mean_of_identical_copies_is_exact_and_halves_each_gradient():
    logits = torch.randn(2, 6)
    copies = [logits.clone().requires_grad_() for _ in range(2)]
    out = mean_of_copies(copies)
    assert torch.equal(out, logits)
    out.sum().backward()
    assert all(torch.equal(c.grad, torch.full((2, 6), 0.5)) for c in copies)


def _worker(rank, world, staged=False):
    if staged:  # as with CUDA tensors on gloo: every all-gather and reduce-scatter through host copies
        from alexnet_mp.parallel import mappings

        mappings.needs_host_staging = lambda t, group: True
    parts, weights = parts_and_weights()
    mine = parts[rank].clone().requires_grad_()
    full = gather_from_columns(mine, dist.group.WORLD)
    (full * weights[rank]).sum().backward()
    # the logits: every column gets all of them, and each copy passes 1/W of the gradient
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(rank)).requires_grad_()
    everything = gather_logits(logits, dist.group.WORLD)
    everything.sum().backward()
    return full.detach(), mine.grad, everything.detach(), logits.grad


@pytest.mark.multiprocess
@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged-through-host"])
def test_process_group_gathers_forward_backward(staged):
    full_ref, grads_ref = unsplit()
    results = run_workers(_worker, 2, (staged,), threads=1)
    all_logits = torch.cat([torch.randn(2, 3, generator=torch.Generator().manual_seed(r)) for r in (0, 1)], dim=1)
    for rank, (full, grad, logits, logit_grad) in enumerate(results):
        assert torch.equal(full, full_ref)
        assert torch.equal(grad, grads_ref[rank])  # a sum of two fp32 addends: exact in any order
        assert torch.equal(logits, all_logits)
        # both columns' losses reach each column's logits, each weighted 1/2: the gradient of one loss
        assert torch.equal(logit_grad, torch.ones(2, 3))


def test_a_group_of_one_is_the_identity():
    x = torch.randn(2, 3)
    assert gather_from_columns(x, None) is x and gather_logits(x, None) is x


def _async_worker(rank, world):
    from alexnet_mp.parallel import mappings

    mappings.needs_host_staging = lambda t, group: True
    part = torch.full((1, 2), float(rank))
    out = torch.empty(2, 2)
    work = mappings.all_gather_dim0(out, part, group=dist.group.WORLD, async_op=True)
    work.wait()  # the overlap path's handle; staged, it is already done
    grad = torch.empty(1, 2)
    mappings.reduce_scatter_dim0(grad, torch.ones(2, 2) * (rank + 1), group=dist.group.WORLD, async_op=True).wait()
    return out, grad


@pytest.mark.multiprocess
def test_staged_collectives_keep_the_async_handle():
    for out, grad in run_workers(_async_worker, 2, threads=1):
        assert torch.equal(out, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        assert torch.equal(grad, torch.full((1, 2), 3.0))  # 1 + 2


def test_host_staging_only_for_device_tensors_on_gloo(monkeypatch):
    from alexnet_mp.parallel import mappings

    backend = {"name": "gloo"}
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend["name"])
    meta = torch.empty(2, device="meta")  # stands in for a CUDA tensor: any device that is not the CPU
    assert mappings.needs_host_staging(meta, None) and not mappings.needs_host_staging(torch.empty(2), None)
    backend["name"] = "nccl"
    assert not mappings.needs_host_staging(meta, None)


def test_ranks_take_gpus_round_robin_and_share_one_over_gloo():
    from alexnet_mp.parallel.devices import rank_device

    cpu = rank_device(1, 2, 0)
    assert (cpu.device, cpu.backend, cpu.sharing) == (torch.device("cpu"), "gloo", 0)
    own = [rank_device(r, 2, 2) for r in range(2)]
    assert [d.device.index for d in own] == [0, 1] and {d.backend for d in own} == {"nccl"}
    shared = [rank_device(r, 2, 1) for r in range(2)]  # the two columns on one GPU: NCCL refuses that
    assert [str(d.device) for d in shared] == ["cuda:0", "cuda:0"] and {d.backend for d in shared} == {"gloo"}
    assert shared[0].sharing == 2 and "shared by 2 ranks" in shared[0].describe()
    four = [rank_device(r, 4, 2) for r in range(4)]  # two replicas of the pair on two GPUs
    assert [d.device.index for d in four] == [0, 1, 0, 1] and all(d.sharing == 2 for d in four)
    three = [rank_device(r, 3, 2) for r in range(3)]
    assert [d.sharing for d in three] == [2, 1, 2]
    with pytest.raises(ValueError, match="local rank 2"):
        rank_device(2, 2, 1)
