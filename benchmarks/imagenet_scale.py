"""ImageNet's shape at full size: the file index, the epoch order, resume and the ten patches at 1.28M files.

    python benchmarks/imagenet_standin.py /tmp/imagenet        # the stand-in (time and size: docs/benchmarks.md)
    python benchmarks/imagenet_scale.py /tmp/imagenet          # every measurement below

Each measurement runs in its own process (clean resident memory) and prints one JSON line;
the summary goes to ``--out`` (default ``benchmarks/results/imagenet_scale_cpu.json``).
Side by side with the commit before the change (``--old``, default 98195e4, unpacked from git):

- ``listing``: listing train/ (1000 folders) and the flat val/.
- ``scan``: the first scan (decode check) of a ``--subset``-file slice of train/, by 1 rank and by
  2 gloo ranks, new (split) and old (every rank scans everything): CPU seconds of all ranks, wall.
- ``index``: the full-size index made once (the pool's files are checked, every other file is a
  hard link and takes its pool file's verdict, so this is not the first scan's cost), then, per
  code version, a fresh process reading the cached index: seconds and resident memory it adds.
- ``startup``: cached index to the first batch of epoch 37, step 9000, for DALI (CPU) and torchvision.
- ``order``: an epoch's permutation and 8-replica sharding at 1,281,167; the resumed position's batch
  equals the uninterrupted order's.
- ``patches``: the ten patches' coverage of 50,000 val files over 1, 2 and 8 replicas, and a
  strided sample decoded (count, no file twice, none missed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OLD = "98195e4"
BATCH, EPOCH, STEP = 128, 37, 9000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def keys(root: Path) -> dict:
    out = root.parents[2]
    return {"val_labels": str(out / "LOC_val_solution.csv")}


# -- children (one measurement each; run with --child) ------------------------------------------


def child_listing(root: Path) -> dict:
    from alexnet_mp.data import folder

    t = time.perf_counter()
    classes = folder.classes_of(root, flat_val=True)
    train = folder._listing_of(root, "train", classes, "", "")
    mid = time.perf_counter()
    val = folder._listing_of(root, "val", classes, **{**keys(root), "val_synsets": ""})
    return {"train_files": len(train[0]), "train_s": mid - t, "val_files": len(val[0]),
            "val_with_ground_truth_s": time.perf_counter() - mid}


def inode_memo(module) -> None:
    """Benchmark only: a file shares its verdict with the pool file it is a hard link of."""
    real, memo = module.check_image, {}

    def check(path):
        ino = os.stat(path).st_ino
        if ino not in memo:
            memo[ino] = real(path)
        return memo[ino]

    module.check_image = check


def child_make_index(root: Path, cache: str, version: str) -> dict:
    from alexnet_mp.data import folder

    inode_memo(folder)
    t = time.perf_counter()
    extra = keys(root) if version == "new" else {}
    for split in ("train", "val") if version == "new" else ("train",):
        folder.scan_split(root, split, cache_dir=cache, threads=4, **extra)
    return {"seconds": time.perf_counter() - t,
            "cache_mb": sum(f.stat().st_size for f in Path(cache).iterdir()) / 2**20}


def child_read_index(root: Path, cache: str, version: str) -> dict:
    import gc

    from alexnet_mp.data import folder

    gc.collect()
    before, t = rss_mb(), time.perf_counter()
    split = folder.scan_split(root, "train", cache_dir=cache, threads=4, **(keys(root) if version == "new" else {}))
    seconds = time.perf_counter() - t
    gc.collect()
    return {"entries": len(split), "seconds": seconds, "index_rss_mb": rss_mb() - before,
            "process_rss_mb": rss_mb()}


def child_startup(root: Path, cache: str, loader: str, step: int) -> dict:
    t0 = time.perf_counter()
    from alexnet_mp.data import DataConfig, build_train_loader

    cfg = DataConfig(path=str(root), loader=loader, threads=2, cache_dir=cache, **keys(root))
    batches = build_train_loader(cfg, batch_size=BATCH, seed=0, epoch=EPOCH, start_step=step, device="cpu")
    built = time.perf_counter()
    images, _ = next(iter(batches))
    return {"loader": loader, "epoch": EPOCH, "start_step": step, "import_and_build_s": built - t0,
            "first_batch_s": time.perf_counter() - built,
            "steps_in_epoch": len(batches), "batch": list(images.shape), "process_rss_mb": rss_mb()}


def child_scan(root: Path, cache: str, version: str, ranks: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_scan_rank, args=(ranks, str(root), cache, version, tmp, _free_port()), nprocs=ranks,
                           start_method="spawn")
        parts = [json.loads((Path(tmp) / f"{r}.json").read_text()) for r in range(ranks)]
    return {"version": version, "ranks": ranks, "files": parts[0]["files"],
            "cpu_s_all_ranks": sum(p["cpu_s"] for p in parts), "wall_s": max(p["wall_s"] for p in parts)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scan_rank(rank: int, world: int, root: str, cache: str, version: str, tmp: str, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from alexnet_mp.data import folder

    group = {"group": dist.group.WORLD} if version == "new" and world > 1 else {}
    dist.barrier()
    c, t = cpu_s(), time.perf_counter()
    split = folder.scan_split(root, "train", cache_dir=f"{cache}/{rank}" if version == "old" else cache, threads=4,
                              **group)
    wall = time.perf_counter() - t
    out = {"files": len(split) + len(split.bad), "cpu_s": cpu_s() - c, "wall_s": wall}
    dist.barrier()
    Path(tmp, f"{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def child_order(root: Path, cache: str, step: int) -> dict:
    import numpy as np

    from alexnet_mp.data import DataConfig
    from alexnet_mp.data.augment import plan_epoch
    from alexnet_mp.data.folder import scan_split
    from alexnet_mp.data.loader import build_train_loader
    from alexnet_mp.data.sharding import steps_per_epoch, train_positions

    n = len(scan_split(root, "train", cache_dir=cache, **keys(root)))
    t = time.perf_counter()
    plan = plan_epoch(n, 0, EPOCH)
    plan_s = time.perf_counter() - t
    t = time.perf_counter()
    shards = [train_positions(n, batch_size=BATCH, dp_rank=r, dp_size=8) for r in range(8)]
    shard_s = time.perf_counter() - t
    used = np.concatenate(shards)
    steps = steps_per_epoch(n, BATCH, 8)
    whole = steps * BATCH * 8
    covered = bool(len(np.unique(used)) == len(used) == whole and (whole == 0 or used.max() == whole - 1))
    cfg = DataConfig(path=str(root), loader="torchvision", threads=0, cache_dir=cache, **keys(root))
    resumed = build_train_loader(cfg, batch_size=BATCH, seed=0, epoch=EPOCH, start_step=step)
    want = plan.order[step * BATCH:(step + 1) * BATCH]
    got_files = resumed.inner.loader.dataset.files[:BATCH]
    split = scan_split(root, "train", cache_dir=cache, **keys(root))
    same = got_files == split.files.take(want)
    return {"n": n, "plan_epoch_s": plan_s, "shard_8_replicas_s": shard_s, "steps_per_epoch_dp8": steps,
            "dropped_dp8": n - whole, "each_image_at_most_once_dp8": covered,
            "resume_at": [EPOCH, step], "resumed_batch_equals_uninterrupted_order": bool(same)}


def child_patches(root: Path, cache: str, sample: int) -> dict:
    import numpy as np

    from alexnet_mp.data import DataConfig, build_eval_loader
    from alexnet_mp.data.folder import scan_split
    from alexnet_mp.data.sharding import eval_positions

    n = len(scan_split(root, "val", cache_dir=cache, **keys(root)))
    cover = {}
    for d in (1, 2, 8):
        pos = np.concatenate([eval_positions(n, dp_rank=r, dp_size=d) for r in range(d)])
        cover[d] = bool(len(pos) == n and np.array_equal(np.sort(pos), np.arange(n)))
    cfg = DataConfig(path=str(root), loader="torchvision", threads=2, cache_dir=cache, **keys(root))
    t = time.perf_counter()
    count, labels = 0, []
    for x, y in build_eval_loader(cfg, batch_size=50, ten_crop=True, limit=sample):
        assert tuple(x.shape[1:]) == (10, 3, 224, 224)
        count, labels = count + len(x), labels + y.tolist()
    seconds = time.perf_counter() - t
    expected = scan_split(root, "val", cache_dir=cache, **keys(root)).labels[np.arange(sample) * n // sample]
    return {"val_files": n, "every_file_once": cover, "sample": sample, "decoded": count,
            "sample_labels_match": labels == expected.tolist(), "sample_s": seconds,
            "ms_per_image_ten_patches": 1000 * seconds / count}


CHILDREN = {"listing": child_listing, "make_index": child_make_index, "read_index": child_read_index,
            "startup": child_startup, "scan": child_scan, "order": child_order, "patches": child_patches}


# -- the parent: prepares the views and the old code, runs each child, writes the summary ----------


def view(root: Path, folder: Path, files: int) -> Path:
    """A class-folder dataset the old code can read: train/<wnid> linked to the stand-in's (whole
    classes, at least ``files`` files or all), val/<wnid>/ holding one hard link each."""
    if folder.exists():
        return folder
    (folder / "train").mkdir(parents=True)
    total = 0
    for c in sorted(os.listdir(root / "train")):
        if total >= files:
            break
        (folder / "train" / c).symlink_to(root / "train" / c)
        first = min(os.listdir(root / "train" / c))
        (folder / "val" / c).mkdir(parents=True)
        os.link(root / "train" / c / first, folder / "val" / c / first)
        total += len(os.listdir(root / "train" / c))
    return folder


def old_package(work: Path, commit: str) -> Path:
    target = work / f"old-{commit}"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "alexnet_mp"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_child(name: str, *args, pythonpath: Path = REPO) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    load, t = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", name, *map(str, args)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} {args} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    result["load_1min"] = [load, os.getloadavg()[0]]  # before, after: the box is shared
    print(json.dumps({name: result}), flush=True)
    return result


def measure(out: Path, a) -> dict:
    root = out / "ILSVRC/Data/CLS-LOC"
    work = out / ".bench"
    work.mkdir(exist_ok=True)
    old = old_package(work, a.old)
    sub, full = view(root, work / "subset", a.subset), view(root, work / "full", 10**9)
    fresh = lambda name: tempfile.mkdtemp(prefix=f"{name}-", dir=work)  # noqa: E731
    r: dict = {"listing": run_child("listing", root)}
    r["scan"] = [run_child("scan", sub, fresh("scan"), "new", 1), run_child("scan", sub, fresh("scan"), "new", 2),
                 run_child("scan", sub, fresh("scan"), "old", 2, pythonpath=old)]
    caches = {"new": fresh("index"), "old": fresh("index")}
    r["make_index"] = {"new": run_child("make_index", root, caches["new"], "new"),
                       "old": run_child("make_index", full, caches["old"], "old", pythonpath=old)}
    r["read_index"] = {"new": run_child("read_index", root, caches["new"], "new"),
                       "old": run_child("read_index", full, caches["old"], "old", pythonpath=old)}
    step = min(STEP, r["listing"]["train_files"] // BATCH - 1)
    r["startup"] = [run_child("startup", root, caches["new"], loader, step) for loader in ("dali", "torchvision")]
    r["order"] = run_child("order", root, caches["new"], step)
    r["patches"] = run_child("patches", root, caches["new"], a.sample)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("standin", type=Path, nargs="?", help="the folder imagenet_standin.py wrote")
    ap.add_argument("--subset", type=int, default=100_000, help="train files in the first-scan comparison")
    ap.add_argument("--sample", type=int, default=200, help="val images decoded as ten patches")
    ap.add_argument("--old", default=OLD, help="the commit compared with")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "imagenet_scale_cpu.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        name, root, *args = a.child
        print(json.dumps(CHILDREN[name](Path(root), *(int(v) if v.isdigit() else v for v in args))))
        return
    if a.standin is None:
        ap.error("give the folder imagenet_standin.py wrote")
    results = measure(a.standin, a)
    results["command"] = " ".join(["python", "benchmarks/imagenet_scale.py", *sys.argv[1:]])
    results["cpus"] = os.cpu_count()
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
