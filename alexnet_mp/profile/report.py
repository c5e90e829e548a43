"""The report for people (a terminal table), for machines (JSON) and for TensorBoard."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

MiB = 2**20


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MiB:,.1f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _rank_label(r: dict) -> str:
    return f"rank {r['rank']}" + (f" (column {r['column']})" if r["column"] is not None else "")


def format_strategy(s: dict) -> list[str]:
    """Per-device memory, FLOPs and times; then the exchange table, measured beside analytic."""
    where = f"{s['processes']} process{'es' if s['processes'] > 1 else ''}" + (f", {s['backend']}" if s["backend"] else "")
    lines = [f"{s['name']} — {s['summary']} [{where}, batch {s['batch_per_device']} per device]"]
    head = (f"  {'device':<18}{'params':>9}{'grads':>9}{'optim':>9}{'activ':>9}{'peak':>9}{'RSS':>9}"
            f"{'GFLOP':>9}{'step s':>9}{'compute':>9}{'comm':>8}{'data':>8}")
    lines += [head + "   (MiB; s: medians; RSS: reserved on CUDA)"]
    for r in s["ranks"]:
        m, t = r["memory"], r["time"]
        rss = m["cuda_max_reserved"] if m["cuda_max_reserved"] is not None else m["peak_rss"]
        lines.append(f"  {_rank_label(r):<18}{_mib(m['parameters']):>9}{_mib(m['gradients']):>9}"
                     f"{_mib(m['optimizer_state']):>9}{_mib(m['activations']):>9}{_mib(m['peak_tensors']):>9}"
                     f"{_mib(rss):>9}{r['flops'] / 1e9:>9,.1f}{t['step']:>9.3f}{t['compute']:>9.3f}"
                     f"{t['communication']:>8.3f}{t['data']:>8.3f}")
    if s["balance"]:
        b = s["balance"]
        lines.append(f"  balance (max/min over devices): compute time {b['compute_time']:.3f}x, "
                     f"peak tensors {b['peak_tensors']:.3f}x, FLOPs {b['flops']:.3f}x")
    if s["exchanges"]:
        ranks = range(len(s["ranks"]))
        lines.append(f"  {'exchange':<11}{'op':<15}{'dir':<9}{'analytic B':>13}"
                     + "".join(f"{f'rank {i} B':>13}" for i in ranks)
                     + f"{'ratio':>7}{'calls':>7}{'ms':>9}{'hidden':>9}{'MB/s':>9}"
                     + "   (ms waited, ms hidden behind compute, MB/s: rank 0, per step)")
        for e in s["exchanges"]:
            ratio = e["ratio"][0]
            bw = e["bandwidth"][0]
            lines.append(f"  {e['name']:<11}{e['op']:<15}{e['direction']:<9}{e['analytic_bytes']:>13,}"
                         + "".join(f"{b:>13,}" for b in e["measured_bytes"])
                         + f"{'—' if ratio is None else f'{ratio:.3f}':>7}{e['calls'][0]:>7}"
                         + f"{_ms(e['seconds'][0]):>9}{_ms(e.get('hidden_seconds', [0.0])[0]):>9}"
                         + f"{'—' if bw is None else f'{bw / 1e6:,.0f}':>9}"
                         + ("" if e["exact"] else "   <-- differs"))
        waited = sum(e["seconds"][0] for e in s["exchanges"])
        hidden = sum(e.get("hidden_seconds", [0.0])[0] for e in s["exchanges"])
        if hidden:
            lines.append(f"  exchange time on rank 0: {_ms(waited)} ms waited, {_ms(hidden)} ms in flight behind "
                         f"compute ({hidden / (hidden + waited):.0%} hidden)")
        lines.append(f"  bytes per device per step: {s['bytes_per_step']:,} measured, "
                     f"{s['analytic_bytes_per_step']:,} analytic ({'exact' if s['exact'] else 'DIFFERENT'}); "
                     f"on the wire: {s['wire_bytes_per_step']:,}")
    else:
        lines.append("  nothing crosses between devices")
    return lines


def format_row_fc(a: dict) -> list[str]:
    """The paper's FC partition beside the row-partitioned variant (analytic only)."""
    paper, rows, best = (a["paper"]["bytes_per_direction"], a["row_fc"]["rows_bytes_per_direction"],
                         a["row_fc"]["best_bytes_per_direction"])
    lines = ["FC layers by columns (the paper) or by rows (docs/paper.md), analytic, bytes one column "
             "sends per direction per step:",
             f"  {'exchange':<10}{'by columns':>14}{'by rows':>14}{'cheaper per layer':>20}"]
    for name in paper:
        lines.append(f"  {name:<10}{paper[name]:>14,}{rows[name]:>14,}{best[name]:>20,}")
    lines.append(f"  {'per step':<10}{a['paper']['bytes_per_step']:>14,}{a['row_fc']['rows_bytes_per_step']:>14,}"
                 f"{a['row_fc']['best_bytes_per_step']:>20,}   (both directions)")
    return lines


def format_comparison(report: dict) -> list[str]:
    c = report["comparison"]
    lines = ["Side by side (per device):",
             f"  {'strategy':<15}{'peak MiB':>10}{'params MiB':>12}{'bytes/step':>15}{'wire B/step':>15}{'step s':>9}"]
    for r in c["rows"]:
        lines.append(f"  {r['name']:<15}{_mib(r['peak_tensors_per_device']):>10}{_mib(r['parameters_per_device']):>12}"
                     f"{r['bytes_per_step']:>15,}{r['wire_bytes_per_step']:>15,}{r['step_time']:>9.3f}")
    if c["verdict"]:
        lines.append(f"verdict: {c['verdict']}")
    return lines


def format_report(report: dict) -> str:
    cfg = report["config"]
    threads = (f", {cfg['cpu_threads']} CPU threads per strategy (1 per rank; single gets all)"
               if cfg["cpu_threads"] else "")
    lines = [f"alexnet-mp profile: batch {cfg['batch_size']}, {cfg['steps']} timed step(s) after {cfg['warmup']} "
             f"warm-up, data {cfg['data']}, {cfg['device']}{threads}, launched by {cfg['launcher']}, "
             f"torch {report['environment']['torch']}"]
    for s in report["strategies"].values():
        lines += ["", *format_strategy(s)]
    lines += ["", *format_row_fc(report["analytic"])]
    if len(report["strategies"]) > 1:
        lines += ["", *format_comparison(report)]
    return "\n".join(lines)


# --- JSON ------------------------------------------------------------------------------

def schema() -> dict:
    """The JSON Schema of ``--json`` files (``alexnet_mp/profile/schema.json``)."""
    return json.loads(resources.files(__package__).joinpath("schema.json").read_text())


def write_json(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


# --- TensorBoard -----------------------------------------------------------------------

COMPARED = {"memory/peak_tensors_per_device(MiB)": ("peak_tensors_per_device", MiB),
            "memory/parameters_per_device(MiB)": ("parameters_per_device", MiB),
            "comm/bytes_per_step(MB)": ("bytes_per_step", 1e6),
            "time/step(s)": ("step_time", 1)}


def write_tensorboard(report: dict, logdir: str | Path) -> None:
    """Tables as text in ``logdir``; one run per strategy under ``logdir/<strategy>`` whose
    scalars are plotted against the batch size, so runs at several batch sizes draw lines
    and the strategies overlay on one chart per metric."""
    from torch.utils.tensorboard import SummaryWriter

    logdir = Path(logdir)
    batch = report["config"]["batch_size"]
    with SummaryWriter(str(logdir)) as w:
        w.add_text("profile/report", _code(format_report(report)), batch)
        for s in report["strategies"].values():
            w.add_text(f"profile/{s['name']}", _code("\n".join(format_strategy(s))), batch)
        w.add_text("profile/verdict", report["comparison"]["verdict"] or "(one strategy)", batch)
        w.add_custom_scalars({"profile: strategies side by side (x = batch size)": {
            key: ["Multiline", [key]] for key in COMPARED}})
    rows = {r["name"]: r for r in report["comparison"]["rows"]}
    for name, s in report["strategies"].items():
        with SummaryWriter(str(logdir / name)) as w:
            for key, (field, unit) in COMPARED.items():
                w.add_scalar(key, rows[name][field] / unit, batch)
            for r in s["ranks"]:
                w.add_scalar(f"rank{r['rank']}/flops(GFLOP)", r["flops"] / 1e9, batch)
                w.add_scalar(f"rank{r['rank']}/activations(MiB)", r["memory"]["activations"] / MiB, batch)
                for part in ("compute", "communication", "data"):
                    w.add_scalar(f"rank{r['rank']}/time_{part}(s)", r["time"][part], batch)


def _code(text: str) -> str:
    # TensorBoard renders text as Markdown; indenting by four spaces keeps the columns.
    return "\n".join("    " + line for line in text.splitlines())
