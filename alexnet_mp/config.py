"""The run configuration: TOML in (``tomllib``), small typed dataclasses out.

Sections mirror torchtitan's: ``[job] [model] [optimizer] [lr_scheduler] [training]
[parallelism] [checkpoint] [metrics] [validation] [data] [debug]``. Unknown sections and keys
are rejected by name with the accepted ones listed; every value is type-checked and
validated before any work starts. ``--set section.key=value`` overrides are TOML values.
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .data import DataConfig
from .errors import ConfigError
from .layers import LRN
from .lrn import IMPLS


def _check(section: str, key: str, ok: bool, accepted: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"[{section}] {key} = {value!r} is not accepted: {accepted}.")


@dataclass(kw_only=True, slots=True)
class JobConfig:
    """Names the run and where it writes."""

    name: str = "quickstart"
    """Run name: everything goes to ``<dump_folder>/<name>/``; the same name resumes."""
    dump_folder: str = "runs"
    """Folder holding one sub-folder per run (TensorBoard logs and checkpoints)."""
    seed: int = 0
    """Seeds the weights, the data order and augmentation, and dropout."""

    def __post_init__(self) -> None:
        _check("job", "name", bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
               "a non-empty folder name without '/'", self.name)


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """The network: the paper's, with its few knobs."""

    num_classes: int = 0
    """Outputs of fc8; 0 takes the number of class folders of the dataset (must be even)."""
    dropout: float = 0.5
    """Dropout probability after fc6 and fc7 (the paper: 0.5)."""
    lrn_alpha: float = LRN.alpha
    """LRN alpha on the *sum* of squares (paper: 1e-4; cuda-convnet's layer file: 2e-5)."""
    lrn_impl: str = "fast"
    """``fast`` (fused Triton kernels on CUDA, shifted adds elsewhere), ``eager`` (shifted adds),
    ``triton`` (the fused kernels), all exact with an analytic backward; or ``torch``
    (``nn.LocalResponseNorm``, the yardstick)."""
    init: str = "paper"
    """``paper`` (N(0, 0.01^2), biases 1 in conv2/4/5, fc6/7) or ``kaiming`` (He-normal, zero biases)."""

    def __post_init__(self) -> None:
        _check("model", "num_classes", self.num_classes == 0 or (self.num_classes >= 2 and self.num_classes % 2 == 0),
               "0 (from the dataset) or an even number >= 2", self.num_classes)
        _check("model", "dropout", 0.0 <= self.dropout < 1.0, "a probability in [0, 1)", self.dropout)
        _check("model", "lrn_alpha", self.lrn_alpha > 0, "a positive number", self.lrn_alpha)
        _check("model", "lrn_impl", self.lrn_impl in IMPLS, " or ".join(map(repr, IMPLS)), self.lrn_impl)
        _check("model", "init", self.init in ("paper", "kaiming"), "'paper' or 'kaiming'", self.init)


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    """SGD as the paper: v <- 0.9 v - 0.0005 lr w - lr dL/dw; w <- w + v."""

    lr: float = 0.01
    """Learning rate (the paper: 0.01)."""
    momentum: float = 0.9
    """Momentum (the paper: 0.9)."""
    weight_decay: float = 5e-4
    """Weight decay (the paper: 0.0005)."""

    def __post_init__(self) -> None:
        _check("optimizer", "lr", self.lr > 0, "a positive number", self.lr)
        _check("optimizer", "momentum", 0 <= self.momentum < 1, "a number in [0, 1)", self.momentum)
        _check("optimizer", "weight_decay", self.weight_decay >= 0, "a number >= 0", self.weight_decay)


@dataclass(kw_only=True, slots=True)
class LRSchedulerConfig:
    """Divide the lr by 10 when the validation error stops improving, at most three times."""

    factor: float = 0.1
    """Multiplier applied at each reduction (the paper: divide by 10)."""
    patience: int = 1
    """Evaluations without improvement before a reduction."""
    max_reductions: int = 3
    """Reductions at most (the paper: three)."""
    threshold: float = 1e-3
    """Least drop in top-1 error that counts as an improvement (absolute)."""

    def __post_init__(self) -> None:
        _check("lr_scheduler", "factor", 0 < self.factor < 1, "a number in (0, 1)", self.factor)
        _check("lr_scheduler", "patience", self.patience >= 0, "a whole number >= 0", self.patience)
        _check("lr_scheduler", "max_reductions", self.max_reductions >= 0, "a whole number >= 0", self.max_reductions)
        _check("lr_scheduler", "threshold", self.threshold >= 0, "a number >= 0", self.threshold)


@dataclass(kw_only=True, slots=True)
class TrainingConfig:
    """How long and how big."""

    batch_size: int = 128
    """Samples per step of one two-column model (the paper: 128); data-parallel replicas each take this many."""
    epochs: int = 90
    """Passes over the training set (the paper: about 90)."""
    max_steps: int = 0
    """Stop after this many steps in all (0: no limit) — for quick runs and tests."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    mixed_precision: str = "none"
    """``bf16``: autocast forward (fp32 weights, fp32 loss; exchanges travel in bf16), or ``none``."""
    channels_last: bool = False
    """Keep images, weights and activations in channels_last memory format (faster convs on GPUs)."""
    compile: bool = False
    """Run each column through ``torch.compile`` (graphs break at every exchange)."""

    def __post_init__(self) -> None:
        _check("training", "mixed_precision", self.mixed_precision in ("none", "bf16"), "'none' or 'bf16'",
               self.mixed_precision)
        _check("training", "batch_size", self.batch_size >= 1, "a whole number >= 1", self.batch_size)
        _check("training", "epochs", self.epochs >= 1, "a whole number >= 1", self.epochs)
        _check("training", "max_steps", self.max_steps >= 0, "a whole number >= 0", self.max_steps)
        _check("training", "device", self.device in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'", self.device)


GRAD_SYNC = ("ddp", "buckets", "flat")
ONE_PROCESS = ("auto", "fused", "columns")


@dataclass(kw_only=True, slots=True)
class ParallelismConfig:
    """How the columns are placed; the world size comes from torchrun."""

    data_parallel: int = 0
    """Replicas of the two-column model (0: world size / 2, or 1 in one process)."""
    overlap: bool = False
    """Start each exchange asynchronously and compute on the own column's half meanwhile (one column per process)."""
    one_process: str = "auto"
    """When one process holds both columns: ``columns`` runs them column by column with their
    exchanges as device copies (measured like the real ones); ``fused`` runs them as the
    single-device grouped network — the same function and parameters, much faster on a GPU;
    ``auto``: ``fused`` when both columns share one CUDA device, else ``columns``."""
    grad_sync: str = "ddp"
    """How a column's gradients are averaged over its data-parallel replicas: ``ddp``
    (DistributedDataParallel on the dp sub-group, buckets all-reduced during backward),
    ``buckets`` (the same scheme in Python, :class:`~alexnet_mp.train.distributed.GradientReducer`)
    or ``flat`` (one all-reduce after backward). Measured side by side in docs/benchmarks.md."""
    bucket_mb: float = 25.0
    """Gradient bucket size in MiB for ``ddp`` and ``buckets`` (DDP's default: 25)."""

    def __post_init__(self) -> None:
        _check("parallelism", "data_parallel", self.data_parallel >= 0, "a whole number >= 0", self.data_parallel)
        _check("parallelism", "one_process", self.one_process in ONE_PROCESS, " or ".join(map(repr, ONE_PROCESS)),
               self.one_process)
        _check("parallelism", "grad_sync", self.grad_sync in GRAD_SYNC, " or ".join(map(repr, GRAD_SYNC)),
               self.grad_sync)
        _check("parallelism", "bucket_mb", self.bucket_mb > 0, "a size in MiB > 0", self.bucket_mb)


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """When to save; saves are atomic (a fresh folder renamed into place)."""

    enable: bool = True
    """Save checkpoints and resume from the latest one."""
    interval: int = 500
    """Save every this many steps (and at each epoch end); 0: epoch ends only."""
    keep_latest: int = 2
    """Complete checkpoints kept; older ones are removed after a successful save (0: keep all)."""

    def __post_init__(self) -> None:
        _check("checkpoint", "interval", self.interval >= 0, "a whole number >= 0", self.interval)
        _check("checkpoint", "keep_latest", self.keep_latest >= 0, "a whole number >= 0", self.keep_latest)


@dataclass(kw_only=True, slots=True)
class MetricsConfig:
    """What goes to the console and TensorBoard."""

    log_freq: int = 10
    """Steps between logged scalars and progress lines."""
    enable_tensorboard: bool = True
    """Write TensorBoard events under ``<dump_folder>/<name>/tb``."""
    projector_images: int = 200
    """Validation images embedded (fc7 features + thumbnails) in the projector at the end (0: none)."""

    def __post_init__(self) -> None:
        _check("metrics", "log_freq", self.log_freq >= 1, "a whole number >= 1", self.log_freq)
        _check("metrics", "projector_images", self.projector_images >= 0, "a whole number >= 0", self.projector_images)


@dataclass(kw_only=True, slots=True)
class ValidationConfig:
    """Evaluation: top-1 and top-5 error, centre crop and the paper's ten patches."""

    freq_epochs: int = 1
    """Evaluate every this many epochs (and at the end)."""
    batch_size: int = 64
    """Validation images per batch."""
    ten_crop: str = "every"
    """The ten-patch error (4 corners + centre, and reflections): at ``every`` evaluation, at the ``end``, or ``never``."""

    def __post_init__(self) -> None:
        _check("validation", "ten_crop", self.ten_crop in ("every", "end", "never"), "'every', 'end' or 'never'",
               self.ten_crop)
        _check("validation", "freq_epochs", self.freq_epochs >= 1, "a whole number >= 1", self.freq_epochs)
        _check("validation", "batch_size", self.batch_size >= 1, "a whole number >= 1", self.batch_size)


@dataclass(kw_only=True, slots=True)
class DebugConfig:
    """Fault injection for tests and drills."""

    inject_nan_at_step: int = 0
    """Make the loss NaN at this (1-based) step, to exercise the NaN guard (0: never)."""
    kill_at_step: int = 0
    """On the first attempt only, the last rank kills itself (SIGKILL) after this step — a restart drill (0: never)."""

    def __post_init__(self) -> None:
        _check("debug", "kill_at_step", self.kill_at_step >= 0, "a whole number >= 0", self.kill_at_step)
        _check("debug", "inject_nan_at_step", self.inject_nan_at_step >= 0, "a whole number >= 0",
               self.inject_nan_at_step)


@dataclass(kw_only=True, slots=True)
class Config:
    """A whole run."""

    job: JobConfig = field(default_factory=JobConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_scheduler: LRSchedulerConfig = field(default_factory=LRSchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: asdict(getattr(self, f.name)) for f in fields(self)}


def _type_ok(value: Any, annotation: Any) -> bool:
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _section(cls: type, name: str, table: Any, source: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table of keys, got {table!r}.")
    hints = typing.get_type_hints(cls)
    accepted = [f.name for f in fields(cls)]
    unknown = [k for k in table if k not in accepted]
    if unknown:
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'{name}.{k}' for k in unknown)}; [{name}] accepts: {', '.join(accepted)}.")
    values = {}
    for key, value in table.items():
        hint = hints[key]
        if not _type_ok(value, hint):
            pretty = getattr(hint, "__name__", str(hint)).replace("typing.", "")
            raise ConfigError(f"{source}: [{name}] {key} = {value!r} has the wrong type; it must be a {pretty}.")
        values[key] = float(value) if hint is float else value
    return cls(**values)


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set {item!r}: write section.key=value, e.g. --set training.batch_size=64.")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word is taken as a string
    return section, key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    tables: dict[str, dict[str, Any]] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as f:
                tables = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; the configs/ folder has examples.") from None
        except IsADirectoryError:
            raise ConfigError(f"--config {path} is a folder; give a TOML file such as configs/quickstart.toml.") from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read ({err.strerror or err}).") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid TOML (a UTF-8 text file of [section] tables): {err}.") from None
    for item in overrides:
        section, key, value = _parse_override(item)
        tables.setdefault(section, {})[key] = value
    if overrides:
        source = f"{source} with --set overrides"
    sections = {f.name: f for f in fields(Config)}
    unknown = [s for s in tables if s not in sections]
    if unknown:
        raise ConfigError(f"{source}: unknown section{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'[{s}]' for s in unknown)}; accepted: {', '.join(f'[{s}]' for s in sections)}.")
    built = {}
    for name, f in sections.items():
        cls = typing.get_type_hints(Config)[name]
        built[name] = _section(cls, name, tables.get(name, {}), source)
    return Config(**built)
