"""Decoded images/s: the nvJPEG loader (batched ``decode_jpeg`` + augmentation on the device)
against the CPU torchvision loader with N worker processes, on the generated dataset.

    python benchmarks/decode.py --device cuda --json decode.json     # the GPU figures
    python benchmarks/decode.py --device cpu --classes 2 --per-class 24 --batch 16 --epochs 1   # a check

Rows (one training batch of ``--batch`` at a time, the same planned epochs for every row):

* ``decode only``: ``decode_jpeg(list of the batch's bytes, device=...)`` on bytes already in
  memory: the decoder alone (on the GPU nvJPEG's batched decode, hardware engines on A100/H100).
* ``nvjpeg loader``: ``[data] loader = "nvjpeg"`` as the trainer builds it each epoch — file
  reads, decode, resize, centre square, crop, flip, lighting, normalisation — every batch on
  ``--device``.
* ``torchvision loader``: ``[data] loader = "torchvision"`` (``decode_jpeg`` decoder) with
  ``--workers`` processes, batches copied to ``--device`` as the trainer's are.

images/s is the median over ``--epochs`` timed epochs (after one warm-up epoch), each timed
from building the loader to its last batch on the device. With ``--step-ms S`` each loader
also runs one epoch behind a stand-in training step of S ms (``torch.cuda._sleep`` on the
current stream on a GPU, ``time.sleep`` on the CPU) and reports the *data wait*: the share of
that epoch's wall time that is not step time, ``1 - steps * S / wall``. The stand-in keeps
the GPU's stream busy but not its SMs: a real step competes with the augmentation kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(device, ms: float, cycles_per_ms: float) -> None:
    """The stand-in training step: ``ms`` of the device's time, then wait for it (a loss.item())."""
    import torch

    if device.type == "cuda":
        torch.cuda._sleep(int(ms * cycles_per_ms))
        torch.cuda.current_stream(device).synchronize()
    else:
        time.sleep(ms / 1000.0)


def _cycles_per_ms(device) -> float:
    import torch

    if device.type != "cuda":
        return 0.0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # warm
    start.record()
    torch.cuda._sleep(50_000_000)
    end.record()
    end.synchronize()
    return 50_000_000 / start.elapsed_time(end)


def decode_only(files: list[str], batch: int, device, epochs: int) -> list[float]:
    """images/s of ``decode_jpeg`` alone on the batches' bytes, already read."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from alexnet_mp.data.nvjpeg import read_bytes

    data = [read_bytes(f) for f in files]
    chunks = [data[i:i + batch] for i in range(0, len(data) - batch + 1, batch)]
    if not chunks:
        raise SystemExit(f"{len(files)} images make no batch of {batch}: use a smaller --batch or more images")
    rates = []
    for epoch in range(epochs + 1):  # the first is the warm-up (nvJPEG handles, buffers)
        _sync(device)
        t = time.perf_counter()
        for chunk in chunks:
            out = decode_jpeg(chunk, mode=ImageReadMode.RGB, device=device)
        _sync(device)
        del out
        if epoch:
            rates.append(len(chunks) * batch / (time.perf_counter() - t))
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return rates


def loader_rates(cfg, batch: int, device, epochs: int, step_ms: float, cycles_per_ms: float) -> tuple[list, float]:
    """images/s of each timed epoch (the first epoch is the warm-up) and the data wait at ``step_ms``."""
    from alexnet_mp.data import build_train_loader

    rates = []
    for epoch in range(epochs + 1):
        _sync(device)
        t, n = time.perf_counter(), 0
        for x, _ in build_train_loader(cfg, batch_size=batch, seed=0, epoch=epoch, device=device):
            n += x.shape[0]
        _sync(device)
        if epoch:
            rates.append(n / (time.perf_counter() - t))
    wait = float("nan")
    if step_ms > 0:
        _sync(device)
        t, steps = time.perf_counter(), 0
        for _ in build_train_loader(cfg, batch_size=batch, seed=0, epoch=epochs + 1, device=device):
            _step(device, step_ms, cycles_per_ms)
            steps += 1
        wall = time.perf_counter() - t
        wait = max(0.0, 1.0 - steps * step_ms / 1000.0 / wall)
    return rates, wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="where the nvjpeg loader decodes: cuda (default) or cpu")
    ap.add_argument("--data", help="dataset root (default: generate one in a temporary folder)")
    ap.add_argument("--classes", type=int, default=10, help="generated dataset: classes (default 10)")
    ap.add_argument("--per-class", type=int, default=300, help="generated dataset: train images per class (300)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per row, after one warm-up epoch")
    ap.add_argument("--threads", type=int, default=4, help="the nvjpeg loader's file-reading threads")
    ap.add_argument("--prefetch", type=int, default=2, help="batches decoded ahead (both loaders)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="the torchvision loader's processes (default: one per usable core)")
    ap.add_argument("--step-ms", type=float, default=0.0, help="stand-in step time for the data-wait column")
    ap.add_argument("--rows", default="decode,nvjpeg,torchvision", help="which rows, comma-separated")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torchvision.io's notice, once per call

    import numpy as np
    import torch
    import torchvision

    from alexnet_mp.data import DataConfig, make_dataset
    from alexnet_mp.data.folder import scan_split

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    tmp = tempfile.TemporaryDirectory()
    t = time.perf_counter()
    data = args.data or str(make_dataset(Path(tmp.name) / "ds", classes=args.classes, train_per_class=args.per_class,
                                         val_per_class=1, seed=0, progress=False))
    made_s = time.perf_counter() - t
    split = scan_split(data, "train", cache_dir=str(Path(tmp.name) / "cache"))
    kb = np.mean([os.path.getsize(f) for f in split.files]) / 1024
    hw = split.sizes.mean(0)
    cores = len(os.sched_getaffinity(0))
    name = (f"{torch.cuda.get_device_name(device)}, {cores} cores" if device.type == "cuda"
            else f"CPU ({cores} cores)")
    print(f"{name}; torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"data {data}{f' (generated in {made_s:.1f} s)' if not args.data else ''}: {len(split)} train JPEGs, "
          f"mean {kb:.0f} kB, mean {hw[1]:.0f}x{hw[0]:.0f} px; batch {args.batch}, {args.epochs} timed epochs "
          f"+ 1 warm-up")
    cycles = _cycles_per_ms(device)
    common = dict(path=data, cache_dir=str(Path(tmp.name) / "cache"), prefetch=args.prefetch)
    results = []

    def row(label, where, par, rates, wait=float("nan")):
        r = {"row": label, "device": where, "parallelism": par, "images_per_s": statistics.median(rates),
             "epochs": [round(x, 1) for x in rates], "data_wait": None if wait != wait else round(wait, 4)}
        results.append(r)
        waits = "" if wait != wait else f"{100 * wait:.1f}%"
        print(f"| {label:<19}| {where:<8}| {par:<12}| {r['images_per_s']:>9.1f} | "
              f"{min(rates):>8.1f}-{max(rates):<8.1f}|{waits:>11} |", flush=True)

    print(f"| {'row':<19}| {'device':<8}| {'parallelism':<12}| {'images/s':>9} | {'range':^17}|"
          f"{'wait' if not args.step_ms else f'wait@{args.step_ms:g}ms':>11} |")
    print(f"|{'-' * 20}|{'-' * 9}|{'-' * 13}|{'-' * 10}:|{'-' * 18}|{'-' * 11}:|")
    rows = args.rows.split(",")
    if "decode" in rows:
        row("decode only", device.type, "batched" if device.type == "cuda" else "1 thread",
            decode_only(split.files, args.batch, device, args.epochs))
    if "nvjpeg" in rows:
        cfg = DataConfig(loader="nvjpeg", decode_device="gpu" if device.type == "cuda" else "cpu",
                         threads=args.threads, **common)
        rates, wait = loader_rates(cfg, args.batch, device, args.epochs, args.step_ms, cycles)
        row("nvjpeg loader", device.type, f"{args.threads} readers", rates, wait)
    if "torchvision" in rows:
        cfg = DataConfig(loader="torchvision", torchvision_decoder="decode_jpeg", threads=args.workers, **common)
        rates, wait = loader_rates(cfg, args.batch, device, args.epochs, args.step_ms, cycles)
        row("torchvision loader", "cpu", f"{args.workers} workers", rates, wait)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": name, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "images": len(split), "mean_kb": round(kb, 1), "mean_hw": [round(v) for v in hw], "batch": args.batch,
            "epochs": args.epochs, "step_ms": args.step_ms, "results": results}, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
