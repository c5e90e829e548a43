"""Exact analytic figures for every strategy, all derived from :mod:`alexnet_mp.layers`.

The profiler puts its measurements beside these numbers. Nothing here is typed in: the
paper's exchanges come from ``layers.exchange_bytes``; the data-parallel gradient sizes
and the row-partitioned FC variant (docs/paper.md, "Communication") are derived here from
``layers.shapes()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Literal

from .. import layers as L
from ..parallel import plans

RING = "ring"


@dataclass(frozen=True, slots=True)
class Transfer:
    """One collective of one training step, as a rank sees it.

    ``payload`` is what the op is given per rank: for an all-gather or reduce-scatter the
    bytes sent to the other ranks (what :class:`~alexnet_mp.parallel.ExchangeStats`
    records); for an all-reduce the buffer reduced (the gradient bytes). ``wire`` is what
    a rank puts on the network for that payload.
    """

    name: str
    op: Literal["all-gather", "reduce-scatter", "all-reduce"]
    direction: Literal["forward", "backward"]
    payload: int
    wire: int


def ring_allreduce_wire(nbytes: int, world: int) -> int:
    """Bytes one rank sends in a ring all-reduce: reduce-scatter then all-gather, 2(W-1)/W."""
    return 2 * (world - 1) * nbytes // world


def paper_transfers(batch_size: int, *, num_classes: int = 1000, element_size: int = 4) -> list[Transfer]:
    """The paper's split: every exchange is an all-gather forward and a reduce-scatter backward."""
    sent = L.exchange_bytes(batch_size, num_classes=num_classes, element_size=element_size)
    return [Transfer(name, op, direction, n, n)
            for name, n in sent.items()
            for op, direction in (("all-gather", "forward"), ("reduce-scatter", "backward"))]


def layer_param_bytes(*, num_classes: int = 1000, element_size: int = 4) -> dict[str, int]:
    """Bytes of the whole net's weights and biases per layer (= its gradient bytes)."""
    return {s.layer.name: s.params * element_size for s in L.shapes(num_classes)}


def data_parallel_transfers(world: int, *, num_classes: int = 1000, element_size: int = 4) -> list[Transfer]:
    """Data parallelism: each layer's whole gradient all-reduced once per step, whatever the batch.

    Listed in the order backward produces them (fc8 first), one all-reduce per layer.
    """
    per_layer = layer_param_bytes(num_classes=num_classes, element_size=element_size)
    return [Transfer(f"{name}.grad", "all-reduce", "backward", n, ring_allreduce_wire(n, world))
            for name, n in reversed(per_layer.items())]


def hybrid_transfers(batch_size: int, replicas: int, *, num_classes: int = 1000,
                     element_size: int = 4) -> list[Transfer]:
    """D replicas of the split: the paper's exchanges at the replica's batch within each pair,
    and each column's per-layer gradients (half the layer) all-reduced over its D replicas."""
    per_layer = layer_param_bytes(num_classes=num_classes, element_size=element_size)
    grads = [Transfer(f"{name}.grad", "all-reduce", "backward", n // L.COLUMNS,
                      ring_allreduce_wire(n // L.COLUMNS, replicas))
             for name, n in reversed(per_layer.items())]
    return paper_transfers(batch_size // replicas, num_classes=num_classes, element_size=element_size) + grads


def plan_transfers(plan: str, batch_size: int, world: int, *, num_classes: int = 1000,
                   element_size: int = 4) -> list[Transfer]:
    """A plan's exchanges (:func:`alexnet_mp.parallel.plans.crossings`), each direction its collective:
    what a worker hands it (as ``ExchangeStats`` records) and what it puts on the wire."""
    result = []
    for c in plans.crossings(plans.get(plan), world, num_classes):
        for direction, n in c.bytes(batch_size, world, element_size).items():
            op = plans.OPS[c.kind][direction]
            if op:
                wire = ring_allreduce_wire(n, world) if op == "all-reduce" else n
                result.append(Transfer(c.name, op, direction, n, wire))
    return result


def plan_memory(plan: str, batch_size: int, world: int, *, num_classes: int = 1000,
                element_size: int = 4) -> dict[str, int]:
    """Bytes one worker of ``plan`` holds: parameters, gradients and momentum exact (a layer whole,
    or its slice; a layer by inputs keeps its whole bias), and its share of every layer's output."""
    p = plans.get(plan)
    local = batch_size // world if p.splits_batch else batch_size
    params = outputs = 0
    for s in L.shapes(num_classes):
        placed = p.of(s.layer.name)
        kept = s.neurons + (prod(s.next_shape) if s.layer.pool else 0)
        if placed == "replicated":
            params, outputs = params + s.params, outputs + kept * local
        elif placed == "outputs":
            params, outputs = params + s.params // world, outputs + kept // world * batch_size
        else:
            params, outputs = params + (s.params - s.layer.out) // world + s.layer.out, outputs + kept * batch_size
    return {"parameters": params * element_size, "gradients": params * element_size,
            "optimizer_state": params * element_size, "layer_outputs": outputs * element_size}


@dataclass(frozen=True, slots=True)
class FCPartition:
    """One fully connected layer split by columns (the paper) or by rows (docs/paper.md).

    By columns, each column gathers the whole input and computes its half of the outputs:
    it sends its half of the input. By rows, each column multiplies its own half of the
    input by its half of the weight's columns and the partial outputs are reduce-scattered:
    it sends (W-1)/W of the outputs. Either way every column ends with its half of the
    outputs, so the choice is free per layer.
    """

    name: str
    by_columns: int
    """Floats one column sends per sample when the layer gathers its input (the paper)."""
    by_rows: int
    """Floats one column sends per sample when the layer reduce-scatters its output."""

    @property
    def cheaper(self) -> Literal["columns", "rows", "same"]:
        if self.by_rows == self.by_columns:
            return "same"
        return "rows" if self.by_rows < self.by_columns else "columns"


def fc_partitions(num_classes: int = 1000, columns: int = L.COLUMNS) -> list[FCPartition]:
    """Both partitions of every FC layer, from the layer table."""
    gathered = {e.name: e.floats_per_sample * (columns - 1) for e in L.exchanges(num_classes, columns)}
    result = []
    for s in L.shapes(num_classes, columns):
        if s.layer.kind != "fc":
            continue
        # A reduce-scatter sends every other column its share of the partial outputs.
        rows = s.layer.out // columns * (columns - 1)
        result.append(FCPartition(s.layer.name, gathered[s.layer.name], rows))
    return result


def row_fc_bytes(batch_size: int, *, num_classes: int = 1000, element_size: int = 4,
                 choice: Literal["rows", "best"] = "best") -> dict[str, int]:
    """Bytes one column sends per exchange and direction with FC layers by rows.

    ``choice="rows"`` partitions every FC layer by rows; ``"best"`` picks the cheaper
    partition per layer (what a planner would pick). conv3 and the logits are as in
    the paper.
    """
    paper = L.exchange_bytes(batch_size, num_classes=num_classes, element_size=element_size)
    scale = batch_size * element_size
    result = dict(paper)
    for p in fc_partitions(num_classes):
        rows = p.by_rows * scale
        result[p.name] = rows if choice == "rows" else min(rows, paper[p.name])
    return result


def analytic_section(batch_size: int, *, num_classes: int = 1000, element_size: int = 4,
                     world: int = L.COLUMNS) -> dict:
    """The JSON ``analytic`` object: parameters and every strategy's bytes per step."""
    paper = L.exchange_bytes(batch_size, num_classes=num_classes, element_size=element_size)
    rows = row_fc_bytes(batch_size, num_classes=num_classes, element_size=element_size, choice="rows")
    best = row_fc_bytes(batch_size, num_classes=num_classes, element_size=element_size, choice="best")
    grads = layer_param_bytes(num_classes=num_classes, element_size=element_size)
    total_grads = sum(grads.values())
    return {
        "element_size": element_size,
        "params": {"total": L.total_params(num_classes), "column": L.column_params(num_classes),
                   "total_bytes": L.total_params(num_classes) * element_size,
                   "column_bytes": L.column_params(num_classes) * element_size},
        "paper": {
            "floats_per_sample": {e.name: e.floats_per_sample for e in L.exchanges(num_classes)},
            "bytes_per_direction": paper,
            "bytes_per_step": 2 * sum(paper.values()),
        },
        "row_fc": {
            "layers": [{"name": p.name, "by_columns": p.by_columns, "by_rows": p.by_rows, "cheaper": p.cheaper}
                       for p in fc_partitions(num_classes)],
            "rows_bytes_per_direction": rows,
            "rows_bytes_per_step": 2 * sum(rows.values()),
            "best_bytes_per_direction": best,
            "best_bytes_per_step": 2 * sum(best.values()),
        },
        "data_parallel": {
            "world": world,
            "algorithm": RING,
            "gradient_bytes_per_layer": grads,
            "gradient_bytes": total_grads,
            "wire_bytes_per_rank": ring_allreduce_wire(total_grads, world),
        },
    }


# --- memory per device -----------------------------------------------------------------

def layer_output_floats(num_classes: int = 1000) -> int:
    """Floats per sample of every layer's output in the whole net: each weight layer's output
    and, where one follows, its pooled output (what backward must keep at the least)."""
    return sum(s.neurons + (prod(s.next_shape) if s.layer.pool else 0) for s in L.shapes(num_classes))
