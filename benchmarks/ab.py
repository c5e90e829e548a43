"""Two versions of the library, side by side in one run: the single-device step and the split's step.

    python benchmarks/ab.py --old /tmp/old-checkout --new . --rounds 5      # e.g. a commit vs the working tree
    git worktree add /tmp/old-checkout <commit>                               # to get an old checkout

Each round runs, for each version in turn (the order alternating between rounds, so a change
of load on a shared box falls on both), a fresh subprocess with that version first on
``sys.path``, which times training steps (forward, loss, backward, fused SGD) of

* ``single``: the whole AlexNet in one process (all its intra-op threads), and
* ``split``: the two columns in two gloo processes of one thread each (the slower rank's median),

on the same synthetic batch. Reported: per-version medians over the rounds, and new / old per
round with their median and range. Only APIs that every version has are used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r'''
import json, statistics, sys, time
sys.path.insert(0, {tree!r})
import torch, torch.nn.functional as F
import alexnet_mp
try:
    from alexnet_mp.parallel.spawn import run_workers
except ImportError:
    from alexnet_mp.spawn import run_workers

BATCH, STEPS, WARMUP, CLASSES = {batch}, {steps}, {warmup}, 1000

def timed(model, seed):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(BATCH, 3, 224, 224, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)
    times = []
    for i in range(WARMUP + STEPS):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    return times

def split_worker(rank, world):
    import torch.distributed as dist
    from alexnet_mp.parallel import split_across_processes
    torch.manual_seed(0)
    model = split_across_processes(dist.group.WORLD, num_classes=CLASSES)
    dist.barrier()
    return timed(model, 1)

if __name__ == "__main__":
    torch.manual_seed(0)
    single = statistics.median(timed(alexnet_mp.AlexNet(CLASSES), 1))
    split = max(statistics.median(t) for t in run_workers(split_worker, 2, threads=1))
    print("RESULT", json.dumps({{"single": single, "split": split, "version": alexnet_mp.__file__}}))
'''


def run_version(tree: Path, batch: int, steps: int, warmup: int) -> dict:
    script = Path(tree) / ".ab_child.py"
    script.write_text(_CHILD.format(tree=str(tree), batch=batch, steps=steps, warmup=warmup))
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=1800, cwd=tree)
    finally:
        script.unlink(missing_ok=True)
    if out.returncode:
        raise SystemExit(f"{tree}: the benchmark failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.split("RESULT", 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, type=Path, help="checkout of the version to compare against")
    p.add_argument("--new", default=Path("."), type=Path, help="checkout of the version measured (default: here)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the per-round figures here")
    a = p.parse_args()
    trees = {"old": a.old.resolve(), "new": a.new.resolve()}
    rounds = []
    for r in range(a.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        result = {name: run_version(trees[name], a.batch_size, a.steps, a.warmup) for name in order}
        rounds.append(result)
        print(f"[round {r + 1}] " + "  ".join(f"{n}: single {result[n]['single'] * 1e3:.1f} ms, split "
                                               f"{result[n]['split'] * 1e3:.1f} ms" for n in ("old", "new")), flush=True)
    print(f"\nbatch {a.batch_size}, {a.steps} timed steps, {a.rounds} rounds (medians; new / old per round):")
    summary = {}
    for key in ("single", "split"):
        ratios = [r["new"][key] / r["old"][key] for r in rounds]
        summary[key] = {"old_s": statistics.median(r["old"][key] for r in rounds),
                        "new_s": statistics.median(r["new"][key] for r in rounds),
                        "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}
        s = summary[key]
        print(f"  {key:<7} old {s['old_s'] * 1e3:7.1f} ms  new {s['new_s'] * 1e3:7.1f} ms  new/old {s['ratio']:.3f} "
              f"(range {s['ratio_range'][0]:.3f}-{s['ratio_range'][1]:.3f})")
    if a.json:
        Path(a.json).write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "rounds": rounds,
                                            "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
