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


def _worker(rank, world):
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
def test_process_group_gathers_forward_backward():
    full_ref, grads_ref = unsplit()
    results = run_workers(_worker, 2, threads=1)
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
