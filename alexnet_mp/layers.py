"""The paper's layer table (Krizhevsky, Sutskever, Hinton 2012, Figure 2) — the one place.

Everything else — the single-device model, one column, the split, per-column shapes,
parameter and neuron counts, and the analytic communication figures — is derived from
``LAYERS`` below. Nothing here is typed twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Literal

COLUMNS = 2
"""The paper's two columns ("towers"), one per GPU."""

INPUT_SHAPE = (3, 224, 224)
"""Channels, height, width of one input sample (both columns see the whole batch)."""

INIT_STD = 0.01
"""Weights are drawn from N(0, 0.01^2)."""


@dataclass(frozen=True, slots=True)
class LRNSpec:
    """Local response normalisation, the paper's formula b = a / (k + alpha * sum a^2)^beta.

    ``alpha`` multiplies the *sum* over ``size`` adjacent maps, as the paper writes it.
    ``torch.nn.LocalResponseNorm`` multiplies the *mean*: its ``alpha`` is ``alpha * size``.
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0

    @property
    def torch_alpha(self) -> float:
        return self.alpha * self.size


LRN = LRNSpec()
"""The paper's constants (n=5, k=2, alpha=1e-4 on the sum, beta=0.75)."""

CUDA_CONVNET_LRN_ALPHA = LRN.alpha / LRN.size
"""Krizhevsky's cuda-convnet layer file divided scale=1e-4 by size=5: 2e-5 on the sum."""

POOL_KERNEL, POOL_STRIDE = 3, 2
"""Overlapping max pooling: 3x3 windows, stride 2."""


@dataclass(frozen=True, slots=True)
class Layer:
    """One weight layer of the whole network, with what follows it."""

    name: str
    kind: Literal["conv", "fc"]
    out: int
    """Output channels (conv) or features (fc) of the whole network, both columns."""
    sees: Literal["own", "both"]
    """``own``: this column's previous outputs only; ``both``: an exchange precedes the layer."""
    bias_init: float
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    relu: bool = True
    lrn: bool = False
    pool: bool = False
    dropout: bool = False


LAYERS: tuple[Layer, ...] = (
    Layer("conv1", "conv", 96, "own", 0.0, kernel=11, stride=4, padding=2, lrn=True, pool=True),
    Layer("conv2", "conv", 256, "own", 1.0, kernel=5, padding=2, lrn=True, pool=True),
    Layer("conv3", "conv", 384, "both", 0.0, kernel=3, padding=1),
    Layer("conv4", "conv", 384, "own", 1.0, kernel=3, padding=1),
    Layer("conv5", "conv", 256, "own", 1.0, kernel=3, padding=1, pool=True),
    Layer("fc6", "fc", 4096, "both", 1.0, dropout=True),
    Layer("fc7", "fc", 4096, "both", 1.0, dropout=True),
    Layer("fc8", "fc", 1000, "both", 0.0, relu=False),
)
"""The paper's Figure 2 (docs/paper.md). ``fc8.out`` is replaced by ``num_classes`` where one is given."""

LOGITS = "logits"
"""Name of the exchange after fc8 that gives every column all the logits for the loss."""

MAX_CLASSES = 100_000
"""The most outputs fc8 may have (ImageNet-21k has 21,841): its weight is then 4096 x 100,000 floats,
1.6 GB — the bound on what a config or a checkpoint can make the network allocate."""


def classes_accepted(n: object) -> bool:
    """fc8's size: a whole number from 2 to :data:`MAX_CLASSES` that splits evenly into the columns."""
    return isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= MAX_CLASSES and n % COLUMNS == 0


PAPER_NEURONS_PRINTED = {"conv1": 253_440}
"""Counts the paper prints that differ from its own layer sizes (96x55x55 is 290,400)."""


def layers(num_classes: int = 1000, columns: int = COLUMNS) -> tuple[Layer, ...]:
    """The table with fc8 sized for ``num_classes``; every layer must split evenly."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    table = tuple(
        Layer(**{**_fields(layer), "out": num_classes}) if layer.name == "fc8" else layer
        for layer in LAYERS
    )
    for layer in table:
        if layer.out % columns:
            raise ValueError(
                f"{layer.name} has {layer.out} outputs, which do not split evenly into "
                f"{columns} columns; for fc8 choose an even num_classes"
            )
    return table


def _fields(layer: Layer) -> dict:
    return {f: getattr(layer, f) for f in Layer.__slots__}


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True, slots=True)
class LayerShape:
    """Derived per-layer facts for the whole net and for one column."""

    layer: Layer
    in_shape: tuple[int, ...]
    """Input of the whole layer (per sample)."""
    out_shape: tuple[int, ...]
    """Output of the layer itself, before pooling (the paper's neuron count)."""
    next_shape: tuple[int, ...]
    """What the next layer receives: after pooling and flattening."""
    params: int
    column_in: int
    """Input channels/features one column's weight sees."""
    column_out: int
    column_params: int

    @property
    def neurons(self) -> int:
        return prod(self.out_shape)


def shapes(num_classes: int = 1000, columns: int = COLUMNS) -> tuple[LayerShape, ...]:
    """Walk the table from the input and derive every shape and parameter count."""
    result = []
    shape: tuple[int, ...] = INPUT_SHAPE
    replicated = True  # the input batch is whole on every column; layer outputs are split
    for layer in layers(num_classes, columns):
        per_col_out = layer.out // columns
        if layer.kind == "conv":
            c, h, w = shape
            # Grouped ("own column") layers see only their column's share of the inputs.
            column_in = c if layer.sees == "both" or replicated else c // columns
            oh = _conv_out(h, layer.kernel, layer.stride, layer.padding)
            ow = _conv_out(w, layer.kernel, layer.stride, layer.padding)
            out_shape = (layer.out, oh, ow)
            weights_per_out = column_in * layer.kernel**2
            if layer.pool:
                ph = _conv_out(oh, POOL_KERNEL, POOL_STRIDE, 0)
                pw = _conv_out(ow, POOL_KERNEL, POOL_STRIDE, 0)
                next_shape = (layer.out, ph, pw)
            else:
                next_shape = out_shape
        else:
            features = prod(shape)
            if layer.sees != "both":
                raise ValueError(f"{layer.name}: a fully connected layer sees both columns")
            column_in = features
            out_shape = next_shape = (layer.out,)
            weights_per_out = features
        column_params = per_col_out * (weights_per_out + 1)
        result.append(
            LayerShape(layer, shape, out_shape, next_shape, column_params * columns,
                       column_in, per_col_out, column_params)
        )
        shape, replicated = next_shape, False
    return tuple(result)


def total_params(num_classes: int = 1000) -> int:
    return sum(s.params for s in shapes(num_classes))


def column_params(num_classes: int = 1000) -> int:
    return sum(s.column_params for s in shapes(num_classes))


@dataclass(frozen=True, slots=True)
class Exchange:
    """One crossing between the columns: all-gather forward, reduce-scatter backward."""

    name: str
    """The layer it feeds (``conv3``, ``fc6``, ``fc7``, ``fc8``) or ``logits``."""
    column_shape: tuple[int, ...]
    """What one column sends per sample (its half of the previous layer's output)."""

    @property
    def floats_per_sample(self) -> int:
        return prod(self.column_shape)


def exchanges(num_classes: int = 1000, columns: int = COLUMNS, *, logits: bool = True) -> tuple[Exchange, ...]:
    """Every exchange, in forward order, derived from which layers see both columns."""
    result = []
    prev = None
    for s in shapes(num_classes, columns):
        if s.layer.sees == "both":
            assert prev is not None, "the first layer cannot see both columns"
            result.append(Exchange(s.layer.name, _column_shape(prev.next_shape, columns)))
        prev = s
    if logits:
        result.append(Exchange(LOGITS, _column_shape(prev.next_shape, columns)))
    return tuple(result)


def _column_shape(whole: tuple[int, ...], columns: int) -> tuple[int, ...]:
    return (whole[0] // columns, *whole[1:])


def exchange_bytes(batch_size: int, *, num_classes: int = 1000, element_size: int = 4,
                   columns: int = COLUMNS) -> dict[str, int]:
    """Analytic bytes one column sends per exchange, per direction, for one step.

    In an all-gather each column sends its part to each of the ``columns - 1`` others;
    the reduce-scatter backward sends the same volume.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return {
        e.name: e.floats_per_sample * batch_size * element_size * (columns - 1)
        for e in exchanges(num_classes, columns)
    }
