"""Hybrid data x model parallelism on 4 gloo processes: a ("dp", "mp") = (2, 2) mesh,
with the exchanges overlapped with compute, gradients averaged by DDP or by the bucketed
reducer."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from alexnet_mp.spawn import run_workers

from test_train import config, dataset, single_device_losses  # noqa: F401  (fixture)

STEPS = 4


def _worker(rank, world, cfg):
    import alexnet_mp.exchange as exchange
    from alexnet_mp.train.trainer import Trainer

    calls = []

    def recording(name, fn):
        def wrapper(*args, group=None, **kwargs):
            ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else tuple(range(world))
            tensor = args[0] if args else kwargs.get("tensor")
            calls.append((name, ranks, tensor.numel()))
            return fn(*args, group=group, **kwargs)
        return wrapper

    exchange.all_gather_dim0 = recording("all_gather", exchange.all_gather_dim0)
    exchange._reduce_scatter = recording("reduce_scatter", exchange._reduce_scatter)
    dist.all_reduce = recording("all_reduce", dist.all_reduce)
    trainer = Trainer(cfg)
    try:
        trainer.train()
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        return trainer.losses, weights, calls, (trainer.layout.dp_rank, trainer.layout.dp_size)
    finally:
        trainer.close()


@pytest.mark.parametrize("grad_sync", ["ddp", "buckets"])
def test_hybrid_training_equals_one_device_on_the_concatenated_batch(dataset, tmp_path, grad_sync):  # noqa: F811
    from alexnet_mp.convert import from_columns

    cfg = config(dataset, tmp_path, **{"training.max_steps": STEPS, "training.batch_size": 2,
                                        "checkpoint.enable": False, "optimizer.lr": 0.001, "model.init": "kaiming",
                                        "data.column_feed": "duplicate", "parallelism.overlap": True,
                                        "parallelism.grad_sync": grad_sync})
    results = run_workers(_worker, 4, (cfg,), threads=1)
    assert [r[3] for r in results] == [(0, 2), (0, 2), (1, 2), (1, 2)]  # ranks 0,1 = replica 0; 2,3 = replica 1

    # the single-device model on the concatenated batch (both replicas' 2 images = 4)
    reference, model = single_device_losses(cfg, STEPS, batch_size=4)
    for step in range(STEPS):
        replicas = (results[0][0][step] + results[2][0][step]) / 2  # each replica's loss is its half's mean
        assert abs(replicas - reference[step]) <= 1e-4 * max(1.0, reference[step]), (step, replicas, reference[step])
    merged = from_columns([{k.split(".", 2)[2]: v for k, v in results[c][1].items()} for c in (0, 1)])
    # All weights together agree to fp32 noise; per tensor, a bias that starts at 0 is all
    # update and carries ~2e-4 relative summation noise after 4 steps (measured).
    diff = torch.cat([(merged[n] - w.detach()).flatten() for n, w in model.named_parameters()])
    whole = torch.cat([w.detach().flatten() for w in model.parameters()])
    assert diff.norm() / whole.norm() <= 1e-5
    for name, w in model.named_parameters():
        assert (merged[name] - w.detach()).norm() / w.detach().norm() <= 1e-3, name
    # replicas of a column hold identical weights after the gradient all-reduce
    for k in results[0][1]:
        assert torch.equal(results[0][1][k], results[2][1][k])

    # each mesh sub-group carries only its own traffic
    for rank, (_, _, calls, _) in enumerate(results):
        mp = (rank - rank % 2, rank - rank % 2 + 1)
        dp = (rank % 2, rank % 2 + 2)
        column_params = sum(v.numel() for v in results[rank][1].values())
        for name, ranks, numel in calls:
            if name in ("all_gather", "reduce_scatter"):
                assert ranks == mp, (name, ranks)  # exchanges stay within the pair
            elif ranks != dp:
                assert ranks == (0, 1, 2, 3) and numel == 2  # the stop / NaN agreement flags
        buckets = [numel for name, ranks, numel in calls if name == "all_reduce" and ranks == dp and numel != 3]
        if grad_sync == "buckets":
            # gradients are averaged over the column's replicas only, in buckets (default 25 MiB)
            # started during backward: several per step, adding up to the column's parameters
            assert sum(buckets) == column_params * STEPS and len(buckets) % STEPS == 0 and len(buckets) > STEPS
        else:
            # DDP's all-reduces run in C++, out of this recorder's sight; that they averaged the
            # replicas is shown by the equal weights above
            assert buckets == []
        evals = [numel for name, ranks, numel in calls if name == "all_reduce" and ranks == dp and numel == 3]
        assert evals  # evaluation counts summed over replicas
        assert sum(1 for c in calls if c[0] == "reduce_scatter") == 5 * STEPS
