"""Loader throughput: DALI against torchvision's DataLoader (PIL, decode_jpeg), same plan, side by side.

    python benchmarks/loader.py                       # generates the quick start's dataset in a temp folder
    python benchmarks/loader.py --data DIR --batch 64 --threads 2 --epochs 5
    python benchmarks/loader.py --columns             # identical column batches: exchange vs duplicate

Every loader applies the same training transforms to the same planned epoch (order, crops,
flips, lighting from (seed, epoch)). Each runs in its own process (clean peak memory): one
warm-up epoch, then ``--epochs`` whole epochs, each timed as a trainer sees it (build,
worker start-up, every batch); reported: median images/s, time to first batch
(build + first batch, cold), and the peak resident memory of the process and its workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LOADERS = {
    "dali-cpu": dict(loader="dali"),
    "dali-cpu-full-decode": dict(loader="dali", region_decode=False),
    "torchvision-pil": dict(loader="torchvision", torchvision_decoder="pil"),
    "torchvision-decode_jpeg": dict(loader="torchvision", torchvision_decoder="decode_jpeg"),
}


class PeakRSS:
    """Samples the resident memory of this process and its children every 20 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _tree(pid: int) -> list[int]:
        out = [pid]
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                kids = open(f"/proc/{pid}/task/{task}/children").read().split()
            except OSError:
                continue
            for kid in kids:
                out += PeakRSS._tree(int(kid))
        return out

    def _run(self):
        while not self._stop.is_set():
            total = 0
            for pid in self._tree(os.getpid()):
                try:
                    for line in open(f"/proc/{pid}/status"):
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _whole_images(dali_params):
    """The library's DALI parameters with the decode window widened to the whole image: the
    region decode's yardstick (the crop window stays where it was in the image)."""
    import numpy as np

    def params(sizes, *args, **kwargs):
        anchor, shape, start, end, *rest = dali_params(sizes, *args, **kwargs)
        return [np.zeros_like(anchor), sizes.astype(np.int32), start + anchor, end + anchor, *rest]

    return params


def run_one(name: str, data: str, batch: int, threads: int, epochs: int) -> dict:
    """One loader, in this process: first batch, warm-up, timed epochs."""
    import torch

    torch.set_num_threads(1)
    from alexnet_mp.data import DataConfig, build_train_loader
    import alexnet_mp.data.dali as dali

    opts = dict(LOADERS[name])
    if opts.pop("region_decode", True) is False:
        dali.dali_params = _whole_images(dali.dali_params)
    cfg = DataConfig(path=data, threads=threads, **opts)
    memory = PeakRSS()
    t0 = time.perf_counter()
    loader = build_train_loader(cfg, batch_size=batch, seed=0, epoch=0)
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    for _ in it:
        pass
    rates = []
    for epoch in range(1, epochs + 1):
        # A whole epoch as a trainer sees it: build, worker start-up, every batch.
        t = time.perf_counter()
        n = sum(x.shape[0] for x, _ in build_train_loader(cfg, batch_size=batch, seed=0, epoch=epoch))
        rates.append(n / (time.perf_counter() - t))
    return {"loader": name, "images_per_s": statistics.median(rates), "epochs": [round(r, 1) for r in rates],
            "first_batch_s": first, "peak_rss_gib": memory.stop() / 2**30}


def _column(rank, data, batch, feed, steps, port, out):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from alexnet_mp.data import DataConfig, build_train_loader

    cfg = DataConfig(path=data, threads=1, column_feed=feed)
    times = []
    for epoch in range(2):
        it = iter(build_train_loader(cfg, batch_size=batch, seed=0, epoch=epoch, mp_group=dist.group.WORLD))
        next(it)  # the first batch is build time, not steady state
        dist.barrier()
        t, n = time.perf_counter(), 0
        for x, _ in it:
            n += x.shape[0]
        dist.barrier()
        times.append(n / (time.perf_counter() - t))
    if rank == 0:
        Path(out).write_text(json.dumps({"feed": feed, "images_per_s_per_model": times[-1]}))
    dist.destroy_process_group()


def run_columns(data: str, batch: int) -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    results = []
    for feed in ("duplicate", "exchange"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            mp.start_processes(_column, args=(data, batch, feed, 0, port, f.name), nprocs=2, start_method="spawn")
            results.append(json.loads(Path(f.name).read_text()))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset root (default: generate the quick start's, 10 classes x 300 train)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--loaders", default=",".join(LOADERS))
    ap.add_argument("--columns", action="store_true", help="measure exchange vs duplicate with 2 gloo processes")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.batch, args.threads, args.epochs)))
        return
    tmp = None
    if not args.data:
        from alexnet_mp.data import make_dataset

        tmp = tempfile.TemporaryDirectory()
        args.data = str(make_dataset(Path(tmp.name) / "ds", classes=10, train_per_class=300, val_per_class=5,
                                     seed=0, progress=False))
    if args.columns:
        for r in run_columns(args.data, args.batch):
            print(f"{r['feed']:>10}: {r['images_per_s_per_model']:7.1f} img/s per two-column model")
        return
    print(f"data {args.data}  batch {args.batch}  threads {args.threads}  epochs {args.epochs} (+1 warm-up)  "
          f"cpus {os.cpu_count()}")
    print(f"{'loader':<26}{'img/s (median)':>15}{'epochs':>40}{'first batch':>13}{'peak RSS':>10}")
    results = []
    for name in args.loaders.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--data", args.data, "--batch", str(args.batch),
                              "--threads", str(args.threads), "--epochs", str(args.epochs)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{name:<26}{r['images_per_s']:>15.1f}{str(r['epochs']):>40}{r['first_batch_s']:>12.2f}s"
              f"{r['peak_rss_gib']:>8.2f}GiB", flush=True)
    best_tv = max((r for r in results if r["loader"].startswith("torchvision")), key=lambda r: r["images_per_s"],
                  default=None)
    dali = next((r for r in results if r["loader"] == "dali-cpu"), None)
    if best_tv and dali:
        print(f"dali-cpu / best torchvision ({best_tv['loader']}): {dali['images_per_s'] / best_tv['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
