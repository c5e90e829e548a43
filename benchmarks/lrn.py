"""Forward + backward of the paper's LRN alone, each implementation side by side.

    python benchmarks/lrn.py [--threads 2]                      # CPU: eager (shifted adds) vs torch
    python benchmarks/lrn.py --device cuda --batch 128 --bf16   # GPU: also the fused Triton kernels

At the two LRN layers' shapes (after conv1: 96x55x55; after conv2: 256x27x27), within two
columns; median of 10 runs after 2 warm-ups, the implementations alternated. On CUDA the
tensors are channels_last (as in the bf16 training step), forward and backward are timed
apart with CUDA events, each output is checked against torch's, and the launch
configuration the Triton kernels tuned to is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from alexnet_mp.model.lrn import ColumnLRN, _triton_lrn  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bfloat16 activations (as under autocast)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cuda = a.device == "cuda"
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    impls = ["eager", "torch"] + (["triton"] if cuda and _triton_lrn() is not None else [])
    for shape in ((a.batch, 96, 55, 55), (a.batch, 256, 27, 27)):
        x = torch.randn(shape, device=a.device, dtype=dtype) * 10
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        g = torch.randn_like(x)
        times = {k: ([], []) for k in impls}
        outs = {}
        for i in range(12):
            for impl in impls:
                m = ColumnLRN(2, impl=impl)
                if cuda:
                    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                    ev[0].record()
                    y = m(x)
                    ev[1].record()
                    (gx,) = torch.autograd.grad(y, x, g)
                    ev[2].record()
                    ev[2].synchronize()
                    fwd, bwd = ev[0].elapsed_time(ev[1]) / 1e3, ev[1].elapsed_time(ev[2]) / 1e3
                else:
                    t = time.perf_counter()
                    y = m(x)
                    t1 = time.perf_counter()
                    (gx,) = torch.autograd.grad(y, x, g)
                    fwd, bwd = t1 - t, time.perf_counter() - t1
                if i >= 2:
                    times[impl][0].append(fwd)
                    times[impl][1].append(bwd)
                outs[impl] = (y.detach().float(), gx.float())
        ref = outs["torch"]
        line = f"{'x'.join(map(str, shape))} {str(dtype)[6:]:<9}"
        for impl in impls:
            f, b = (statistics.median(t) * 1e3 for t in times[impl])
            err = max(((o - r).norm() / r.norm()).item() for o, r in zip(outs[impl], ref))
            line += f" | {impl} fwd {f:.3f} bwd {b:.3f} ms (err {err:.1e})"
        tf, tb = (statistics.median(t) for t in times["torch"])
        for impl in impls:
            if impl != "torch":
                line += f" | {impl} speed-up {(tf + tb) / sum(statistics.median(t) for t in times[impl]):.1f}x"
        print(line, flush=True)
    if cuda and "triton" in impls:
        from alexnet_mp.model.lrn_triton import tuned_configs

        print("tuned (elements per tile, warps):", tuned_configs())


if __name__ == "__main__":
    main()
