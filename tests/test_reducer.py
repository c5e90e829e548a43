"""The data-parallel gradient reducer: averages exactly, buckets in backward order, and
starts buckets during backward when asked to (2 gloo processes as the dp group)."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexnet_mp.spawn import run_workers
from alexnet_mp.train.distributed import GradientReducer


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 10)).double()


def _worker(rank, world, bucket_mb):
    model = _model()
    reducer = GradientReducer(model.parameters(), dist.group.WORLD, world, bucket_mb=bucket_mb or 25.0,
                              overlap=bucket_mb > 0)
    launched_in_backward, worst = [], 0.0
    for step in range(2):
        g = torch.Generator().manual_seed(100 * step + rank)
        x, y = torch.randn(8, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        local = [p.grad.clone() for p in model.parameters()]
        launched_in_backward.append(sum(w is not None for w in reducer._works))
        nbytes = reducer.finish()
        gathered = [[torch.empty_like(t) for _ in range(world)] for t in local]
        for t, out in zip(local, gathered):
            dist.all_gather(out, t)
        # the error in units of the largest averaged gradient, over every step
        for p, out in zip(model.parameters(), gathered):
            mean = torch.stack(out).mean(0)
            worst = max(worst, ((p.grad - mean).abs().max() / mean.abs().max()).item())
    return {"buckets": [[tuple(p.shape) for p in b] for b in reducer.buckets], "worst": worst, "bytes": nbytes,
            "launched_in_backward": launched_in_backward}


@pytest.mark.parametrize("bucket_mb", [0.0, 0.02, 25.0])
def test_reducer_averages_over_the_replicas(bucket_mb):
    params = sum(p.numel() for p in _model().parameters())
    for r in run_workers(_worker, 2, (bucket_mb,), threads=1):
        assert r["bytes"] == params * 8
        flat = [s for b in r["buckets"] for s in b]
        assert flat == [tuple(p.shape) for p in reversed(list(_model().parameters()))]  # backward order
        if bucket_mb == 0.0:  # overlap off: one flat bucket, reduced after backward
            assert len(r["buckets"]) == 1 and r["launched_in_backward"] == [0, 0]
        elif bucket_mb == 0.02:  # ~20 KiB: several buckets, all started before backward returned
            assert len(r["buckets"]) > 2 and r["launched_in_backward"] == [len(r["buckets"])] * 2
        else:
            assert len(r["buckets"]) == 1 and r["launched_in_backward"] == [1, 1]
        # float64: the mean of two replicas is one rounded sum, halved exactly, in any order: 2^-53 of the largest
        assert r["worst"] <= 2.0**-53


def test_reducer_is_a_no_op_without_replicas():
    model = _model()
    reducer = GradientReducer(model.parameters(), None, 1)
    model(torch.randn(2, 32, dtype=torch.float64)).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    assert reducer.finish() == 0
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))
