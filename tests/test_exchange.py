"""Each exchange Function against the unsplit math, forward and backward."""

import torch
import torch.distributed as dist

from alexnet_mp.exchange import ExchangeStats, LocalExchange, ProcessGroupExchange
from alexnet_mp.spawn import run_workers


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


def test_local_exchange_forward_backward():
    full_ref, grads_ref = unsplit()
    parts, weights = parts_and_weights()
    parts = [p.requires_grad_() for p in parts]
    stats = ExchangeStats()
    fulls = LocalExchange(["cpu", "cpu"], stats).gather("conv3", parts)
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


def _worker(rank, world):
    parts, weights = parts_and_weights()
    mine = parts[rank].clone().requires_grad_()
    ex = ProcessGroupExchange(dist.group.WORLD, torch.device("cpu"))
    (full,) = ex.gather("fc6", [mine])
    (full * weights[rank]).sum().backward()
    # the output contract: the replicated copy passes 1/W of the gradient
    logits = torch.randn(2, 6, requires_grad=True)
    ex.output([logits]).sum().backward()
    return full.detach(), mine.grad, ex.stats.bytes(rank, "forward"), ex.stats.bytes(rank, "backward"), logits.grad


def test_process_group_exchange_forward_backward():
    full_ref, grads_ref = unsplit()
    for rank, (full, grad, fwd, bwd, logit_grad) in enumerate(run_workers(_worker, 2, threads=1)):
        assert fwd == bwd == {"fc6": 1200}  # a (3, 4, 5, 5) fp32 part each way
        assert torch.equal(full, full_ref)
        assert torch.equal(grad, grads_ref[rank])  # a sum of two fp32 addends: exact in any order
        assert torch.equal(logit_grad, torch.full((2, 6), 0.5))
