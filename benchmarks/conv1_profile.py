"""Where a training step of the faithful net spends its time, kernel by kernel, and what the
conv1 block (conv1 -> ReLU -> LRN -> 3x3/2 max-pool: 96 maps of 55x55) costs of it.

    python3 benchmarks/conv1_profile.py                          # CUDA: bf16, channels_last, batch 128
    python3 benchmarks/conv1_profile.py --unfused                # the same, ReLU/LRN/pool kept apart
    python3 benchmarks/conv1_profile.py --device cpu --batch 2   # a check that it runs (CPU ops)

A few forward + backward + fused-SGD steps of ``AlexNet(fused_relu_lrn_pool=True)`` (the
model's default is False; with ``lrn_impl="fast"`` on CUDA ReLU + LRN + pool then run as the
fused Triton kernel; ``--unfused``: the default model) under torch.profiler, after warm-up; prints
the top kernels by self device time (CPU: by self CPU time). Then the conv1 block alone,
forward + backward, fused and unfused, timed (CUDA events on CUDA), against the whole step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from alexnet_mp import AlexNet  # noqa: E402
from alexnet_mp.model.lrn import fuses, relu_lrn_pool  # noqa: E402


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=25, help="kernels listed")
    p.add_argument("--unfused", action="store_true", help="keep ReLU, LRN and pool apart in the step")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast (CUDA)")
    a = p.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("no CUDA device; use --device cpu --batch 2")
    bf16 = cuda and not a.fp32
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = AlexNet(1000, fused_relu_lrn_pool=not a.unfused).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    x = torch.randn(a.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (a.batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(a.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        a1 = model.conv1(x)
    can_fuse = fuses(a1, model.lrn, model.pool)
    fused_here = can_fuse and not a.unfused
    print(f"{torch.cuda.get_device_name() if cuda else 'cpu'}, batch {a.batch}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, channels_last, {a.steps} steps profiled; "
          f"ReLU+LRN+pool {'fused (one Triton kernel each way)' if fused_here else 'as separate ops'}")
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=a.rows, max_name_column_width=70))

    # The conv1 block alone, forward + backward, against the whole step.
    def block(fuse: bool):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = relu_lrn_pool(model.conv1(x), model.lrn, model.pool, fuse=fuse)
            out.backward(torch.ones_like(out))
        return run

    repeats = 10 if cuda else 2
    whole = timed(step, device, repeats)
    print(f"whole step: {whole * 1e3:.2f} ms")
    for fuse in ([True] if can_fuse else []) + [False]:
        t = timed(block(fuse), device, repeats)
        label = "fused" if fuse else "separate ops"
        print(f"conv1 block ({a1.shape[1]} maps of {a1.shape[2]}x{a1.shape[3]}), forward + backward, "
              f"{label:<12}: {t * 1e3:8.2f} ms = {t / whole:5.1%} of the step")
    model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
