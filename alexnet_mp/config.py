"""Configuration, one idiom everywhere: TOML in (``tomllib``), small typed dataclasses out.

Every section — the run's (``[job] [model] [optimizer] [lr_scheduler] [training]
[parallelism] [checkpoint] [metrics] [validation] [debug]``), the data's (``[data]``,
:class:`alexnet_mp.data.DataConfig`) and the profiler's options — is a :class:`Section`: each
field is typed (``Literal`` for a choice) and checked when the section is built, so a bad
value fails before any work starts, with one message shape naming the key (or the command-line
option) and what is accepted. Unknown sections and keys are rejected by name.
``--set section.key=value`` overrides are TOML values.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the package tomli
    import tomli as tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from . import layers as L
from .data.config import DataConfig
from .errors import ConfigError
from .layers import LRN
from .section import Section

# -- the run ---------------------------------------------------------------------------------

@dataclass(kw_only=True, slots=True)
class JobConfig(Section):
    """Names the run and where it writes."""

    SECTION: ClassVar[str] = "job"
    name: str = "quickstart"
    """Run name: everything goes to ``<dump_folder>/<name>/``; the same name resumes."""
    dump_folder: str = "runs"
    """Folder holding one sub-folder per run (TensorBoard logs and checkpoints)."""
    seed: int = 0
    """Seeds the weights, the data order and augmentation, and dropout."""

    def check(self) -> None:
        self.require("name", bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                     "a non-empty folder name without '/'")
        self.require("seed", 0 <= self.seed < 2**63 // 1000, "a whole number from 0 to 9.2e15")


@dataclass(kw_only=True, slots=True)
class ModelConfig(Section):
    """The network: the paper's, with its few knobs."""

    SECTION: ClassVar[str] = "model"
    num_classes: int = 0
    """Outputs of fc8; 0 takes the number of class folders of the dataset (must be even)."""
    dropout: float = 0.5
    """Dropout probability after fc6 and fc7 (the paper: 0.5)."""
    lrn_alpha: float = LRN.alpha
    """LRN alpha on the *sum* of squares (paper: 1e-4; cuda-convnet's layer file: 2e-5)."""
    lrn_impl: Literal["fast", "eager", "triton", "torch"] = "fast"
    """``fast`` (fused Triton kernels on CUDA, shifted adds elsewhere), ``eager`` (shifted adds),
    ``triton`` (the fused kernels), all exact with an analytic backward; or ``torch``
    (``nn.LocalResponseNorm``, the yardstick)."""
    fused_relu_lrn_pool: bool = False
    """Run ReLU, the LRN and the max-pool after conv1 and conv2 as one Triton kernel each way
    where the LRN runs Triton's (CUDA); off until measured on a GPU (docs/benchmarks.md)."""
    init: Literal["paper", "kaiming"] = "paper"
    """``paper`` (N(0, 0.01^2), biases 1 in conv2/4/5, fc6/7) or ``kaiming`` (He-normal, zero biases)."""

    def check(self) -> None:
        self.require("num_classes", self.num_classes == 0 or L.classes_accepted(self.num_classes),
                     f"0 (from the dataset) or an even number from 2 to {L.MAX_CLASSES:,}")
        self.require("dropout", 0.0 <= self.dropout < 1.0, "a probability in [0, 1)")
        self.require("lrn_alpha", self.lrn_alpha > 0, "a positive number")


@dataclass(kw_only=True, slots=True)
class OptimizerConfig(Section):
    """SGD as the paper: v <- 0.9 v - 0.0005 lr w - lr dL/dw; w <- w + v."""

    SECTION: ClassVar[str] = "optimizer"
    lr: float = 0.01
    """Learning rate (the paper: 0.01). On resume the config's value applies (docs/training.md)."""
    momentum: float = 0.9
    """Momentum (the paper: 0.9)."""
    weight_decay: float = 5e-4
    """Weight decay (the paper: 0.0005)."""

    def check(self) -> None:
        self.require("lr", self.lr > 0, "a positive number")
        self.require("momentum", 0 <= self.momentum < 1, "a number in [0, 1)")
        self.require("weight_decay", self.weight_decay >= 0, "a number >= 0")


@dataclass(kw_only=True, slots=True)
class LRSchedulerConfig(Section):
    """Divide the lr by 10 when the validation error stops improving, at most three times."""

    SECTION: ClassVar[str] = "lr_scheduler"
    kind: Literal["plateau", "epochs"] = "plateau"
    """``"plateau"``: reduce when the validation error stops improving (the paper's rule);
    ``"epochs"``: reduce after each epoch listed in ``at_epochs`` (the paper reduced by hand)."""
    at_epochs: list[int] = field(default_factory=list)
    """With ``kind = "epochs"``: the epochs (1-based) after which the lr is multiplied by ``factor``
    (a run shorter than one of them says so when it starts)."""
    factor: float = 0.1
    """Multiplier applied at each reduction (the paper: divide by 10)."""
    patience: int = 1
    """Evaluations without improvement before a reduction."""
    max_reductions: int = 3
    """Reductions at most (the paper: three)."""
    threshold: float = 1e-3
    """Least drop in top-1 error that counts as an improvement (absolute)."""
    warmup_steps: int = 0
    """The lr rises linearly to its value over the first this many steps (not in the paper; it
    tames the first steps' loss spike of a short run from He init). 0: off."""

    def check(self) -> None:
        self.require("factor", 0 < self.factor < 1, "a number in (0, 1)")
        self.require("patience", self.patience >= 0, "a whole number >= 0")
        self.require("max_reductions", self.max_reductions >= 0, "a whole number >= 0")
        self.require("threshold", self.threshold >= 0, "a number >= 0")
        self.require("warmup_steps", self.warmup_steps >= 0, "a whole number >= 0 (0: no warm-up)")
        self.require("at_epochs", all(isinstance(e, int) and e >= 1 for e in self.at_epochs),
                     "a list of whole numbers >= 1 (epochs after which the lr is reduced)")
        self.require("at_epochs", self.kind != "epochs" or bool(self.at_epochs),
                     'at least one epoch when kind = "epochs"')


@dataclass(kw_only=True, slots=True)
class TrainingConfig(Section):
    """How long and how big."""

    SECTION: ClassVar[str] = "training"
    batch_size: int = 128
    """Samples per step of one two-column model (the paper: 128); data-parallel replicas each take this many."""
    epochs: int = 90
    """Passes over the training set (the paper: about 90)."""
    max_steps: int = 0
    """Stop after this many steps in all (0: no limit) — for quick runs and tests."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    mixed_precision: Literal["none", "bf16"] = "none"
    """``bf16``: autocast forward (fp32 weights, fp32 loss; exchanges travel in bf16), or ``none``."""
    channels_last: bool = False
    """Keep images, weights and activations in channels_last memory format (faster convs on GPUs)."""
    compile: bool = False
    """Run the step's forward through ``torch.compile`` (graphs break at every exchange)."""
    cuda_graph: bool = False
    """Capture the whole step (forward, loss, backward, update) as one CUDA graph and replay it:
    one process, the whole network on one GPU. Warm-up steps, a step at a new lr and a partial
    batch run eagerly; the graph is captured again once a new lr holds (docs/training.md)."""

    def check(self) -> None:
        self.require("batch_size", self.batch_size >= 1, "a whole number >= 1")
        self.require("epochs", self.epochs >= 1, "a whole number >= 1")
        self.require("max_steps", self.max_steps >= 0, "a whole number >= 0")


@dataclass(kw_only=True, slots=True)
class ParallelismConfig(Section):
    """How the columns are placed; the world size comes from torchrun."""

    SECTION: ClassVar[str] = "parallelism"
    data_parallel: int = 0
    """Replicas of the two-column model (0: world size / 2, or 1 in one process)."""
    overlap: bool = False
    """Start each exchange asynchronously and compute on the own column's half meanwhile (one column per process)."""
    one_process: Literal["auto", "whole", "columns"] = "auto"
    """When one process holds both columns: ``whole`` runs the network as itself on one device
    (grouped convolutions, nothing exchanged or copied); ``columns`` runs them column by column,
    their exchanges device copies (recorded like real ones); ``auto``: ``whole`` on one device,
    ``columns`` on two."""
    bucket_mb: float = 25.0
    """DDP's gradient bucket size in MiB when there are data-parallel replicas (DDP's default: 25)."""
    plan: str = "paper"
    """How the layers are placed (docs/architecture.md): ``paper`` (the 2012 split, with data-parallel
    replicas on a 2 x D world), ``one-weird-trick`` (2014: convolutions replicated on each worker's part
    of the batch, fc6-fc8 split over every worker) or ``megatron`` (fc7 by inputs, 2 workers)."""

    def check(self) -> None:
        from .parallel.plans import PLANS

        self.require("data_parallel", self.data_parallel >= 0, "a whole number >= 0")
        self.require("bucket_mb", self.bucket_mb > 0, "a size in MiB > 0")
        self.require("plan", self.plan in PLANS, f"one of {', '.join(PLANS)}")


@dataclass(kw_only=True, slots=True)
class CheckpointConfig(Section):
    """When to save; saves are atomic (a fresh folder renamed into place)."""

    SECTION: ClassVar[str] = "checkpoint"
    enable: bool = True
    """Save checkpoints and resume from the latest one."""
    interval: int = 500
    """Save every this many steps (and at each epoch end); 0: epoch ends only."""
    keep_latest: int = 2
    """Complete checkpoints kept (and the newest healthy one); older ones are removed after a save (0: all)."""

    def check(self) -> None:
        self.require("interval", self.interval >= 0, "a whole number >= 0")
        self.require("keep_latest", self.keep_latest >= 0, "a whole number >= 0")


@dataclass(kw_only=True, slots=True)
class MetricsConfig(Section):
    """What goes to the console and TensorBoard."""

    SECTION: ClassVar[str] = "metrics"
    log_freq: int = 10
    """Steps between logged scalars and progress lines."""
    enable_tensorboard: bool = True
    """Write TensorBoard events under ``<dump_folder>/<name>/tb``."""
    projector_images: int = 200
    """Validation images embedded (fc7 features + thumbnails) in the projector at the end (0: none)."""

    def check(self) -> None:
        self.require("log_freq", self.log_freq >= 1, "a whole number >= 1")
        self.require("projector_images", self.projector_images >= 0, "a whole number >= 0")


@dataclass(kw_only=True, slots=True)
class ValidationConfig(Section):
    """Evaluation: top-1 and top-5 error, centre crop and the paper's ten patches."""

    SECTION: ClassVar[str] = "validation"
    freq_epochs: int = 1
    """Evaluate every this many epochs (and at the end)."""
    batch_size: int = 64
    """Validation images per batch."""
    ten_crop: Literal["every", "end", "never"] = "every"
    """The ten-patch error (4 corners + centre, and reflections): at ``every`` evaluation, at the ``end``, or ``never``."""
    ten_crop_images: int = 0
    """The ten patches of this many validation images, evenly spaced over the classes (0: all); ten
    forward passes per image make it the costliest pass on a CPU."""

    def check(self) -> None:
        self.require("freq_epochs", self.freq_epochs >= 1, "a whole number >= 1")
        self.require("batch_size", self.batch_size >= 1, "a whole number >= 1")
        self.require("ten_crop_images", self.ten_crop_images >= 0, "a whole number >= 0 (0: every image)")


@dataclass(kw_only=True, slots=True)
class DebugConfig(Section):
    """Fault injection for tests and drills."""

    SECTION: ClassVar[str] = "debug"
    inject_nan_at_step: int = 0
    """Make the loss NaN at this (1-based) step, to exercise the NaN guard (0: never)."""
    inject_nan_rank: int = -1
    """The rank whose loss ``inject_nan_at_step`` makes NaN (-1: every rank)."""
    kill_at_step: int = 0
    """On the first attempt only, the last rank kills itself (SIGKILL) after this step — a restart drill (0: never)."""

    def check(self) -> None:
        self.require("kill_at_step", self.kill_at_step >= 0, "a whole number >= 0")
        self.require("inject_nan_at_step", self.inject_nan_at_step >= 0, "a whole number >= 0")
        self.require("inject_nan_rank", self.inject_nan_rank >= -1, "-1 (every rank) or a rank >= 0")


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


def _section_classes() -> dict[str, type[Section]]:
    return {f.name: f.default_factory for f in fields(Config)}


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


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; the configs/ folder has examples.") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a folder; give a TOML file such as configs/quickstart.toml.") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror or err}).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid TOML (a UTF-8 text file of [section] tables): {err}.") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    tables = _read_toml(path) if path is not None else {}
    for item in overrides:
        section, key, value = _parse_override(item)
        tables.setdefault(section, {})[key] = value
    source = (str(path) if path is not None else "defaults") + (" with --set overrides" if overrides else "")
    classes = _section_classes()
    unknown = [s for s in tables if s not in classes]
    if unknown:
        raise ConfigError(f"{source}: unknown section{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(f'[{s}]' for s in unknown)}; accepted: {', '.join(f'[{s}]' for s in classes)}.")
    return Config(**{name: cls.from_table(tables.get(name, {}), source) for name, cls in classes.items()})
