"""A training step captured as one CUDA graph equals the eager step."""

import pytest
import torch
import torch.nn.functional as F

import sys
from pathlib import Path

from alexnet_mp import AlexNet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from graphs import GraphedStep  # noqa: E402  (benchmarks/graphs.py: the step benchmark's CUDA graph)


def test_graphed_step_refuses_cpu_with_a_clear_error():
    model = AlexNet(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(RuntimeError, match="needs the model and the batch on a CUDA device"):
        GraphedStep(model, opt, F.cross_entropy, torch.randn(2, 3, 224, 224), torch.zeros(2, dtype=torch.long))


FACTOR = 4.0
"""As ``alexnet_mp.commands.verify.FLOAT32_FACTOR``: the graphed step's error against float64 may be this many
times the eager fp32 step's own error (the same fp32 rounding, possibly other kernels)."""
FLOOR = 2.0**-24 * 64
"""The least relative error allowed anywhere: 64 fp32 ulps."""


def graphed_vs_eager(steps: int = 4, device: str = "cuda", make_step=GraphedStep) -> dict:
    """fp32 (TF32 off), dropout off, He init, SGD with momentum and weight decay; the learning
    rate changes before the last step (a re-capture). The graphed fp32 model, the eager fp32 model
    and the eager float64 model from the same weights and batches: every loss, and each
    parameter's relative distance from the float64 model's, for both fp32 models."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        # the reference: float64 throughout, so its LRN is the eager one ("fast" would pick the
        # Triton kernel on CUDA, whose arithmetic is fp32 whatever the tensor's dtype)
        models = [AlexNet(10, dropout=0.0, init="kaiming", lrn_impl="eager" if i == 1 else "fast").to(device)
                  for i in range(3)]
        for m in models[1:]:
            m.load_state_dict(models[0].state_dict())
        models[1].double()
        opts = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4) for m in models]
        batches = [(torch.randn(8, 3, 224, 224, device=device), torch.randint(0, 10, (8,), device=device))
                   for _ in range(steps)]
        graphed = make_step(models[2], opts[2], F.cross_entropy, *batches[0])
        losses = []
        for i, (x, y) in enumerate(batches):
            if i == steps - 1:
                for o in opts:
                    o.param_groups[0]["lr"] = 5e-4
            row = []
            for m, o in zip(models[:2], opts[:2]):
                loss = F.cross_entropy(m(x.to(next(m.parameters()).dtype)), y)
                o.zero_grad(set_to_none=True)
                loss.backward()
                o.step()
                row.append(loss.item())
            row.append(graphed(x, y).item())
            losses.append(row)

        def rel(a, exact):
            return {n: ((p.detach().double() - q.detach()).norm() / q.detach().norm()).item()
                    for (n, p), q in zip(a.named_parameters(), exact.parameters())}

        return {"losses": losses, "graphed": rel(models[2], models[1]), "eager": rel(models[0], models[1]),
                "captures": graphed.captures}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def judge(r: dict) -> None:
    """The graphed step within FACTOR x the eager fp32 step's own error against float64."""
    for eager, exact, graphed in r["losses"]:
        assert abs(graphed - exact) <= FACTOR * max(abs(eager - exact), FLOOR * max(1.0, abs(exact))), r["losses"]
    for name, err in r["graphed"].items():
        assert err <= FACTOR * max(r["eager"][name], FLOOR), (name, err, r["eager"][name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_step_equals_eager_step():
    r = graphed_vs_eager()
    assert r["captures"] == 2, r  # the learning-rate change re-captured the step
    judge(r)
