"""Where a GPU training step of the faithful net goes, and what makes it faster.

    python benchmarks/gpu_explore.py --out /tmp/out      # needs CUDA; about 2 minutes on an H200

One run, side by side, batch 128, bf16 autocast + channels_last, synthetic data:

1. kernel tables (torch.profiler) of one eager step of the faithful AlexNet and of
   torchvision's alexnet, with the sum of GPU kernel time against the wall time of the step
   (a step whose kernels add up to much less than its wall time is launch-bound);
2. images/s of each net: eager; ``torch.compile``; ``torch.compile(mode="reduce-overhead")``
   (CUDA graphs of forward and backward); and the whole step — forward, backward and the SGD
   update — captured once as one CUDA graph and replayed (benchmarks/graphs.py);
3. conv2/conv4/conv5 alone, forward + backward: one grouped convolution (``groups=2``)
   against two dense convolutions on each column's half.

The figures and conclusions are in docs/benchmarks.md.
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
from graphs import GraphedStep  # noqa: E402  (benchmarks/graphs.py)

BATCH = 128


def nets(split=False):
    import torchvision

    from alexnet_mp.parallel import split_in_one_process

    out = {"faithful": lambda: AlexNet(1000), "torchvision": lambda: torchvision.models.alexnet(num_classes=1000)}
    if split:  # both columns on this GPU: per-column dense convs, exchanges are device copies
        out["split-one-process"] = lambda: split_in_one_process(["cuda", "cuda"], num_classes=1000)
    return out


def graph_matches_eager(device) -> dict:
    """Three SGD steps, graphed and eager, fp32 (TF32 off), dropout off: the same weights?"""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    eager = AlexNet(10, dropout=0.0).to(device)
    graphed = AlexNet(10, dropout=0.0).to(device)
    graphed.load_state_dict(eager.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for m in (eager, graphed)]
    batches = [(torch.randn(8, 3, 224, 224, device=device), torch.randint(0, 10, (8,), device=device))
               for _ in range(3)]
    step = GraphedStep(graphed, opts[1], F.cross_entropy, *batches[0])
    losses = []
    for i, (x, y) in enumerate(batches):
        if i == 2:  # a learning-rate change between steps forces a re-capture
            for o in opts:
                o.param_groups[0]["lr"] = 0.005
        loss = F.cross_entropy(eager(x), y)
        opts[0].zero_grad(set_to_none=True)
        loss.backward()
        opts[0].step()
        losses.append((loss.item(), step(x, y).item()))
    worst = max(((a - b).norm() / a.norm()).item() for a, b in zip(eager.parameters(), graphed.parameters()))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    r = {"losses_eager_graphed": losses, "worst_param_l2_rel": worst, "captures": step.captures}
    print("graph vs eager:", r, flush=True)
    return r


def setup(make, device):
    torch.manual_seed(0)
    model = make().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(BATCH, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (BATCH,), device=device)
    return model, opt, x, y


def eager_step(fwd, opt, x, y):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def timed(step, steps=30, warmup=8):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernel_table(name, make, device, out):
    from torch.profiler import ProfilerActivity, profile

    model, opt, x, y = setup(make, device)
    step = eager_step(model, opt, x, y)
    wall = timed(step, steps=10, warmup=5)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    averages = p.key_averages()
    gpu_us = sum(e.self_device_time_total for e in averages
                 if e.device_type.name == "CUDA" and not e.is_user_annotation) / 5
    table = averages.table(sort_by="self_cuda_time_total", row_limit=35)
    text = f"## {name}: eager bf16 channels_last, wall {wall * 1e3:.2f} ms/step, GPU kernels {gpu_us / 1e3:.2f} ms/step\n{table}\n"
    print(text, flush=True)
    (out / f"kernels_{name}.txt").write_text(text)
    return {"net": name, "wall_ms": wall * 1e3, "gpu_kernel_ms": gpu_us / 1e3}


def conv_micro(device):
    from alexnet_mp import layers as L

    rows = []
    for s in L.shapes(1000):
        layer = s.layer
        if layer.kind != "conv" or layer.sees != "own" or s.column_in == s.in_shape[0]:
            continue
        cin, cout = s.column_in, s.column_out
        h = s.in_shape[1]
        x = torch.randn(BATCH, 2 * cin, h, h, device=device, dtype=torch.bfloat16,
                        requires_grad=True).contiguous(memory_format=torch.channels_last)
        grouped = torch.nn.Conv2d(2 * cin, 2 * cout, layer.kernel, padding=layer.padding, groups=2).to(
            device, torch.bfloat16).to(memory_format=torch.channels_last)
        halves = [torch.nn.Conv2d(cin, cout, layer.kernel, padding=layer.padding).to(device, torch.bfloat16).to(
            memory_format=torch.channels_last) for _ in range(2)]
        xs = [torch.randn(BATCH, cin, h, h, device=device, dtype=torch.bfloat16,
                          requires_grad=True).contiguous(memory_format=torch.channels_last) for _ in range(2)]

        def g_step():
            grouped(x).sum().backward()

        def h_step():
            (halves[0](xs[0]).sum() + halves[1](xs[1]).sum()).backward()

        def h_cat_step():
            parts = x.chunk(2, dim=1)
            torch.cat([halves[0](parts[0]), halves[1](parts[1])], dim=1).sum().backward()

        r = {"layer": layer.name, "grouped_ms": timed(g_step) * 1e3, "two_dense_ms": timed(h_step) * 1e3,
             "two_dense_chunk_cat_ms": timed(h_cat_step) * 1e3}
        print(r, flush=True)
        rows.append(r)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/out")
    p.add_argument("--skip-compile", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": BATCH}
    result["graph_check"] = graph_matches_eager(device)
    result["kernels"] = [kernel_table(n, m, device, out) for n, m in nets().items()]
    result["conv"] = conv_micro(device)
    rows = []
    modes = ["eager", "graph", "fused-sgd-graph"] + ([] if a.skip_compile else ["compile", "compile-reduce-overhead"])
    for mode in modes:
        for name, make in nets(split=not mode.startswith(("compile", "fused"))).items():
            model, opt, x, y = setup(make, device)
            if mode.startswith("fused"):
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
            t0 = time.perf_counter()
            if mode == "eager":
                step = eager_step(model, opt, x, y)
            elif mode.endswith("graph"):
                graphed = GraphedStep(model, opt, lambda out, target: F.cross_entropy(out, target), x, y,
                                      bf16=True)
                step = lambda: graphed(x, y)  # noqa: E731
            elif mode == "compile":
                step = eager_step(torch.compile(model), opt, x, y)
            else:
                step = eager_step(torch.compile(model, mode="reduce-overhead"), opt, x, y)
            med = timed(step)
            r = {"net": name, "mode": mode, "step_ms": med * 1e3, "images_per_s": BATCH / med,
                 "setup_and_timing_s": time.perf_counter() - t0}
            print(r, flush=True)
            rows.append(r)
            (out / "explore.json").write_text(json.dumps({**result, "steps": rows}, indent=1))
            del model, opt, step
            torch.cuda.empty_cache()
    result["steps"] = rows
    (out / "explore.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
