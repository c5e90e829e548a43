"""A training step captured as one CUDA graph equals the eager step."""

import pytest
import torch
import torch.nn.functional as F

from alexnet_mp import AlexNet
from alexnet_mp.graphs import GraphedStep


def test_graphed_step_refuses_cpu_with_a_clear_error():
    model = AlexNet(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(RuntimeError, match="needs the model and the batch on a CUDA device"):
        GraphedStep(model, opt, F.cross_entropy, torch.randn(2, 3, 224, 224), torch.zeros(2, dtype=torch.long))


def graphed_vs_eager(steps: int = 4) -> dict:
    """fp32 (TF32 off), dropout off, He init, SGD with momentum and weight decay; the learning
    rate changes before the last step (a re-capture). Returns losses and the worst weight
    difference, with the difference between two eager runs as the noise floor."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        models = [AlexNet(10, dropout=0.0, init="kaiming").cuda() for _ in range(3)]
        for m in models[1:]:
            m.load_state_dict(models[0].state_dict())
        opts = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4) for m in models]
        batches = [(torch.randn(8, 3, 224, 224, device="cuda"), torch.randint(0, 10, (8,), device="cuda"))
                   for _ in range(steps)]
        graphed = GraphedStep(models[2], opts[2], F.cross_entropy, *batches[0])
        losses = []
        for i, (x, y) in enumerate(batches):
            if i == steps - 1:
                for o in opts:
                    o.param_groups[0]["lr"] = 5e-4
            row = []
            for m, o in zip(models[:2], opts[:2]):
                loss = F.cross_entropy(m(x), y)
                o.zero_grad(set_to_none=True)
                loss.backward()
                o.step()
                row.append(loss.item())
            row.append(graphed(x, y).item())
            losses.append(row)

        def worst(a, b):
            return max(((p - q).norm() / p.norm()).item() for p, q in zip(a.parameters(), b.parameters()))

        return {"losses": losses, "graphed": worst(models[0], models[2]), "eager_noise": worst(models[0], models[1]),
                "captures": graphed.captures}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_step_equals_eager_step():
    r = graphed_vs_eager()
    assert r["captures"] == 2, r  # the learning-rate change re-captured the step
    for eager, _, graphed in r["losses"]:
        assert graphed == pytest.approx(eager, rel=1e-4), r
    assert r["graphed"] < max(1e-5, 10 * r["eager_noise"]), r
