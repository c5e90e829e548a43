"""``alexnet-mp verify``: proof that the split computes the paper's single-device function.

Builds the single-device :class:`~alexnet_mp.model.AlexNet` from a seed, loads the same
weights into the split — within one process and across two worker processes — runs forward
and backward on one batch with dropout off, and compares logits, loss and every parameter's
gradient with a **float64 single-device reference**. The bytes each exchange sent are
checked against the analytic figure from the layer table.

Two modes (``--dtype``), each with a criterion that holds on any correct build:

* ``float64`` (the default): the split runs in float64 too. A correct split differs from
  the reference only by float64 rounding, amplified by the network's conditioning; the gate
  is ``rel <= 1e-10`` (:data:`FLOAT64_TOLERANCE`, derived below).
* ``float32``: the split runs in fp32 and so does a second single-device model. fp32
  rounding alone moves early-layer gradients by up to a few percent from float64 (max-pool
  and ReLU choices that are near-ties flip), so no fixed fp32 tolerance is CPU-independent.
  The split passes when its error is at most :data:`FLOAT32_FACTOR` times the single-device
  fp32 model's own error on that tensor (or the fp32 floor, whichever is larger): the same
  kind of rounding, not a different function.

``rel = ||a - b||_2 / ||b||_2`` is the gated figure; ``max_abs`` and ``max_rel = max|a - b| /
max|b|`` are printed beside it (element-wise ratios blow up where values are near zero).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import click
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import layers as L
from ..errors import UserError
from ..model import AlexNet
from ..parallel import DIRECTIONS, ExchangeStats, Placement, place_columns, place_column
from ..parallel import plans
from ..parallel.columns import merge_columns
from ..parallel.devices import rank_device
from ..parallel.planned import assemble, place_plan
from ..parallel.spawn import run_workers

SCHEMA = "alexnet-mp/verify/2"
DTYPES = ("float64", "float32")

FLOAT64_TOLERANCE = 1e-10
"""Gate on ``rel`` in float64: 1e6 x float64's unit roundoff, above the network's amplification
of rounding and far below any wrong split (derivation and measurements: docs/verify.md)."""

FLOAT32_FACTOR = 4.0
"""fp32 gate: the split's error against float64 may be this many times the single-device fp32
model's own error on the same tensor; both are the same function rounded in different
orders, a wrong split is off by O(1) (docs/verify.md)."""


def float32_floor(batch_size: int) -> float:
    """The least error fp32 is allowed anywhere: unit roundoff times the square root of the
    longest sum in the step (conv1's weight gradient adds batch x 55 x 55 terms)."""
    conv1 = L.shapes()[0]
    terms = batch_size * conv1.out_shape[1] * conv1.out_shape[2]
    return 2.0**-24 * math.sqrt(terms)


@dataclass(frozen=True, slots=True)
class Case:
    batch_size: int
    seed: int
    num_classes: int
    dtype: str = "float64"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def _strict_fp32() -> None:
    # TF32 would round matmuls to 10-bit mantissas on a GPU; the proof is about fp32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def reference(case: Case, device: torch.device, dtype: torch.dtype | None = None) -> AlexNet:
    """The single-device model with the seed's weights (drawn in fp32), dropout off."""
    torch.manual_seed(case.seed)
    return AlexNet(case.num_classes, dropout=0.0).to(device=device, dtype=dtype or case.torch_dtype)


def batch(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The test batch, drawn in fp32 so every dtype sees the same values."""
    g = torch.Generator().manual_seed(case.seed + 1)
    x = torch.randn((case.batch_size, *L.INPUT_SHAPE), generator=g)
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


def _outputs(model: torch.nn.Module, x, y, grads) -> dict[str, Any]:
    logits, loss = step(model, x, y)
    return {"logits": logits, "loss": loss, "grads": grads(model)}


def _single_grads(model: AlexNet) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().cpu() for n, p in model.named_parameters()}


def _grads(placement: Placement) -> dict[str, torch.Tensor]:
    return placement.whole(lambda p: p.grad)


def _stats_bytes(stats: ExchangeStats) -> dict[int, dict[str, dict[str, int]]]:
    return {c: {d: stats.bytes(c, d) for d in DIRECTIONS} for c in stats.columns()}


def _worker(rank: int, world: int, case: Case, gpus: int) -> dict[str, Any]:
    """One column of the split across processes (runs in a spawned worker); ``gpus``: 0 for the CPU."""
    _strict_fp32()
    device = rank_device(rank, world, gpus).device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    split = place_column(reference(case, torch.device("cpu")), dist.group.WORLD, device)
    x, y = batch(case)
    logits, loss = step(split, x.to(device, case.torch_dtype), y)
    return {"logits": logits, "loss": loss, "grads": split.own(lambda p: p.grad)[rank],
            "bytes": _stats_bytes(split.stats), "device": str(device), "backend": dist.get_backend()}


def _plan_worker(rank: int, world: int, case: Case, gpus: int, plan_name: str) -> dict[str, Any]:
    """One worker of a plan other than the paper's (runs in a spawned worker): its part of the batch
    where the plan splits it, the whole batch otherwise."""
    _strict_fp32()
    device = rank_device(rank, world, gpus).device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    plan = plans.get(plan_name)
    placed = place_plan(reference(case, torch.device("cpu")), plan, dist.group.WORLD, device)
    x, y = batch(case)
    if plan.splits_batch:
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    logits, loss = step(placed, x.to(device, case.torch_dtype), y)
    grads = [(s.name, s.offsets, s.param.grad.detach().cpu()) for s in placed.shards() if s.writer]
    return {"logits": logits, "loss": loss, "grads": grads, "bytes": _stats_bytes(placed.stats),
            "device": str(device), "backend": dist.get_backend()}


def _tensors(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {"logits": out["logits"], "loss": out["loss"], **{f"grad {n}": g for n, g in out["grads"].items()}}


def _judge(split: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], single: dict[str, torch.Tensor] | None,
           case: Case) -> dict[str, dict[str, float]]:
    """Each tensor's difference from the float64 reference and what it is allowed."""
    rows = {}
    floor = float32_floor(case.batch_size)
    for name, b in ref.items():
        row = difference(split[name], b)
        if single is None:
            row["allowed"] = FLOAT64_TOLERANCE
        else:
            row["single_rel"] = difference(single[name], b)["rel"]
            row["allowed"] = FLOAT32_FACTOR * max(row["single_rel"], floor)
        rows[name] = row
    return rows


def analytic_bytes(case: Case, plan: str = "paper", workers: int = L.COLUMNS) -> dict[str, dict[str, int]]:
    """Bytes each worker hands every exchange per direction, from the layer table."""
    size = torch.empty(0, dtype=case.torch_dtype).element_size()
    if plan == "paper":
        sent = L.exchange_bytes(case.batch_size, num_classes=case.num_classes, element_size=size)
        return {e: {d: n for d in DIRECTIONS} for e, n in sent.items()}
    return {c.name: c.bytes(case.batch_size, workers, size)
            for c in plans.crossings(plans.get(plan), workers, case.num_classes)}


def _exchanges(bytes_: dict, case: Case, plan: str = "paper", workers: int = L.COLUMNS) -> tuple[dict, list[str], bool]:
    analytic = analytic_bytes(case, plan, workers)
    table = {e: {d: {"analytic": analytic[e][d],
                     "measured": [bytes_.get(c, {}).get(d, {}).get(e, 0) for c in range(workers)]}
                 for d in DIRECTIONS} for e in analytic}
    exact = all(m == v["analytic"] for ex in table.values() for v in ex.values() for m in v["measured"])
    unexpected = sorted({e for per in bytes_.values() for d in per.values() for e in d} - set(analytic))
    return table, unexpected, exact


def _compare(name: str, out: dict[str, Any], bytes_: dict, ref: dict, single: dict | None, case: Case,
             extra: dict, plan: str = "paper", workers: int = L.COLUMNS) -> dict[str, Any]:
    tensors = _judge(_tensors(out), ref, single, case)
    exchanges, unexpected, exact = _exchanges(bytes_, case, plan, workers)
    within = all(t["rel"] <= t["allowed"] for t in tensors.values())
    return {"name": name, **extra, "tensors": tensors, "exchanges": exchanges, "unexpected_exchanges": unexpected,
            "worst": max(t["rel"] / t["allowed"] for t in tensors.values()), "bytes_exact": exact,
            "ok": within and exact and not unexpected}


def _check(batch_size: int, seed: int, num_classes: int, device: str, dtype: str) -> tuple[Case, str, int]:
    if batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer (the samples per step); got {batch_size}.")
    if num_classes < 2 or num_classes % L.COLUMNS:
        raise UserError(f"--num-classes must be an even number of at least 2 (fc8 splits into "
                        f"{L.COLUMNS} columns); got {num_classes}.")
    if not 0 <= seed < 2**63:
        raise UserError(f"--seed must be a whole number from 0 to 2**63 - 1; got {seed}.")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not accepted; use float64 or float32.")
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {device!r} is not accepted; use auto, cpu or cuda.")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and not gpus:
        raise UserError("--device cuda was asked for, but CUDA is not available here; use --device cpu or auto.")
    return Case(batch_size, seed, num_classes, dtype), ("cuda" if device == "auto" and gpus else device), gpus


def _processes(case: Case, device: str, gpus: int, ref: dict, single: dict | None) -> dict[str, Any]:
    """The paper's split on two worker processes, one column each."""
    # One GPU per rank: NCCL. Two ranks on one GPU: gloo with CUDA tensors (NCCL refuses).
    gpus_used = gpus if device == "cuda" else 0
    placed = rank_device(0, L.COLUMNS, gpus_used)
    results = run_workers(_worker, L.COLUMNS, (case, gpus_used), backend=placed.backend,
                          threads=None if gpus_used else 1)
    r0 = results[0]
    out = {"logits": r0["logits"], "loss": r0["loss"],
           "grads": {n: merge_columns([r["grads"][n] for r in results]) for n in r0["grads"]}}
    bytes_ = {c: b for r in results for c, b in r["bytes"].items()}
    run_ = _compare("processes", out, bytes_, ref, single, case,
                    {"devices": [r["device"] for r in results], "backend": r0["backend"]})
    run_["ranks_agree"] = all(torch.equal(r["logits"], r0["logits"]) for r in results)
    run_["ok"] = run_["ok"] and run_["ranks_agree"]
    return run_


def _plan_processes(case: Case, device: str, gpus: int, ref: dict, single: dict | None, plan: str,
                    workers: int) -> dict[str, Any]:
    """A plan other than the paper's on ``workers`` worker processes; the whole network's gradients
    assembled from every worker's parts at their offsets (each element written once)."""
    gpus_used = gpus if device == "cuda" else 0
    results = run_workers(_plan_worker, workers, (case, gpus_used, plan),
                          backend=rank_device(0, workers, gpus_used).backend, threads=None if gpus_used else 1)
    return plan_report(results, case, ref, single, plan)


def plan_report(results: list[dict[str, Any]], case: Case, ref: dict, single: dict | None, plan: str) -> dict[str, Any]:
    """Every worker's results of a plan, judged against the reference."""
    r0, workers = results[0], len(results)
    split = plans.get(plan).splits_batch
    out = {"logits": torch.cat([r["logits"] for r in results]) if split else r0["logits"],
           "loss": torch.stack([r["loss"] for r in results]).mean() if split else r0["loss"],
           "grads": assemble([g for r in results for g in r["grads"]], case.num_classes)}
    bytes_ = {c: b for r in results for c, b in r["bytes"].items()}
    run_ = _compare("processes", out, bytes_, ref, single, case,
                    {"devices": [r["device"] for r in results], "backend": r0["backend"]}, plan, workers)
    if not split:  # every worker holds every logit
        run_["ranks_agree"] = all(torch.equal(r["logits"], r0["logits"]) for r in results)
        run_["ok"] = run_["ok"] and run_["ranks_agree"]
    return run_


def run(batch_size: int = 8, seed: int = 0, num_classes: int = 1000, *, device: str = "auto",
        processes: bool = True, dtype: str = "float64", plan: str = "paper", workers: int = L.COLUMNS) -> dict[str, Any]:
    """Run every comparison and return the JSON-ready report (schema ``SCHEMA``)."""
    case, device, gpus = _check(batch_size, seed, num_classes, device, dtype)
    _check_plan(plan, workers, case, processes)
    _strict_fp32()
    x, y = batch(case)
    # Within one process: on cuda:0 and cuda:1 if there are two GPUs, both on one GPU, or CPU.
    local = [torch.device("cuda", 0), torch.device("cuda", min(1, gpus - 1))] if device == "cuda" \
        else [torch.device("cpu")] * 2
    ref_model = reference(case, local[0], torch.float64)
    ref = _tensors(_outputs(ref_model, x.to(local[0], torch.float64), y, _single_grads))
    single = None
    if case.dtype == "float32":
        single = _tensors(_outputs(reference(case, local[0]), x.to(local[0]), y, _single_grads))
    runs = []
    if plan == "paper":
        split = place_columns(ref_model.to(case.torch_dtype), local)  # the reference itself, cut in two
        runs.append(_compare("one_process", _outputs(split, x.to(local[0], case.torch_dtype), y, _grads),
                             _stats_bytes(split.stats), ref, single, case,
                             {"devices": [str(d) for d in local], "backend": None}))
        del split
        if processes:
            runs.append(_processes(case, device, gpus, ref, single))
    else:
        runs.append(_plan_processes(case, device, gpus, ref, single, plan, workers))
    criterion = ({"kind": "absolute", "relative": FLOAT64_TOLERANCE} if single is None else
                 {"kind": "relative_to_single_fp32", "factor": FLOAT32_FACTOR, "floor": float32_floor(batch_size)})
    return {"schema": SCHEMA, "ok": all(r["ok"] for r in runs), "batch_size": batch_size, "seed": seed,
            "num_classes": num_classes, "dtype": dtype, "plan": plan, "workers": workers,
            "reference": "single-device AlexNet in float64", "criterion": criterion, "torch": torch.__version__,
            "runs": {r.pop("name"): r for r in runs}}


def _check_plan(plan: str, workers: int, case: Case, processes: bool) -> None:
    if plan not in plans.PLANS:
        raise UserError(f"--plan {plan!r} is not accepted: one of {', '.join(plans.PLANS)}.")
    why = plans.get(plan).workers_allowed(workers, case.num_classes)
    if why:
        raise UserError(f"--workers {workers} is not accepted for plan {plan!r}: {why}.")
    if plans.get(plan).splits_batch and case.batch_size % workers:
        raise UserError(f"--batch-size {case.batch_size} is not accepted for plan {plan!r}: each of the "
                        f"{workers} workers runs an equal part of the batch, so use a multiple of {workers}.")
    if plan != "paper" and not processes:
        raise UserError(f"--one-process-only is not accepted with --plan {plan}: that plan runs on worker "
                        "processes only (the paper's split also runs within one process).")


def _criterion_line(report: dict[str, Any]) -> str:
    c = report["criterion"]
    if c["kind"] == "absolute":
        return f"criterion: rel (L2) <= {c['relative']:g} against the float64 single-device model"
    return (f"criterion: rel (L2) against the float64 single-device model <= {c['factor']:g} x the fp32 "
            f"single-device model's own rel (at least {c['floor']:.1e})")


def format_report(report: dict[str, Any]) -> str:
    plan = report.get("plan", "paper")
    where = "" if plan == "paper" else f", plan {plan} on {report['workers']} workers"
    lines = [f"alexnet-mp verify: batch {report['batch_size']}, seed {report['seed']}, "
             f"{report['num_classes']} classes, split in {report['dtype']}{where}", _criterion_line(report)]
    fp32 = report["criterion"]["kind"] != "absolute"
    for name, r in report["runs"].items():
        where = ", ".join(r["devices"]) + (f" ({r['backend']})" if r["backend"] else "")
        lines += ["", f"split {name.replace('_', ' ')} [{where}]: {'OK' if r['ok'] else 'FAILED'}",
                  f"  {'tensor':<20}{'max abs':>11}{'max rel':>11}{'rel (L2)':>11}"
                  + (f"{'fp32 single':>13}" if fp32 else "") + f"{'allowed':>11}"]
        for label, d in r["tensors"].items():
            flag = "" if d["rel"] <= d["allowed"] else "  <-- over"
            lines.append(f"  {label:<20}{d['max_abs']:>11.2e}{d['max_rel']:>11.2e}{d['rel']:>11.2e}"
                         + (f"{d['single_rel']:>13.2e}" if fp32 else "") + f"{d['allowed']:>11.1e}{flag}")
        who = "column" if report.get("plan", "paper") == "paper" else "worker"
        lines.append(f"  {'exchange':<12}{'direction':<10}{'analytic B':>12}"
                     + "".join(f"{f'{who} {i} B':>12}" for i in range(len(r["devices"]))))
        for e, per in r["exchanges"].items():
            for d, v in per.items():
                flag = "" if all(m == v["analytic"] for m in v["measured"]) else "  <-- differs"
                lines.append(f"  {e:<12}{d:<10}{v['analytic']:>12,}" + "".join(f"{m:>12,}" for m in v["measured"]) + flag)
        if r["unexpected_exchanges"]:
            lines.append(f"  unexpected traffic: {', '.join(r['unexpected_exchanges'])}")
        if "ranks_agree" in r and not r["ranks_agree"]:
            lines.append("  the two ranks returned different logits")
    lines += ["", "verified: the split computes the single-device function" if report["ok"]
              else "NOT verified: see the rows marked above"]
    return "\n".join(lines)


@click.command("verify")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Samples in the test batch.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the weights and the batch.")
@click.option("--num-classes", type=int, default=1000, show_default=True, help="Outputs of fc8 (even).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when present. Across processes: NCCL with a GPU per rank; two ranks sharing one "
                   "GPU talk over gloo with CUDA tensors.")
@click.option("--one-process-only", is_flag=True, help="Skip the run across two worker processes.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float64", show_default=True,
              help=f"float64: the split in float64, rel <= {FLOAT64_TOLERANCE:g}. float32: the split in fp32, "
                   f"within {FLOAT32_FACTOR:g}x the single-device fp32 model's own error against float64.")
@click.option("--plan", default="paper", show_default=True, metavar="NAME",
              help=f"How the layers are placed: {', '.join(plans.PLANS)} (docs/architecture.md).")
@click.option("--workers", type=int, default=L.COLUMNS, show_default=True,
              help="Worker processes of the plan (the paper and megatron: 2; one-weird-trick: any that divides "
                   "the layers and the batch).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (docs/verify.md).")
def verify_command(batch_size: int, seed: int, num_classes: int, device: str, one_process_only: bool, dtype: str,
                   plan: str, workers: int, as_json: bool) -> None:
    """Prove that the split computes the same function as the single-device AlexNet."""
    report = run(batch_size, seed, num_classes, device=device, processes=not one_process_only, dtype=dtype,
                 plan=plan, workers=workers)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    raise SystemExit(0 if report["ok"] else 1)
