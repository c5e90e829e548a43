"""Hybrid data x model parallelism on 4 gloo processes: a ("dp", "mp") = (2, 2) mesh, with the
exchanges overlapped with compute and each column's gradients averaged over its replicas by DDP."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from alexnet_mp.parallel.spawn import run_workers

from train_fixtures import config, dataset, single_device_losses, within_fp32_noise  # noqa: F401  (fixture)

STEPS = 4
FACTOR = 4.0
"""fp32 gate, as ``alexnet_mp.commands.verify.FLOAT32_FACTOR``: the hybrid's error against float64 may be this
many times the single-device fp32 run's own error (the same rounding in another summation order)."""
WEIGHT_FLOOR = 2.0**-24 * 64
"""The least relative weight error allowed: 64 fp32 ulps (a tensor the single-device run happens to
round almost exactly still carries the hybrid's own rounding)."""


def _config(dataset, tmp_path):  # noqa: F811
    return config(dataset, tmp_path, **{"training.max_steps": STEPS, "training.batch_size": 2,
                                         "checkpoint.enable": False, "optimizer.lr": 0.001, "model.init": "kaiming",
                                         "data.column_feed": "duplicate", "parallelism.overlap": True})


@pytest.fixture(scope="module")
def references(dataset, tmp_path_factory):  # noqa: F811
    """The single-device model on the concatenated batch (both replicas' 2 images = 4), in fp32 and
    float64: (losses, model) each."""
    cfg = _config(dataset, tmp_path_factory.mktemp("reference"))
    return (single_device_losses(cfg, STEPS, batch_size=4),
            single_device_losses(cfg, STEPS, batch_size=4, dtype=torch.float64))


def _worker(rank, world, cfg):
    from alexnet_mp.parallel import mappings, overlap
    from alexnet_mp.train.trainer import Trainer

    calls = []

    def recording(name, fn):
        def wrapper(*args, group=None, **kwargs):
            ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else tuple(range(world))
            tensor = args[0] if args else kwargs.get("tensor")
            calls.append((name, ranks, tensor.numel()))
            return fn(*args, group=group, **kwargs)
        return wrapper

    for module in (mappings, overlap):  # the plain gathers and the overlapped layers
        module.all_gather_dim0 = recording("all_gather", module.all_gather_dim0)
        module.reduce_scatter_dim0 = recording("reduce_scatter", module.reduce_scatter_dim0)
    dist.all_reduce = recording("all_reduce", dist.all_reduce)
    trainer = Trainer(cfg)
    calls.clear()  # building the trainer splits the dataset's index scan over the world: training's traffic only
    try:
        trainer.train()
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        return trainer.losses, weights, calls, (trainer.layout.dp_rank, trainer.layout.dp_size)
    finally:
        trainer.close()


@pytest.mark.multiprocess
def test_hybrid_training_equals_one_device_on_the_concatenated_batch(dataset, tmp_path, references):  # noqa: F811
    from alexnet_mp.parallel.columns import merge_columns

    results = run_workers(_worker, 4, (_config(dataset, tmp_path),), threads=1)

    # --- exact checks first: the mesh, the replicas, the traffic ---
    assert [r[3] for r in results] == [(0, 2), (0, 2), (1, 2), (1, 2)]  # ranks 0,1 = replica 0; 2,3 = replica 1
    assert all(len(r[0]) == STEPS for r in results)
    # replicas of a column hold identical weights after the gradient all-reduce
    for column in (0, 1):
        for k in results[column][1]:
            assert torch.equal(results[column][1][k], results[column + 2][1][k]), (column, k)
    # each mesh sub-group carries only its own traffic
    for rank, (_, _, calls, _) in enumerate(results):
        mp = (rank - rank % 2, rank - rank % 2 + 1)
        dp = (rank % 2, rank % 2 + 2)
        column_params = sum(v.numel() for v in results[rank][1].values())
        for name, ranks, numel in calls:
            if name in ("all_gather", "reduce_scatter"):
                assert ranks == mp, (name, ranks)  # exchanges stay within the pair
            elif ranks != dp:
                # over the whole world only the stop and NaN flags (one number each) and the losses
                # read at a flush (one per step since the last read), never a gradient
                assert ranks == (0, 1, 2, 3) and numel <= STEPS, (name, ranks, numel)
        # DDP's all-reduces run in C++, out of this recorder's sight; that they averaged the
        # replicas is shown by the equal weights above and the single-device match below
        assert [numel for name, ranks, numel in calls if name == "all_reduce" and ranks == dp and numel != 3] == []
        assert column_params == 30_482_612 - (1000 - 2) // 2 * 4097  # one column, fc8 sized for 2 classes
        evals = [numel for name, ranks, numel in calls if name == "all_reduce" and ranks == dp and numel == 3]
        assert evals  # evaluation counts summed over replicas
        assert sum(1 for c in calls if c[0] == "reduce_scatter") == 5 * STEPS

    # --- fp32 against float64, relative to the single-device fp32 run's own error ---
    (fp32_losses, fp32_model), (exact_losses, exact_model) = references
    # each replica's loss is its half's mean; the two halves' average is the whole batch's
    within_fp32_noise([(results[0][0][step] + results[2][0][step]) / 2 for step in range(STEPS)],
                      fp32_losses, exact_losses, FACTOR)
    merged = {k.split(".", 1)[1]: merge_columns([results[c][1][k] for c in (0, 1)]) for k in results[0][1]}
    fp32 = dict(fp32_model.named_parameters())
    for name, exact in exact_model.named_parameters():
        exact = exact.detach()

        def rel(w):
            return ((w.detach().double() - exact).norm() / exact.norm()).item()

        allowed = FACTOR * max(rel(fp32[name]), WEIGHT_FLOOR)
        assert rel(merged[name]) <= allowed, (name, rel(merged[name]), rel(fp32[name]))
