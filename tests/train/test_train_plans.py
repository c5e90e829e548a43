"""Training under ``[parallelism] plan``: the 2014 scheme and the Megatron pairing on two gloo
workers, a few steps each, equal the single-device run on the same batches (fp32 judged against
float64, relative to the single-device fp32 run's own error)."""

from __future__ import annotations

import pytest
import torch

from alexnet_mp.parallel.planned import assemble
from alexnet_mp.parallel.spawn import run_workers

from train_fixtures import config, dataset, single_device_losses, within_fp32_noise  # noqa: F401  (fixture)

pytestmark = pytest.mark.multiprocess

STEPS = 3
FACTOR = 4.0
"""As ``alexnet_mp.commands.verify.FLOAT32_FACTOR``: the same rounding in another summation order."""
WEIGHT_FLOOR = 2.0**-24 * 64


def _config(dataset, tmp_path, plan, batch_size):  # noqa: F811
    return config(dataset, tmp_path, **{"training.max_steps": STEPS, "training.batch_size": batch_size,
                                         "checkpoint.enable": False, "optimizer.lr": 0.001, "model.init": "kaiming",
                                         "data.column_feed": "duplicate", "parallelism.plan": plan,
                                         "job.name": plan})


def _worker(rank, world, cfgs):
    from alexnet_mp.train.trainer import Trainer

    out = []
    for cfg in cfgs:
        trainer = Trainer(cfg)
        try:
            trainer.train()
            parts = [(s.name, s.offsets, s.param.detach().clone()) for s in trainer.model.shards() if s.writer]
            out.append((trainer.losses, parts, (trainer.layout.dp_rank, trainer.layout.dp_size)))
        finally:
            trainer.close()
    return out


@pytest.fixture(scope="module")
def references(dataset, tmp_path_factory):  # noqa: F811
    cfg = _config(dataset, tmp_path_factory.mktemp("reference"), "paper", 4)
    return (single_device_losses(cfg, STEPS, batch_size=4),
            single_device_losses(cfg, STEPS, batch_size=4, dtype=torch.float64))


def test_training_under_each_plan_equals_one_device(dataset, tmp_path, references):  # noqa: F811
    # the 2014 scheme: 2 images on each worker (4 in all); Megatron: both workers on the same 4
    cfgs = (_config(dataset, tmp_path, "one-weird-trick", 2), _config(dataset, tmp_path, "megatron", 4))
    results = run_workers(_worker, 2, (cfgs,), threads=1)
    (fp32_losses, fp32_model), (exact_losses, exact_model) = references
    trick, megatron = ([r[i] for r in results] for i in range(2))
    assert [r[2] for r in trick] == [(0, 2), (1, 2)]  # every worker its own part of the batch
    assert [r[2] for r in megatron] == [(0, 1), (0, 1)]  # both workers the same batch
    within_fp32_noise([(trick[0][0][s] + trick[1][0][s]) / 2 for s in range(STEPS)], fp32_losses, exact_losses,
                      FACTOR)
    within_fp32_noise(megatron[0][0], fp32_losses, exact_losses, FACTOR)
    assert megatron[0][0] == megatron[1][0]
    fp32 = dict(fp32_model.named_parameters())
    for plan in (trick, megatron):
        weights = assemble([p for r in plan for p in r[1]], 2)
        for name, exact in exact_model.named_parameters():
            def rel(w):
                return ((w.detach().double() - exact.detach()).norm() / exact.detach().norm()).item()

            assert rel(weights[name]) <= FACTOR * max(rel(fp32[name]), WEIGHT_FLOOR), name
    _export_and_resume_under_the_paper(assemble([p for r in trick for p in r[1]], 2), tmp_path)


def _export_and_resume_under_the_paper(weights, tmp_path):
    """The 2014 run's writer shards, placed at their offsets, are one single-device state dict: it loads
    with weights_only=True into AlexNet and into the paper's two columns, which compute the same logits."""
    from alexnet_mp import AlexNet
    from alexnet_mp.parallel import place_columns

    torch.save({k: v.float() for k, v in weights.items()}, tmp_path / "export.pt")
    state = torch.load(tmp_path / "export.pt", weights_only=True)
    net = AlexNet(2, dropout=0.0)
    net.load_state_dict(state)
    columns = place_columns(AlexNet(2, dropout=0.0), ["cpu", "cpu"])
    columns.load_reference_state(state)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert torch.equal(columns.whole()["fc7.weight"], state["fc7.weight"])
    assert torch.allclose(columns(x), net(x), rtol=1e-5, atol=1e-6)


def test_a_plan_in_one_process_is_refused_by_name(dataset, tmp_path):  # noqa: F811
    from alexnet_mp.errors import ConfigError
    from alexnet_mp.train.trainer import Trainer

    with pytest.raises(ConfigError, match="plan = 'megatron' runs on worker processes: launch it with torchrun"):
        Trainer(_config(dataset, tmp_path, "megatron", 4))


def _across_plans(rank, world, cfgs):
    """Train under the first config, then resume under each next one (one run folder): every
    rank's writer shards after each, and the steps each trained."""
    from alexnet_mp.train.trainer import Trainer

    out = []
    for cfg in cfgs:
        trainer = Trainer(cfg)
        try:
            trainer.train()
            out.append(([(s.name, s.offsets, s.param.detach().clone()) for s in trainer.model.shards() if s.writer],
                        len(trainer.losses)))
        finally:
            trainer.close()
    return out


def test_a_2014_run_resumes_under_the_paper_split_and_back_and_exports(dataset, tmp_path):  # noqa: F811
    from click.testing import CliRunner

    from alexnet_mp import AlexNet
    from alexnet_mp.commands import main
    from alexnet_mp.train import checkpoint as ckpt

    def cfg(plan, batch_size, steps):
        return config(dataset, tmp_path, **{"training.max_steps": steps, "training.batch_size": batch_size,
                                            "optimizer.lr": 0.001, "model.init": "kaiming", "job.name": "across",
                                            "data.column_feed": "duplicate", "parallelism.plan": plan})

    runs = run_workers(_across_plans, 2, ((cfg("one-weird-trick", 2, 2), cfg("paper", 4, 2),
                                           cfg("one-weird-trick", 2, 3)),), threads=1)
    assert [[steps for _, steps in r] for r in runs] == [[2, 0, 1]] * 2  # resumed at step 2 both times
    # (one global batch of 4 throughout: the 2014 workers 2 each, the paper's columns 4 both)
    run = tmp_path / "runs" / "across"
    saved, _ = ckpt.reference_state(ckpt.checkpoint_dir(run) / "step-0000002")
    trick, paper = (assemble([p for r in runs for p in r[i][0]], 2) for i in range(2))
    for k, v in saved.items():  # the 2014 run's shards, saved and read back as the paper's columns: exact
        assert torch.equal(trick[k], v) and torch.equal(paper[k], v), k
    assert ckpt.read_meta(ckpt.latest(run))["placement"] == "plan-one-weird-trick"
    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    AlexNet(2).load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
