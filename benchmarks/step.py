"""Training-step speed of the faithful net, side by side in one run, as medians.

    python benchmarks/step.py --device cpu --batch-size 16 --processes --rounds 3   # this CPU box: ratios
    python benchmarks/step.py --device cpu --batch-size 8 --hybrid                   # 2 replicas x 2 columns, DDP
    python benchmarks/step.py --device cuda --batch-size 128 --modes bf16,graph      # one GPU: images/s

``--processes`` (CPU) adds the split across two gloo processes of one thread each, with the
exchanges overlapped and not, and the single-device net on one thread: the split against one
process with the same total threads, and the scaling efficiency (one process on one thread /
twice the split's step).

Variants: the single-device AlexNet with the default LRN (``fast``: fused Triton kernels
on CUDA, shifted adds on the CPU), the same with ReLU + LRN + max-pool as one fused Triton
kernel each way (``alexnet-fused``, alexnet_mp/model/relu_lrn_pool_triton.py; on the CPU
the same as ``alexnet-fast-lrn``), with the shifted-add LRN forced (``eager``) and with
nn.LocalResponseNorm; both columns in one process, column by column (``split-one-process``); and
torchvision's alexnet (the 2014 one-device network, for scale). On CUDA each runs in fp32,
in bf16 autocast with channels_last, and in bf16 + channels_last with the whole step
(forward, backward, fused SGD) captured as one CUDA graph (alexnet_mp.train.graphs), and
optionally under torch.compile. Every variant steps with fused SGD, as the trainer does.
``--rounds N`` repeats everything N times in rotated order and reports medians (and the
per-round figures in the JSON): single runs on a shared box scatter by several percent.
Synthetic data: the loader is measured by benchmarks/loader.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from alexnet_mp import AlexNet  # noqa: E402
from alexnet_mp.parallel import split_in_one_process  # noqa: E402


def build(name: str, device: torch.device, classes: int):
    if name == "alexnet-fast-lrn":
        return AlexNet(classes).to(device)
    if name == "alexnet-fused":
        return AlexNet(classes, fused_relu_lrn_pool=True).to(device)
    if name == "alexnet-eager-lrn":
        return AlexNet(classes, lrn_impl="eager").to(device)
    if name == "alexnet-torch-lrn":
        return AlexNet(classes, lrn_impl="torch").to(device)
    if name == "split-one-process":
        return split_in_one_process([device, device], num_classes=classes)
    if name == "torchvision-alexnet":
        import torchvision

        return torchvision.models.alexnet(num_classes=classes).to(device)
    raise ValueError(name)


def measure(name, device, batch, steps, warmup, *, bf16=False, channels_last=False, compile_=False,
            graph=False, classes=1000):
    torch.manual_seed(0)
    model = build(name, device, classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Fused SGD (one pass for the whole update), as the trainer uses.
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    fwd = torch.compile(model) if compile_ else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if graph:
        from graphs import GraphedStep  # benchmarks/graphs.py

        graphed = GraphedStep(model, opt, F.cross_entropy, x, y, bf16=bf16)

        def step():  # noqa: F811
            graphed(x, y)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"variant": name, "bf16": bf16, "channels_last": channels_last, "compile": compile_, "graph": graph,
            "batch": batch, "median_step_s": med, "images_per_s": batch / med}


def _split_worker(rank, world, batch, steps, warmup, overlap, classes):
    import torch.distributed as dist

    from alexnet_mp.parallel import split_across_processes

    torch.manual_seed(0)
    model = split_across_processes(dist.group.WORLD, num_classes=classes, overlap=overlap)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    return _timed_steps(model, opt, batch, classes, steps, warmup, seed=1)


def _timed_steps(fwd, opt, batch, classes, steps, warmup, *, seed):
    """Per-step times of this rank, steps back to back as in training (one barrier before the
    first timed step; the exchanges keep the ranks in step from there)."""
    import torch.distributed as dist

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 224, 224, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    times = []
    for i in range(warmup + steps):
        if i == warmup:
            dist.barrier()
        t = time.perf_counter()
        loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def _hybrid_worker(rank, world, batch, steps, warmup, classes):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    from alexnet_mp.parallel import split_across_processes

    mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "mp"))
    torch.manual_seed(0)
    model = split_across_processes(mesh.get_group("mp"), num_classes=classes, overlap=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    fwd = DistributedDataParallel(model, process_group=mesh.get_group("dp"))
    return _timed_steps(fwd, opt, batch, classes, steps, warmup, seed=1 + mesh.get_local_rank("dp"))


def measure_hybrid(batch, steps, warmup, *, replicas=2, classes=1000):
    from alexnet_mp.parallel.spawn import run_workers

    per_rank = run_workers(_hybrid_worker, 2 * replicas, (batch, steps, warmup, classes), threads=1)
    med = max(statistics.median(ts) for ts in per_rank)
    return {"variant": f"hybrid-{replicas}x2-ddp", "bf16": False, "channels_last": False, "compile": False,
            "graph": False, "batch": batch * replicas, "threads": "1 per process", "median_step_s": med,
            "images_per_s": batch * replicas / med}


def measure_split(batch, steps, warmup, *, overlap, classes=1000):
    from alexnet_mp.parallel.spawn import run_workers

    per_rank = run_workers(_split_worker, 2, (batch, steps, warmup, overlap, classes), threads=1)
    # Each rank's median step, then the slower rank: the ranks run in lock-step (every step
    # exchanges), and a per-step max would add the jitter of whichever rank is late each step.
    med = max(statistics.median(ts) for ts in per_rank)  # a step ends when both columns have finished
    return {"variant": "split-2-processes" + ("-overlap" if overlap else ""), "bf16": False,
            "channels_last": False, "compile": False, "graph": False, "batch": batch, "threads": "1 per process",
            "median_step_s": med, "images_per_s": batch / med}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (CUDA)")
    p.add_argument("--modes", help="CUDA: comma-separated subset of fp32,bf16,graph,compile "
                   "(bf16 = bf16 autocast + channels_last; graph = that, whole step as one CUDA graph)")
    p.add_argument("--processes", action="store_true", help="CPU: also the split across 2 processes")
    p.add_argument("--hybrid", action="store_true",
                   help="CPU: also 2 replicas x 2 columns (4 processes), gradients averaged by DDP on the dp group")
    p.add_argument("--variants",
                   help="comma-separated subset of alexnet-fast-lrn, alexnet-fused, alexnet-eager-lrn, "
                        "alexnet-torch-lrn, split-one-process, torchvision-alexnet (the yardstick, always runs); "
                        "default all but alexnet-fused, which is added on CUDA (on the CPU it is alexnet-fast-lrn)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat everything this many times, the order rotated, and report medians of the "
                        "per-round figures and ratios (CPU: use 3 on a shared box)")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    variants = a.variants or ("alexnet-fast-lrn," + ("alexnet-fused," if device.type == "cuda" else "")
                              + "alexnet-eager-lrn,alexnet-torch-lrn,split-one-process,torchvision-alexnet")
    names = [n for n in variants.split(",") if n != "torchvision-alexnet"] + ["torchvision-alexnet"]
    modes = [dict()]
    if device.type == "cuda":
        known = {"fp32": dict(), "bf16": dict(bf16=True, channels_last=True),
                 "graph": dict(bf16=True, channels_last=True, graph=True),
                 "compile": dict(bf16=True, channels_last=True, compile_=True)}
        chosen = a.modes.split(",") if a.modes else ["fp32", "bf16", "graph"] + (["compile"] if a.compile else [])
        bad = [m for m in chosen if m not in known]
        if bad:
            p.error(f"--modes: unknown {bad}; choose from {list(known)}")
        modes = [known[m] for m in chosen]
    def run_round(r: int) -> list[dict]:
        rows = []
        # Rotate the order each round, so that a change of load on this shared box falls on
        # every variant alike; the ratios are taken within a round.
        order = names[r % len(names):] + names[:r % len(names)]
        for mode in modes:
            for name in order:
                try:
                    rows.append(measure(name, device, a.batch_size, a.steps, a.warmup, **mode))
                except Exception as e:  # one variant failing must not lose the others' figures
                    print(f"{name} {mode}: FAILED {type(e).__name__}: {e}", flush=True)
                    continue
                _show(rows[-1], r)
        if device.type == "cpu" and a.processes:
            total = torch.get_num_threads()
            torch.set_num_threads(1)
            one = measure("alexnet-fast-lrn", device, a.batch_size, a.steps, a.warmup)
            torch.set_num_threads(total)
            one["variant"], one["threads"] = "alexnet-1-thread", 1
            rows.append(one)
            _show(one, r)
            single = next(x for x in rows if x["variant"] == "alexnet-fast-lrn")  # needs it in --variants
            for overlap in (False, True):
                split = measure_split(a.batch_size, a.steps, a.warmup, overlap=overlap)
                split["vs_single_process"] = split["median_step_s"] / single["median_step_s"]
                split["scaling_efficiency"] = one["median_step_s"] / (2 * split["median_step_s"])
                rows.append(split)
                _show(split, r)
        if device.type == "cpu" and a.hybrid:
            rows.append(measure_hybrid(a.batch_size, a.steps, a.warmup))
            _show(rows[-1], r)
        base = {_mode(x): x for x in rows if x["variant"] == "torchvision-alexnet"}
        for x in rows:
            ref = base.get(_mode(x))
            x["vs_torchvision_step"] = x["median_step_s"] / ref["median_step_s"] if ref else float("nan")
        return rows

    rounds = [run_round(r) for r in range(a.rounds)]
    rows = []
    for first in rounds[0]:
        same = [x for rr in rounds for x in rr if (x["variant"], *_mode(x)) == (first["variant"], *_mode(first))]
        row = dict(first)
        for key in ("median_step_s", "vs_torchvision_step", "vs_single_process", "scaling_efficiency"):
            if key in row:
                row[key + "_rounds"] = [x[key] for x in same]
                row[key] = statistics.median(row[key + "_rounds"])
        row["images_per_s"] = row["batch"] / row["median_step_s"]
        rows.append(row)
    print(f"\nmedians over {a.rounds} round(s); step time relative to torchvision's alexnet in the same mode:")
    for x in rows:
        line = (f"  {x['variant']:<26} bf16={x['bf16']!s:<5} compile={x['compile']!s:<5} graph={x['graph']!s:<5} "
                f"step {x['median_step_s'] * 1e3:8.1f} ms {x['images_per_s']:9.1f} img/s  {x['vs_torchvision_step']:.2f}x")
        if "scaling_efficiency" in x:
            line += (f"  split / one process ({torch.get_num_threads()} threads) {x['vs_single_process']:.2f}, "
                     f"scaling efficiency (1 thread / 2 x split) {x['scaling_efficiency']:.2f}")
        print(line)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                            "torch": torch.__version__, "rounds": a.rounds, "rows": rows}, indent=2))


def _mode(r: dict) -> tuple:
    return r["bf16"], r["compile"], r["graph"]


def _show(r: dict, round_: int) -> None:
    print(f"[round {round_ + 1}] {r['variant']:<26} bf16={r['bf16']!s:<5} channels_last={r['channels_last']!s:<5} "
          f"compile={r['compile']!s:<5} graph={r['graph']!s:<5} step {r['median_step_s'] * 1e3:8.1f} ms "
          f"{r['images_per_s']:9.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
