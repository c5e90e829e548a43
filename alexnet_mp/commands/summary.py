"""``alexnet-mp summary``: the paper's Figure 2 as a table, derived from the layer table."""

from __future__ import annotations

import json

import click

from .. import layers as L


def rows(num_classes: int = 1000) -> list[dict]:
    """One row per weight layer: shapes, neurons and parameters, whole and per column."""
    exchanged = {e.name: e for e in L.exchanges(num_classes)}
    out = []
    for s in L.shapes(num_classes):
        name = s.layer.name
        column_out = (s.column_out, *s.out_shape[1:])
        out.append({
            "layer": name,
            "kernel": f"{s.layer.kernel}x{s.layer.kernel}/{s.layer.stride}" if s.layer.kind == "conv" else "",
            "sees": s.layer.sees,
            "exchange_before": (f"all-gather {exchanged[name].floats_per_sample:,} floats/sample/column"
                                if name in exchanged else ""),
            "output": list(s.out_shape),
            "column_output": list(column_out),
            "neurons": s.neurons,
            "paper_printed_neurons": L.PAPER_NEURONS_PRINTED.get(name),
            "params": s.params,
            "column_params": s.column_params,
        })
    return out


def _shape(shape: list[int]) -> str:
    return "x".join(str(n) for n in shape)


def format_table(num_classes: int = 1000) -> str:
    table = rows(num_classes)
    head = (f"{'layer':<6}{'kernel':<9}{'output (whole)':<16}{'per column':<15}{'neurons':>10}"
            f"{'params':>13}{'per column':>13}  exchange before the layer")
    lines = ["AlexNet (Krizhevsky, Sutskever, Hinton 2012), two columns — Figure 2 as a table", "", head,
             "-" * len(head)]
    for r in table:
        mark = "*" if r["paper_printed_neurons"] else ""
        lines.append(f"{r['layer']:<6}{r['kernel']:<9}{_shape(r['output']):<16}{_shape(r['column_output']):<15}"
                     f"{r['neurons']:>9,}{mark:1}{r['params']:>13,}{r['column_params']:>13,}  "
                     f"{r['exchange_before'] or '— (own column only)'}")
    logits = L.exchanges(num_classes)[-1]
    lines += ["-" * len(head),
              f"{'total':<46}{sum(r['neurons'] for r in table):>9,} {L.total_params(num_classes):>13,}"
              f"{L.column_params(num_classes):>13,}",
              f"after fc8: all-gather of the logits, {logits.floats_per_sample:,} floats/sample/column, "
              "so each column computes the loss over all classes.", ""]
    for name, printed in L.PAPER_NEURONS_PRINTED.items():
        actual = next(r["neurons"] for r in table if r["layer"] == name)
        lines.append(f"* The paper prints {printed:,} neurons for {name}; its own layer size gives "
                     f"{_shape(next(r['output'] for r in table if r['layer'] == name))} = {actual:,}. "
                     "The other counts match the paper.")
    lrn, pooled = L.LRN, [s.layer.name for s in L.shapes(num_classes) if s.layer.pool]
    lines.append(f"LRN within each column's maps (n={lrn.size}, k={lrn.k:g}, alpha={lrn.alpha:g} on the sum, "
                 f"beta={lrn.beta:g}) after {', '.join(s.layer.name for s in L.shapes(num_classes) if s.layer.lrn)}; "
                 f"overlapping max pooling {L.POOL_KERNEL}x{L.POOL_KERNEL}/{L.POOL_STRIDE} after {', '.join(pooled)}.")
    return "\n".join(lines)


@click.command("summary")
@click.option("--num-classes", type=int, default=1000, show_default=True, help="Outputs of fc8 (even).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows and totals as JSON.")
def summary_command(num_classes: int, as_json: bool) -> None:
    """The paper's Figure 2: per layer and per column shapes, neurons, parameters, exchanges."""
    from ..errors import UserError

    try:
        L.layers(num_classes)
    except ValueError as err:
        raise UserError(f"--num-classes {num_classes}: {err}.") from None
    if as_json:
        click.echo(json.dumps({"layers": rows(num_classes), "total_params": L.total_params(num_classes),
                               "column_params": L.column_params(num_classes)}, indent=2))
    else:
        click.echo(format_table(num_classes))
