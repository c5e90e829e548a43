"""``alexnet-mp verify``: proof that the split computes the paper's single-device function.

Builds the single-device :class:`~alexnet_mp.model.AlexNet` from a seed, loads the same
weights into the split — across two worker processes and within one process — runs
forward and backward on the same batch with dropout off, and compares logits, loss and
every parameter's gradient. The gated figure is the normwise relative difference
``rel = ||a - b||_2 / ||b||_2`` with the single-device model as ``b``; ``max_abs`` and
``max_rel = max|a - b| / max|b|`` are reported beside it. (Element-wise ratios blow up on
values near zero, and the max-norm ratio of a gradient summed over B*27*27 terms sits at
the fp32 noise floor of ~1e-5 by itself: grouped and split convolutions sum in different
orders.)
The bytes each exchange sent are checked against the analytic figure from the layer table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import layers as L
from .convert import from_columns
from .errors import UserError
from .exchange import DIRECTIONS, ExchangeStats
from .model import AlexNet
from .parallel import SplitAlexNet, split_across_processes, split_in_one_process
from .spawn import run_workers

SCHEMA = "alexnet-mp/verify/1"
RELATIVE_TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
"""The gated ``rel`` per dtype. float64 makes the proof independent of fp32 rounding, which
on a GPU moves early-layer gradients of *either* model by ~1e-2 from float64 on random
data (benchmarks/gpu_conv2_grad.py) and so can separate the two fp32 models by ~1e-4."""


@dataclass(frozen=True, slots=True)
class Case:
    batch_size: int
    seed: int
    num_classes: int
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def _strict_fp32() -> None:
    # TF32 would make the GPU comparison ~1e-3; the proof is about fp32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def reference(case: Case, device: torch.device) -> AlexNet:
    """The single-device model with the seed's weights, dropout off."""
    torch.manual_seed(case.seed)
    return AlexNet(case.num_classes, dropout=0.0).to(device=device, dtype=case.torch_dtype)


def batch(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(case.seed + 1)
    x = torch.randn((case.batch_size, *L.INPUT_SHAPE), generator=g).to(case.torch_dtype)
    y = torch.randint(0, case.num_classes, (case.batch_size,), generator=g)
    return x, y


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward; returns (logits, loss) on the CPU."""
    logits = model(x)
    loss = F.cross_entropy(logits, y.to(logits.device))
    loss.backward()
    return logits.detach().cpu(), loss.detach().cpu()


def difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.double().cpu(), b.double().cpu()
    abs_diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    norm = torch.linalg.vector_norm(b).item()
    l2 = torch.linalg.vector_norm(a - b).item()
    return {"max_abs": abs_diff, "max_rel": abs_diff / scale if scale > 0 else abs_diff,
            "rel": l2 / norm if norm > 0 else l2}


def _split_grads(split: SplitAlexNet) -> dict[int, dict[str, torch.Tensor]]:
    return {c.index: {n: p.grad.detach().cpu() for n, p in c.named_parameters()} for c in split.columns.values()}


def _stats_bytes(stats: ExchangeStats) -> dict[int, dict[str, dict[str, int]]]:
    return {c: {d: stats.bytes(c, d) for d in DIRECTIONS} for c in stats.columns()}


def _worker(rank: int, world: int, case: Case, device_kind: str) -> dict[str, Any]:
    """One column of the split across processes (runs in a spawned worker)."""
    _strict_fp32()
    device = torch.device("cuda", rank) if device_kind == "cuda" else torch.device("cpu")
    state = reference(case, torch.device("cpu")).state_dict()
    split = split_across_processes(dist.group.WORLD, device=device, num_classes=case.num_classes,
                                   dropout=0.0).to(case.torch_dtype)
    split.load_reference_state(state)
    x, y = batch(case)
    logits, loss = step(split, x.to(device), y)
    return {"logits": logits, "loss": loss, "grads": _split_grads(split),
            "bytes": _stats_bytes(split.stats), "device": str(device),
            "backend": dist.get_backend()}


def _compare(name: str, logits, loss, grads: dict[str, torch.Tensor], bytes_: dict,
             ref: dict[str, Any], case: Case, extra: dict) -> dict[str, Any]:
    analytic = L.exchange_bytes(case.batch_size, num_classes=case.num_classes,
                                element_size=torch.empty(0, dtype=case.torch_dtype).element_size())
    exchanges = {}
    for e in analytic:
        exchanges[e] = {d: {"analytic": analytic[e],
                            "measured": [bytes_.get(c, {}).get(d, {}).get(e, 0) for c in range(L.COLUMNS)]}
                        for d in DIRECTIONS}
    bytes_ok = all(m == v["analytic"] for ex in exchanges.values() for v in ex.values() for m in v["measured"])
    # nothing but the table's exchanges may cross
    unexpected = sorted({e for per in bytes_.values() for d in per.values() for e in d} - set(analytic))
    result = {
        "name": name, **extra,
        "logits": difference(logits, ref["logits"]),
        "loss": difference(loss, ref["loss"]),
        "grads": {n: difference(grads[n], ref["grads"][n]) for n in ref["grads"]},
        "exchanges": exchanges,
        "unexpected_exchanges": unexpected,
    }
    diffs = [result["logits"], result["loss"], *result["grads"].values()]
    result["rel"] = max(d["rel"] for d in diffs)
    result["ok"] = bytes_ok and not unexpected and result["rel"] <= RELATIVE_TOLERANCE[case.dtype]
    return result


def run(batch_size: int = 8, seed: int = 0, num_classes: int = 1000, *,
        device: str = "auto", processes: bool = True, dtype: str = "float32") -> dict[str, Any]:
    """Run every comparison and return the JSON-ready report (schema ``SCHEMA``)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer (the samples per step); got {batch_size}.")
    if num_classes < 2 or num_classes % L.COLUMNS:
        raise UserError(f"--num-classes must be an even number of at least 2 (fc8 splits into "
                        f"{L.COLUMNS} columns); got {num_classes}.")
    _strict_fp32()
    if dtype not in RELATIVE_TOLERANCE:
        raise UserError(f"--dtype {dtype!r} is not accepted; use float32 or float64.")
    case = Case(batch_size, seed, num_classes, dtype)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        raise UserError("--device cuda was asked for, but CUDA is not available here; use --device cpu or auto.")
    x, y = batch(case)
    runs = []

    def reference_on(dev: torch.device) -> dict[str, Any]:
        ref = reference(case, dev)
        logits, loss = step(ref, x.to(dev), y)
        return {"model": ref, "logits": logits, "loss": loss,
                "grads": {n: p.grad.detach().cpu() for n, p in ref.named_parameters()}}

    # Within one process: on cuda:0 and cuda:1 if there are two GPUs, both on one GPU, or CPU.
    local_devices = ([torch.device("cuda", 0), torch.device("cuda", min(1, gpus - 1))]
                     if device == "cuda" else [torch.device("cpu")] * 2)
    ref = reference_on(local_devices[0])
    split = split_in_one_process(local_devices, num_classes=num_classes, dropout=0.0).to(case.torch_dtype)
    split.load_reference_state(ref["model"].state_dict())
    logits, loss = step(split, x, y)
    grads = from_columns([g for _, g in sorted(_split_grads(split).items())])
    runs.append(_compare("one_process", logits, loss, grads, _stats_bytes(split.stats), ref, case,
                         {"devices": [str(d) for d in local_devices], "backend": None}))
    del split

    if processes:
        # NCCL needs one GPU per rank; with fewer than two GPUs the ranks talk over gloo on CPU.
        kind = "cuda" if device == "cuda" and gpus >= 2 else "cpu"
        backend = "nccl" if kind == "cuda" else "gloo"
        if kind == "cpu":
            # The workers run one intra-op thread each (as under torchrun); the reference
            # does the same, so both sum in the same order and no ReLU flips on an ulp.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                ref = reference_on(torch.device("cpu"))
            finally:
                torch.set_num_threads(threads)
        results = run_workers(_worker, L.COLUMNS, (case, kind), backend=backend, threads=1 if kind == "cpu" else None)
        r0 = results[0]
        grads = from_columns([r["grads"][rank] for rank, r in enumerate(results)])
        bytes_ = {c: b for r in results for c, b in r["bytes"].items()}
        same = all(torch.equal(r["logits"], r0["logits"]) for r in results)
        run_ = _compare("processes", r0["logits"], r0["loss"], grads, bytes_, ref, case,
                        {"devices": [r["device"] for r in results], "backend": r0["backend"]})
        run_["ranks_agree"] = same
        run_["ok"] = run_["ok"] and same
        runs.append(run_)

    return {"schema": SCHEMA, "ok": all(r["ok"] for r in runs), "batch_size": batch_size, "seed": seed,
            "num_classes": num_classes, "dtype": dtype, "tolerance": {"relative": RELATIVE_TOLERANCE[dtype]},
            "torch": torch.__version__, "runs": {r.pop("name"): r for r in runs}}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"alexnet-mp verify: batch {report['batch_size']}, seed {report['seed']}, "
             f"{report['num_classes']} classes, {report['dtype']}, tolerance: rel (L2) <= {report['tolerance']['relative']:g}"]
    for name, r in report["runs"].items():
        where = ", ".join(r["devices"]) + (f" ({r['backend']})" if r["backend"] else "")
        lines.append("")
        lines.append(f"split {name.replace('_', ' ')} [{where}] vs single-device AlexNet: "
                     f"{'OK' if r['ok'] else 'FAILED'}")
        lines.append(f"  {'tensor':<20}{'max abs':>12}{'max rel':>12}{'rel (L2)':>12}")
        rows = [("logits", r["logits"]), ("loss", r["loss"])] + [(f"grad {n}", d) for n, d in r["grads"].items()]
        for label, d in rows:
            flag = "" if d["rel"] <= report["tolerance"]["relative"] else "  <-- over tolerance"
            lines.append(f"  {label:<20}{d['max_abs']:>12.2e}{d['max_rel']:>12.2e}{d['rel']:>12.2e}{flag}")
        lines.append(f"  {'exchange':<10}{'direction':<10}{'analytic B':>12}{'column 0 B':>12}{'column 1 B':>12}")
        for e, per in r["exchanges"].items():
            for d, v in per.items():
                flag = "" if all(m == v["analytic"] for m in v["measured"]) else "  <-- differs"
                lines.append(f"  {e:<10}{d:<10}{v['analytic']:>12,}" + "".join(f"{m:>12,}" for m in v["measured"]) + flag)
        if r["unexpected_exchanges"]:
            lines.append(f"  unexpected traffic: {', '.join(r['unexpected_exchanges'])}")
        if "ranks_agree" in r and not r["ranks_agree"]:
            lines.append("  the two ranks returned different logits")
    lines.append("")
    lines.append("verified: the split computes the single-device function" if report["ok"]
                 else "NOT verified: see the rows marked above")
    return "\n".join(lines)


@click.command("verify")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Samples in the test batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights and the batch.")
@click.option("--num-classes", type=int, default=1000, show_default=True, help="Outputs of fc8 (even).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when present. Across processes: NCCL with two GPUs, else gloo on CPU.")
@click.option("--one-process-only", is_flag=True, help="Skip the run across two worker processes.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="float64 proves the function free of fp32 rounding (tolerance 1e-10).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (docs/verify.md).")
def verify_command(batch_size: int, seed: int, num_classes: int, device: str, one_process_only: bool, dtype: str,
                   as_json: bool) -> None:
    """Prove that the split computes the same function as the single-device AlexNet."""
    report = run(batch_size, seed, num_classes, device=device, processes=not one_process_only, dtype=dtype)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    raise SystemExit(0 if report["ok"] else 1)
