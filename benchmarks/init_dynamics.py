"""Why the quick start uses He init: the first steps of the paper's init vs kaiming.

    alexnet-mp make-dataset /tmp/ds && python benchmarks/init_dynamics.py --data /tmp/ds

Trains the single-device AlexNet (dropout off) on 4 fixed batches of 32 generated images
for 40 steps and prints the loss and the fraction of active fc6/fc7 units every 4 steps,
for each (init, lr) pair. Not a speed benchmark: it records the training dynamics quoted in
docs/training.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from alexnet_mp import AlexNet  # noqa: E402
from alexnet_mp.data import DataConfig, build_train_loader, dataset_info  # noqa: E402


def run(batches, init: str, lr: float, steps: int, classes: int) -> list[tuple[int, float, float, float]]:
    torch.manual_seed(0)
    model = AlexNet(classes, dropout=0.0, init=init)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    active = {}
    for name in ("fc6", "fc7"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, n=name: active.__setitem__(n, (out > 0).float().mean().item()))
    rows = []
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 4 == 0 or step == steps - 1:
            rows.append((step, loss.item(), active["fc6"], active["fc7"]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--runs", default="paper:0.01,paper:0.001,kaiming:0.01", help="init:lr pairs")
    a = p.parse_args()
    cfg = DataConfig(path=a.data, loader="torchvision", threads=0)
    batches = []
    for x, y in build_train_loader(cfg, batch_size=32, seed=0, epoch=0):
        batches.append((x, y))
        if len(batches) == 4:
            break
    classes = dataset_info(a.data).num_classes
    classes += classes % 2  # fc8 splits into two columns
    for item in a.runs.split(","):
        init, lr = item.split(":")
        print(f"init={init} lr={lr}: step loss fc6-active fc7-active")
        for step, loss, f6, f7 in run(batches, init, float(lr), a.steps, classes):
            print(f"  {step:3d} {loss:8.3f} {f6:6.3f} {f7:6.3f}", flush=True)


if __name__ == "__main__":
    main()
