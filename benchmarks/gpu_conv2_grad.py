"""Which fp32 conv2 weight gradient is off on a GPU: the grouped conv or the split convs?

    python benchmarks/gpu_conv2_grad.py        # needs CUDA

Runs the single-device AlexNet (grouped conv2) and both columns in one process (two
separate 48->128 convs) in fp32 (TF32 off), and the single-device model in float64 as the
yardstick, on the same batch; prints each fp32 gradient's L2-relative error against float64.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from alexnet_mp import AlexNet  # noqa: E402
from alexnet_mp.convert import from_columns  # noqa: E402
from alexnet_mp.parallel import split_in_one_process  # noqa: E402


def grads(model, x, y):
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.double() for n, p in model.named_parameters()}


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    for batch in (8, 128):
        torch.manual_seed(0)
        ref = AlexNet(1000, dropout=0.0)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, 224, 224, generator=g)
        y = torch.randint(0, 1000, (batch,), generator=g)
        exact = grads(_load(AlexNet(1000, dropout=0.0), ref).double().to(dev), x.double().to(dev), y.to(dev))
        grouped = grads(_load(AlexNet(1000, dropout=0.0), ref).to(dev), x.to(dev), y.to(dev))
        split = split_in_one_process([dev, dev], num_classes=1000, dropout=0.0)
        split.load_reference_state(ref.state_dict())
        F.cross_entropy(split(x.to(dev)), y.to(dev)).backward()
        split_g = from_columns([{n: p.grad.double() for n, p in c.named_parameters()} for c in split.columns.values()])
        print(f"batch {batch}: L2-relative error against float64")
        for name in exact:
            e = exact[name].cpu()
            rg = ((grouped[name].cpu() - e).norm() / e.norm()).item()
            rs = ((split_g[name].cpu() - e).norm() / e.norm()).item()
            print(f"  {name:<14} grouped (single device) {rg:9.2e}   split columns {rs:9.2e}")


def _load(model, ref):
    model.load_state_dict(ref.state_dict())
    return model


if __name__ == "__main__":
    main()
