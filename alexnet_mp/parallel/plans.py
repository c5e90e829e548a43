"""Plans: how each weight layer is placed over W workers, and the crossings that follow.

A plan is data: for every weight layer of the table (:mod:`alexnet_mp.layers`) it says whether
each worker holds the whole layer (``replicated``, running its own part of the batch), a slice of
its outputs (``outputs``: the layer's dim 0, column-parallel) or a slice of its inputs (``inputs``:
dim 1, row-parallel). Which exchange each activation needs is derived from that, layer by layer
(:func:`crossings`), and so are the analytic bytes. Three plans:

* ``paper`` — the 2012 split: every layer by outputs over the two columns. Its placement is
  :class:`~.placements.ColumnParallel`; the derivation here gives the same five exchanges as
  ``layers.exchanges()``.
* ``one-weird-trick`` — Krizhevsky 2014: the convolutions replicated, each worker its part of
  the batch, their gradients summed across workers; fc6-fc8 by outputs over the whole batch,
  after the workers exchange their conv5 outputs. Any W that divides the layers.
* ``megatron`` — the paper's convolutions, then Megatron-LM's MLP pairing: fc6 by outputs, fc7 by
  inputs (one all-reduce of its output instead of a gather between them), fc8 by outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .. import layers as L

Placed = Literal["replicated", "outputs", "inputs"]
Kind = Literal["gather", "batch", "reduce", "copy", "grads"]
OPS: dict[str, dict[str, str | None]] = {
    "gather": {"forward": "all-gather", "backward": "reduce-scatter"},
    "batch": {"forward": "all-gather", "backward": "reduce-scatter"},
    "reduce": {"forward": "all-reduce", "backward": None},
    "copy": {"forward": None, "backward": "all-reduce"},
    "grads": {"forward": None, "backward": "all-reduce"},
}
"""The collective each kind runs per direction (None: nothing crosses): ``gather`` the features (the
paper's exchange), ``batch`` the samples (the 2014 scheme's at fc6), ``reduce`` a layer's partial
outputs (split by inputs), ``copy`` a whole tensor whose users give back partial gradients, ``grads``
a replicated weight's gradient (:mod:`.mappings`)."""


@dataclass(frozen=True, slots=True)
class Crossing:
    """One exchange of a plan: where, which kind, and how many floats it concerns."""

    name: str
    """The layer whose input it is (``fc6``), ``<layer>.out`` (its output), ``<layer>.grad``, or ``logits``."""
    kind: Kind
    numel: int
    """Floats per sample of the whole activation; for ``grads`` the layer's parameters."""

    def bytes(self, batch_size: int, world: int, element_size: int = 4) -> dict[str, int]:
        """Bytes one worker hands the collective per direction: what it sends the others in a gather or
        reduce-scatter, the buffer it reduces in an all-reduce (``ExchangeStats`` records the same)."""
        n = {"gather": self.numel // world * batch_size * (world - 1),
             "batch": self.numel * (batch_size // world) * (world - 1),
             "reduce": self.numel * batch_size, "copy": self.numel * batch_size,
             "grads": self.numel}[self.kind] * element_size
        return {d: (n if op else 0) for d, op in OPS[self.kind].items()}


@dataclass(frozen=True, slots=True)
class Plan:
    """How each weight layer is placed; the exchanges are derived (:func:`crossings`)."""

    name: str
    summary: str
    placed: tuple[tuple[str, Placed], ...]
    """(layer, placement) for conv1 ... fc8."""

    def of(self, layer: str) -> Placed:
        return dict(self.placed)[layer]

    @property
    def splits_batch(self) -> bool:
        """Each worker runs its own part of the batch (the first layer is replicated)."""
        return self.placed[0][1] == "replicated"

    @property
    def splits_convolutions(self) -> bool:
        """The convolutions are the paper's columns: the plan runs on exactly two workers."""
        return any(p == "outputs" for n, p in self.placed if n.startswith("conv"))

    def workers_allowed(self, world: int, num_classes: int = 1000) -> str | None:
        """None when the plan runs on ``world`` workers, else why not."""
        if world < 2:
            return "it needs at least 2 workers"
        if self.splits_convolutions and world != L.COLUMNS:
            return f"its convolutions are the paper's {L.COLUMNS} columns, so it runs on exactly {L.COLUMNS} workers"
        for s in L.shapes(num_classes):
            p = self.of(s.layer.name)
            width = s.layer.out if p == "outputs" else s.column_in if p == "inputs" else world
            if width % world:
                return f"{s.layer.name} has {width} {'outputs' if p == 'outputs' else 'inputs'}, not divisible by {world}"
        return None


def _plan(name: str, summary: str, **placed: Placed) -> Plan:
    return Plan(name, summary, tuple((layer.name, placed.get(layer.name, "outputs")) for layer in L.LAYERS))


PLANS: dict[str, Plan] = {p.name: p for p in (
    _plan("paper", "the 2012 split: every layer by outputs over the two columns"),
    _plan("one-weird-trick", "2014: convolutions replicated on each worker's part of the batch, fc6-fc8 by outputs",
          **{f"conv{i}": "replicated" for i in range(1, 6)}),
    _plan("megatron", "the paper's convolutions; fc6 by outputs, fc7 by inputs (one all-reduce), fc8 by outputs",
          fc7="inputs"),
)}
"""Every plan, by the name ``[parallelism] plan``, ``verify --plan`` and ``profile`` use."""


def crossings(plan: Plan, world: int = L.COLUMNS, num_classes: int = 1000) -> tuple[Crossing, ...]:
    """Every exchange of ``plan`` on ``world`` workers in forward order, derived from the placements.

    An activation is ``image`` (the input), ``batch`` (this worker's samples, every feature), ``split``
    (every sample, this worker's features), ``gathered`` (everything; its gradient comes back partial
    and the gather's reduce-scatter sums it) or ``whole`` (everything, after an all-reduce: its
    gradient is complete on every worker, so a layer split by outputs reading it needs a ``copy``).
    """
    why = plan.workers_allowed(world, num_classes)
    if why:
        raise ValueError(f"plan {plan.name!r} cannot run on {world} workers: {why}")
    result: list[Crossing] = []
    state, prev = "image", None
    for s in L.shapes(num_classes):
        name, placed = s.layer.name, plan.of(s.layer.name)
        result += _input_crossing(name, placed, state, s, prev)
        if placed == "replicated":
            result.append(Crossing(f"{name}.grad", "grads", s.params))
            state = "batch"
        elif placed == "outputs":
            state = "split"
        else:
            result.append(Crossing(f"{name}.out", "reduce", s.layer.out))
            state = "whole"
        prev = s
    if state == "split":
        result.append(Crossing(L.LOGITS, "gather", prev.layer.out))
    return tuple(result)


def _input_crossing(name: str, placed: Placed, state: str, s: L.LayerShape, prev: L.LayerShape | None) -> list[Crossing]:
    """The crossing (if any) that brings ``state`` to what layer ``name`` placed as ``placed`` reads."""
    whole = prev.next_shape if prev is not None else s.in_shape
    numel = 1
    for d in whole:
        numel *= d
    if state == "image" or (placed == "replicated" and state == "batch"):
        return []
    if placed == "inputs" and state == "split" and s.layer.kind == "fc":
        return []
    if placed == "outputs" and s.layer.sees == "own" and state == "split":
        return []  # a grouped layer of the paper's columns reads its own column's maps
    if placed == "outputs" and s.layer.sees == "both" and state in ("split", "batch", "whole"):
        if s.layer.kind == "conv" and state != "split":
            raise ValueError(f"{name}: a convolution split by outputs must follow the paper's columns")
        return [Crossing(name, {"split": "gather", "batch": "batch", "whole": "copy"}[state], numel)]
    raise ValueError(f"{name} placed by {placed} cannot read an activation that is {state!r} "
                     "(a replicated layer reads its own samples; a layer by inputs reads split features)")


def get(name: str) -> Plan:
    """The plan called ``name``; ``KeyError`` names what is accepted (callers turn it into their UserError)."""
    if name not in PLANS:
        raise KeyError(f"{name!r} is not a plan: one of {', '.join(PLANS)}")
    return PLANS[name]
