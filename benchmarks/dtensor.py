"""Should the columns' halves be DTensors? Two measurements, on two gloo processes (one column each).

    python benchmarks/dtensor.py --rounds 5

1. **Checkpoints**: saving and loading one column's weights and momentum buffers through DCP,
   (a) as plain tensors under column keys (``column1.conv1.weight``, what alexnet-mp wrote
   before) and (b) as DTensor shards (``Shard(0)`` on the model-parallel mesh) under the whole
   network's keys (``conv1.weight``, what it writes now: one logical checkpoint whatever the
   placement, resharded on load).
2. **Compute**: fc6 (9216 -> 4096 whole, 2048 per column) forward and backward at batch 16, with
   its input gathered from the two columns, (a) as alexnet-mp runs it — the all-gather /
   reduce-scatter Function, then a plain ``F.linear`` on the local weight — and (b) as
   ``torch.distributed.tensor.parallel.ColwiseParallel`` runs it, the weight a DTensor and the
   input redistributed from ``Shard(1)`` to ``Replicate()`` by DTensor.

Medians over rounds, and b / a per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _checkpoint_worker(rank, world, folder, rounds):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    from alexnet_mp.model import AlexNet
    from alexnet_mp.parallel import take_column

    torch.manual_seed(0)
    column = take_column(AlexNet(1000), rank)
    tensors = {n: p.detach() for n, p in column.named_parameters()}
    tensors |= {f"{n}.momentum_buffer": torch.randn_like(p) for n, p in column.named_parameters()}
    mesh = DeviceMesh.from_group(dist.group.WORLD, "cpu")
    layouts = {
        "plain column keys": lambda: {f"column{rank}.{n}": t for n, t in tensors.items()},
        "DTensor whole-network keys": lambda: {n: DTensor.from_local(t, mesh, [Shard(0)]) for n, t in tensors.items()},
    }
    out = {name: {"save": [], "load": []} for name in layouts}
    for r in range(rounds):
        for name, make in (list(layouts.items()) if r % 2 == 0 else list(layouts.items())[::-1]):
            path = str(Path(folder) / f"{name.replace(' ', '_')}-{r}")
            state = make()
            dist.barrier()
            t = time.perf_counter()
            dcp.save(state, checkpoint_id=path)
            dist.barrier()
            out[name]["save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            dcp.load(state, checkpoint_id=path)
            dist.barrier()
            out[name]["load"].append(time.perf_counter() - t)
    return out


def _compute_worker(rank, world, rounds, steps, batch):
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    from alexnet_mp.parallel import gather_from_columns

    torch.manual_seed(0)
    whole = torch.nn.Linear(9216, 4096)
    local = torch.nn.Linear(9216, 2048)
    with torch.no_grad():
        local.weight.copy_(whole.weight.chunk(2)[rank])
        local.bias.copy_(whole.bias.chunk(2)[rank])
    mesh = DeviceMesh.from_group(dist.group.WORLD, "cpu")
    dtensor = parallelize_module(whole, mesh, ColwiseParallel(input_layouts=Shard(1), use_local_output=True))
    own = torch.randn(batch, 4608, generator=torch.Generator().manual_seed(rank))

    def ours():
        x = own.clone().requires_grad_()
        F.linear(gather_from_columns(x, dist.group.WORLD), local.weight, local.bias).sum().backward()

    def theirs():
        x = own.clone().requires_grad_()
        dtensor(x).sum().backward()

    out = {"alexnet-mp mapping + local weight": [], "DTensor ColwiseParallel": []}
    fns = dict(zip(out, (ours, theirs)))
    for r in range(rounds):
        for name in (list(out) if r % 2 == 0 else list(out)[::-1]):
            fns[name]()  # warm-up
            dist.barrier()
            t = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            dist.barrier()
            out[name].append((time.perf_counter() - t) / steps)
    return out


def _summary(per_rank: list[dict], a_name: str, b_name: str, key=None) -> dict:
    get = (lambda d, n: d[n][key]) if key else (lambda d, n: d[n])
    a = [max(get(r, a_name)[i] for r in per_rank) for i in range(len(get(per_rank[0], a_name)))]
    b = [max(get(r, b_name)[i] for r in per_rank) for i in range(len(a))]
    ratios = [y / x for x, y in zip(a, b)]
    return {a_name: statistics.median(a), b_name: statistics.median(b), "b/a": statistics.median(ratios),
            "b/a range": [min(ratios), max(ratios)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="fc6 forward+backward per timed round")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json")
    a = p.parse_args()
    from alexnet_mp.parallel.spawn import run_workers

    with tempfile.TemporaryDirectory(prefix="alexnet-mp-dtensor-") as folder:
        ckpt = run_workers(_checkpoint_worker, 2, (folder, a.rounds), threads=1)
    compute = run_workers(_compute_worker, 2, (a.rounds, a.steps, a.batch_size), threads=1)
    result = {
        "checkpoint save": _summary(ckpt, "plain column keys", "DTensor whole-network keys", "save"),
        "checkpoint load": _summary(ckpt, "plain column keys", "DTensor whole-network keys", "load"),
        "fc6 forward+backward": _summary(compute, "alexnet-mp mapping + local weight", "DTensor ColwiseParallel"),
    }
    for what, r in result.items():
        (a_name, a_s), (b_name, b_s) = list(r.items())[:2]
        print(f"{what:<22} {a_name}: {a_s * 1e3:8.1f} ms   {b_name}: {b_s * 1e3:8.1f} ms   "
              f"b/a {r['b/a']:.2f} (range {r['b/a range'][0]:.2f}-{r['b/a range'][1]:.2f})")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
