"""Forward + backward of the paper's LRN alone: the fast exact implementation vs torch's.

    python benchmarks/lrn.py [--threads 2]

At the two LRN layers' shapes (after conv1: 96x55x55; after conv2: 256x27x27), batch 16,
within two columns; median of 10 runs after 2 warm-ups, the two implementations alternated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from alexnet_mp.lrn import ColumnLRN  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for shape in ((a.batch, 96, 55, 55), (a.batch, 256, 27, 27)):
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        times = {"fast": [], "torch": []}
        for i in range(12):
            for impl in times:
                m = ColumnLRN(2, impl=impl)
                t = time.perf_counter()
                m(x).backward(g)
                if i >= 2:
                    times[impl].append(time.perf_counter() - t)
        fast, ref = (statistics.median(times[k]) for k in ("fast", "torch"))
        print(f"{'x'.join(map(str, shape)):<16} fast {fast * 1e3:7.1f} ms   torch {ref * 1e3:7.1f} ms   "
              f"speed-up {ref / fast:.1f}x")


if __name__ == "__main__":
    main()
