"""The training loop: the paper's recipe on the split model, resumable to the sample.

One process per column under torchrun (``D`` data-parallel replicas of the pair on a
``("dp", "mp")`` mesh), or both columns in one process. The loop never looks inside the
model: it builds a :class:`~alexnet_mp.parallel.Placement`, feeds it batches and
reads its :class:`~alexnet_mp.parallel.ExchangeStats`.

torch's SGD versus the paper's rule: the paper keeps v <- 0.9 v - 0.0005 lr w - lr g and
w <- w + v; torch keeps b <- 0.9 b + (g + 0.0005 w) and w <- w - lr b. With a constant lr,
v = -lr b and the two are the same sequence of weights; they differ only right after an lr
drop, where the paper's v still carries the old lr and torch's b does not.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import layers as L
from ..config import Config
from ..data import build_eval_loader, build_train_loader, index_dataset, make_dataset
from ..data.imagenet import write_run_classes
from ..data.device_source import synthetic_info
from ..errors import CheckpointError, ConfigError, UserError
from ..model import AlexNet
from ..parallel import Placement, WholeNetwork, place_column, place_columns, place_on_device, plans
from ..parallel.planned import place_plan
from . import checkpoint as ckpt
from . import graph as step_graph
from .checkpoint_meta import check_position
from .distributed import Layout, every_rank_a_replica, setup, teardown
from .eta import final_validation_needed, validates_after_epoch
from .evaluate import evaluate
from .lock import RunLock
from .metrics import Metrics
from .schedule import EpochSchedule, PlateauSchedule


class TrainingError(UserError):
    """Training cannot go on (a NaN loss, say); the last healthy checkpoint is kept."""

    exit_code = 3


class _Stop:
    """Set by SIGTERM/SIGINT; the loop saves and leaves at the next step boundary, before the
    next forward draws dropout masks, so the resumed run repeats nothing."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}
        self.reading: Path | None = None
        """The checkpoint being read: a signal then ends the read at once (it changed nothing yet)."""

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handler(self, signum, _frame) -> None:
        self.signal = signum
        if self.reading is not None:
            raise CheckpointError(f"stopped by signal {signum} while reading the checkpoints of {self.reading}; "
                                  "nothing was changed, and the same command resumes from them.")


@dataclass(slots=True)
class Position:
    """Where the run is: the data order and every augmentation follow from it (docs/data.md)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    samples_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """``ValueError`` naming a count that is negative, out of range, or past the run's steps."""
        for name, value in check_position(state).items():
            setattr(self, name, value)


def _schedule(cfg: Config) -> PlateauSchedule | EpochSchedule:
    s = cfg.lr_scheduler
    if s.kind == "epochs":
        return EpochSchedule(base_lr=cfg.optimizer.lr, factor=s.factor, at_epochs=tuple(sorted(s.at_epochs)))
    return PlateauSchedule(base_lr=cfg.optimizer.lr, factor=s.factor, patience=s.patience, threshold=s.threshold,
                           max_reductions=s.max_reductions)


def prepare_run_dir(run_dir: Path, layout: Layout) -> RunLock | None:
    """Create the run folder and take its lock (rank 0); every rank learns if that failed."""
    error, lock = None, None
    if layout.is_main:
        try:
            try:
                checkpoint_dir = ckpt.checkpoint_dir(run_dir)
                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                lock = RunLock(run_dir)
                lock.acquire()
            except OSError as err:
                raise ConfigError(f"[job] dump_folder: cannot create or write the run folder {run_dir} "
                                  f"({err.strerror or err}); choose a writable folder with --set "
                                  "job.dump_folder=<folder>.") from None
        except UserError as err:
            error = err
    if _agree([error is not None], layout)[0]:
        raise error or ConfigError(f"rank 0 could not take the run folder {run_dir}; see its message.")
    return lock


def _ensure_data(cfg: Config, layout: Layout) -> None:
    """``[data] generate_if_missing``: the generated dataset is made on first use (rank 0; others wait)."""
    root = Path(cfg.data.path)
    if cfg.data.source == "folder" and cfg.data.generate_if_missing and not (root / "train").exists():
        if layout.is_main:
            print(f"generating the quick-start dataset in {root} (alexnet-mp make-dataset)", file=sys.stderr)
            d = cfg.data
            make_dataset(root, classes=d.generate_classes, train_per_class=d.generate_train_per_class,
                         val_per_class=d.generate_val_per_class)
        if layout.distributed:
            dist.barrier()


def build_model(cfg: Config, layout: Layout, num_classes: int) -> Placement:
    """The whole network from the run's seed (the same on every rank), placed as the layout says."""
    torch.manual_seed(cfg.job.seed)
    m = cfg.model
    net = AlexNet(num_classes, dropout=m.dropout, lrn_alpha=m.lrn_alpha, lrn_impl=m.lrn_impl, init=m.init,
                  fused_relu_lrn_pool=m.fused_relu_lrn_pool)
    p = cfg.parallelism
    if p.plan != "paper":
        return _place_plan(net, cfg, layout)
    if layout.distributed:
        return place_column(net, layout.mp_group, layout.devices[0], overlap=p.overlap)
    if p.overlap:
        raise ConfigError("[parallelism] overlap = true needs one column per process (torchrun "
                          f"--nproc_per_node={L.COLUMNS} or 2 x D); this run holds both columns in one process, "
                          "where an exchange is a device copy with nothing to overlap. Set overlap = false.")
    one_device = len(set(layout.devices)) == 1
    if p.one_process == "whole" and not one_device:
        raise ConfigError(f"[parallelism] one_process = \"whole\" needs both columns on one device; this process "
                          f"holds them on {', '.join(map(str, layout.devices))}. Use \"columns\" (or \"auto\").")
    if p.one_process == "columns" or not one_device:
        return place_columns(net, layout.devices)
    return place_on_device(net, layout.devices[0])


def _place_plan(net: AlexNet, cfg: Config, layout: Layout) -> Placement:
    """``[parallelism] plan`` other than the paper's: every rank one worker of the plan."""
    p = cfg.parallelism
    if not layout.distributed or p.overlap:
        why = ("runs on worker processes: launch it with torchrun --nproc_per_node=2 (or 4 for one-weird-trick)"
               if not layout.distributed else "overlaps nothing yet: set [parallelism] overlap = false")
        raise ConfigError(f"[parallelism] plan = {p.plan!r} {why}.")
    return place_plan(net, plans.get(p.plan), dist.group.WORLD, layout.devices[0])


def _agree(flags: list[bool], layout: Layout) -> list[bool]:
    """Each flag true on every rank if it is true on any, so all ranks stop or save together.
    Host flags travel over the CPU control group (gloo), so a GPU's queue never waits for them."""
    if not layout.distributed:
        return flags
    t = torch.tensor([float(f) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=layout.control_group)
    return [bool(v) for v in t.tolist()]


def _wait_for(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(slots=True)
class PendingStep:
    """A step whose loss is still on the device: read at the next :meth:`Trainer.flush`."""

    step: int  # 1-based global step
    epoch: int  # 0-based
    step_in_epoch: int  # 1-based
    steps: int  # steps in the epoch
    loss: torch.Tensor


class Trainer:
    """A run: the model and optimizer, the position in the data, the lr schedule, checkpoints."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.layout = setup(cfg.training.device, cfg.parallelism.data_parallel)
        if plans.get(cfg.parallelism.plan).splits_batch:
            self.layout = every_rank_a_replica(self.layout)
        self.run_dir = Path(cfg.job.dump_folder) / cfg.job.name
        self.lock = None
        try:
            self.lock = prepare_run_dir(self.run_dir, self.layout)
            self._build()
            self._check_even_evaluation()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            teardown(self.layout)
            raise

    def _build(self) -> None:
        cfg = self.cfg
        _ensure_data(cfg, self.layout)
        self.num_classes = self._classes()
        self._build_step()
        self.schedule = _schedule(cfg)
        self.graph: step_graph.StepGraph | None = None
        if cfg.training.cuda_graph:
            why = step_graph.refusal(cuda=self.layout.devices[0].type == "cuda", distributed=self.layout.distributed,
                                     whole=isinstance(self.model, WholeNetwork), compiled=cfg.training.compile)
            if why:
                raise ConfigError(why)
            self.graph = step_graph.StepGraph(self._step_body, self.optimizer)
        self.position = Position()
        self.checkpoints = ckpt.Checkpointer(
            self.run_dir, placement=self.model, optimizer=self.optimizer, layout=self.layout,
            states={"position": self.position, "schedule": self.schedule}, keep_latest=cfg.checkpoint.keep_latest,
            facts={"num_classes": self.num_classes, "world_size": self.layout.world_size,
                   "placement": type(self.model).__name__ if cfg.parallelism.plan == "paper" else
                   f"plan-{cfg.parallelism.plan}",
                   # the images of a step over all replicas: what a resume under another layout must keep
                   "global_batch": cfg.training.batch_size * self.layout.dp_size, "seed": cfg.job.seed,
                   "config": cfg.to_dict()})
        self.losses: list[float] = []  # this process's training loss per step, for tests and summaries
        self._last_loss = math.nan
        self._forward_s: float | None = None
        self._pending: list[PendingStep] = []
        self._skip: torch.Tensor | None = None  # 1 once any rank's loss was not finite: no update from then on
        # dropout differs between columns and replicas; other plans draw it alike everywhere (planned.py)
        torch.manual_seed(cfg.job.seed * 1000 + 1 + (self.layout.rank if cfg.parallelism.plan == "paper" else 0))
        self.stop = _Stop()
        self.metrics = Metrics(cfg, self.layout, self.run_dir, self.info)

    def _classes(self) -> int:
        """fc8's size: [model] num_classes, or the dataset's class count; the dataset is indexed here,
        once for the whole job."""
        cfg, d, lay = self.cfg, self.cfg.data, self.layout
        group = (lay.control_group or dist.group.WORLD) if lay.distributed else None
        self.info = index_dataset(d, group=group, progress=lay.is_main) if d.source == "folder" else \
            synthetic_info(d.synthetic_images, d.synthetic_val_images, d.synthetic_classes)  # one scan for the job
        if lay.is_main and d.source == "folder":
            write_run_classes(self.run_dir, self.info.classes, self.info.names)  # for `alexnet-mp predict`
        num_classes = cfg.model.num_classes or self.info.num_classes
        if not L.classes_accepted(num_classes):
            raise ConfigError(f"{cfg.data.path} has {self.info.num_classes} classes; fc8 splits into {L.COLUMNS} "
                              f"columns, so set [model] num_classes to an even number from 2 to {L.MAX_CLASSES:,} "
                              ">= the class count.")
        if num_classes < self.info.num_classes:
            raise ConfigError(f"[model] num_classes = {num_classes} is fewer than the {self.info.num_classes} "
                              f"classes in {cfg.data.path}.")
        if cfg.model.fused_relu_lrn_pool and self.layout.devices[0].type != "cuda":
            raise ConfigError("[model] fused_relu_lrn_pool = true runs ReLU, LRN and max-pool as one Triton kernel "
                              f"on CUDA; this run is on {self.layout.devices[0]}, where it would change nothing. "
                              "Leave it false here.")
        return num_classes

    def _build_step(self) -> None:
        """The placed network, what the step calls (DDP over replicas, compiled), autocast and SGD."""
        cfg, t, lay = self.cfg, self.cfg.training, self.layout
        self.model = build_model(cfg, lay, self.num_classes)
        if lay.devices[0].type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its algorithms once per layer
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        step_module: torch.nn.Module = self.model
        ddp = lay.dp_size > 1 and cfg.parallelism.plan == "paper"  # other plans sum their own gradients
        if ddp:  # each column's gradients averaged over its replicas, during backward
            from torch.nn.parallel import DistributedDataParallel

            dev = lay.devices[0]
            step_module = DistributedDataParallel(self.model, process_group=lay.dp_group,
                                                  device_ids=[dev.index] if dev.type == "cuda" else None,
                                                  bucket_cap_mb=cfg.parallelism.bucket_mb, broadcast_buffers=False)
        self._dp_bytes = sum(q.numel() * q.element_size() for q in self.model.parameters()) if ddp else 0
        self.forward = torch.compile(step_module) if t.compile else step_module
        self.autocast = dict(device_type=lay.devices[0].type, dtype=torch.bfloat16, enabled=t.mixed_precision == "bf16")
        o = cfg.optimizer
        # fused: the whole update in one pass over weights, gradients and momentum (docs/benchmarks.md)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                         weight_decay=o.weight_decay, fused=True)

    # -- checkpoints -------------------------------------------------------------------

    def save(self, reason: str) -> Path | None:
        if not self.cfg.checkpoint.enable:
            return None
        self.flush()  # a diverged step is found before its weights could be saved
        t = time.perf_counter()
        saved = self.checkpoints.save(self.position.global_step)
        if saved is None:
            return None  # this step is saved already
        path, finite = saved
        mark = "" if finite else ", marked unhealthy: a weight is not finite"
        self.metrics.note(f"saved checkpoint {path} ({reason}{mark}, {time.perf_counter() - t:.1f}s)")
        return path

    def resume(self) -> int:
        """Continue from the latest checkpoint, if any; returns the step resumed at (0: a fresh run)."""
        self.stop.reading = self.run_dir
        try:
            found = self.checkpoints.resume() if self.cfg.checkpoint.enable else None
        finally:
            self.stop.reading = None
        if found is None:
            return 0
        path, meta = found
        self._set_lr(self.schedule.lr)  # the config's base lr after the schedule's reductions
        p = self.position
        self.metrics.note(f"resumed from {path}: epoch {p.epoch + 1}, step {p.step_in_epoch} of the epoch, "
                          f"global step {p.global_step}")
        for line in _changed_hyperparameters(meta, self.cfg, self.schedule) + self._resharded(meta):
            self.metrics.note(line)
        return p.global_step

    def _resharded(self, meta: dict) -> list[str]:
        """A checkpoint of another process layout loads (its tensors are resharded), but not exactly."""
        was, now = (meta["world_size"], meta["placement"]), (self.layout.world_size, self.checkpoints.facts["placement"])
        if was == now:
            return []
        return [f"the checkpoint was written by {was[0]} process(es) as {was[1]}; this run is {now[0]} as {now[1]}: "
                "the weights and momentum are resharded exactly, the dropout RNG "
                + ("is restored" if was[0] == now[0] else "starts afresh") + ", so the run is not bit-identical "
                "to an uninterrupted one"]

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _warm_up(self) -> None:
        """``[lr_scheduler] warmup_steps``: step g (0-based) runs at (g + 1) / warmup_steps of the
        schedule's lr — a function of the global step, so a resumed run repeats it exactly."""
        w, g = self.cfg.lr_scheduler.warmup_steps, self.position.global_step
        if w and g <= w:
            self._set_lr(self.schedule.lr * min(1.0, (g + 1) / w))

    def _diverged(self, at: PendingStep) -> TrainingError:
        """The NaN error, after setting aside the checkpoints saved while the loss diverged."""
        where = f"step {at.step} (epoch {at.epoch + 1}, step {at.step_in_epoch} of {at.steps})"
        if not self.cfg.checkpoint.enable:
            return TrainingError(f"the loss is not finite at {where}; training stopped before updating the "
                                 "weights. Checkpoints are off, so a rerun starts over: lower [optimizer] lr or "
                                 "check the data.")
        keep, moved = self.checkpoints.set_aside_after_divergence()
        aside = (f" The {moved} checkpoint(s) saved after it while the loss was diverging were renamed "
                 f"to *{ckpt.DIVERGED}." if moved else "")
        start = (f"the same command resumes from the last healthy checkpoint, {keep}." if keep else
                 "no healthy checkpoint exists, so the same command starts over.")
        return TrainingError(f"the loss is not finite at {where}; training stopped before updating the weights."
                             f"{aside} Lower [optimizer] lr (e.g. --set optimizer.lr={self.schedule.base_lr / 10:g}) "
                             f"or check the data, then run the same command: {start} The lr in the config is "
                             "the one that applies (docs/training.md, Failure and recovery).")

    # -- loop --------------------------------------------------------------------------

    def _loader(self):
        lay, p = self.layout, self.position
        return build_train_loader(self.cfg.data, batch_size=self.cfg.training.batch_size, seed=self.cfg.job.seed,
                                  epoch=p.epoch, start_step=p.step_in_epoch, dp_rank=lay.dp_rank,
                                  dp_size=lay.dp_size, mp_group=lay.mp_group, device=lay.devices[0])

    def _check_even_evaluation(self) -> None:
        """Under a plan whose workers each run their own samples through an exchange, every worker must
        evaluate as many images, batch by batch, as the others (or the exchange would wait forever)."""
        lay, v = self.layout, self.cfg.validation
        if not lay.every_rank_a_replica:
            return
        counts = {"the validation images": self.info.num_val}
        if v.ten_crop != "never" and v.ten_crop_images:
            counts["[validation] ten_crop_images"] = min(v.ten_crop_images, self.info.num_val)
        for what, n in counts.items():
            if n % lay.dp_size:
                raise ConfigError(f"[parallelism] plan = {self.cfg.parallelism.plan!r} evaluates {n} images "
                                  f"({what}) on {lay.dp_size} workers, each its equal share, and {n} does not divide "
                                  f"by {lay.dp_size}: use a count that does, or another plan.")

    def _eval_loader(self, ten_crop: bool):
        lay = self.layout
        return build_eval_loader(self.cfg.data, batch_size=self.cfg.validation.batch_size, ten_crop=ten_crop,
                                 dp_rank=lay.dp_rank, dp_size=lay.dp_size, device=lay.devices[0],
                                 limit=self.cfg.validation.ten_crop_images if ten_crop else 0)

    def validate(self, *, final: bool) -> dict[str, float]:
        v = self.cfg.validation
        results = {}
        start = time.perf_counter()
        with torch.autocast(**self.autocast):
            centre = evaluate(self.model, self._eval_loader(False), ten_crop=False, dp_group=self.layout.dp_group)
            ten = (evaluate(self.model, self._eval_loader(True), ten_crop=True, dp_group=self.layout.dp_group)
                   if v.ten_crop == "every" or (v.ten_crop == "end" and final) else None)
        results.update({f"val_{k}_centre": centre[k] for k in ("top1_error", "top5_error")})
        forwards = centre["images"]
        if ten is not None:
            results.update({f"val_{k}_10crop": ten[k] for k in ("top1_error", "top5_error")})
            forwards += 10 * ten["images"]
        self.metrics.validation(self.position.global_step, self.position.epoch, results,
                                self.optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - start,
                                forwards=forwards,
                                ten_crop_images=ten["images"] if ten and ten["images"] < centre["images"] else 0)
        return results

    def _drill(self) -> None:
        d = self.cfg.debug.kill_at_step
        lay = self.layout
        if d and self.position.global_step == d and lay.attempt == 0 and lay.rank == lay.world_size - 1:
            print(f"[alexnet-mp] debug.kill_at_step: rank {lay.rank} kills itself after step {d}",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def _limit_reached(self) -> bool:
        m = self.cfg.training.max_steps
        return bool(m) and self.position.global_step >= m

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward, gradient sync and update, with no host synchronisation: the
        loss stays on the device until :meth:`flush` reads it. A non-finite loss on any rank
        skips this update and every later one on the device (fused SGD's ``found_inf``), and the
        next :meth:`flush` stops the run: the weights stay those from before that step.
        With ``[training] cuda_graph`` the step is a replay of the captured one where it can be."""
        if self.cfg.training.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        d = self.cfg.debug
        inject = d.inject_nan_at_step == self.position.global_step + 1 and d.inject_nan_rank in (-1, self.layout.rank)
        timed = not self.metrics.estimated  # the forward is timed only while the run-length estimate wants it
        self._forward_s = None
        if self.graph is None:
            return self._step_body(images, labels, inject=inject, timed=timed)
        labels = labels.to(images.device, non_blocking=True)
        captures = self.graph.captures
        graphed = None if inject else self.graph.step(images, labels)
        if graphed is None:
            with self.graph.eager():
                return self._step_body(images, labels, inject=inject, timed=timed)
        if self.graph.captures != captures:
            self.metrics.note(f"step {self.position.global_step + 1}: the step is captured as a CUDA graph at lr "
                              f"{self.optimizer.param_groups[0]['lr']:g} (capture {self.graph.captures})")
        loss, logits = graphed
        # the graph's outputs are overwritten by the next replay: keep a copy of the loss (on the device)
        return loss.clone(), logits

    def _step_body(self, images, labels, *, inject: bool = False,
                   timed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The step itself, eager or being captured (the graph calls it with the defaults): nothing
        in it waits for the device but the forward's timing, while the estimate wants it."""
        t_forward = time.perf_counter()
        # the weight-cast cache off: a cached cast would be a stale tensor in a graph's replay
        with torch.autocast(**self.autocast, cache_enabled=False):
            logits = self.forward(images)
        loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        if inject:
            loss = loss * float("nan")
        if timed:
            _wait_for(logits.device)
            self._forward_s = time.perf_counter() - t_forward
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.layout.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # queued on the device: the host does not wait
        if self._skip is None:
            self._skip = torch.zeros_like(bad)
        torch.maximum(self._skip, bad, out=self._skip)  # in place: a graph holds its address
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.found_inf = self._skip
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def flush(self) -> None:
        """Read the losses of the steps since the last read (one copy, one all-reduce for the
        worst over replicas): the first one says whether the latest checkpoint is healthy; a
        non-finite one stops the run (:class:`TrainingError`) naming its step."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        mine = torch.stack([q.loss.float().reshape(()) for q in pending])
        worst = torch.where(torch.isfinite(mine), mine, torch.full_like(mine, math.inf))
        if self.layout.distributed:
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        for q, w, m in zip(pending, worst.tolist(), mine.tolist(), strict=True):
            self.checkpoints.judge(w if math.isfinite(w) else math.nan)
            if not math.isfinite(w):
                raise self._diverged(q)
            self.losses.append(m)
            self._last_loss = m

    def _epoch(self, loader) -> bool:
        """Run the rest of an epoch; False when a signal stopped the run."""
        cfg, p = self.cfg, self.position
        steps = len(loader)
        self.model.train()
        t_data = time.perf_counter()
        for images, labels in loader:
            data_s = time.perf_counter() - t_data
            if _agree([self.stop.signal is not None], self.layout)[0]:
                self.save("signal")
                self.metrics.note(f"stopped by signal {self.stop.signal or 'on another rank'} after step "
                                  f"{p.global_step}; run the same command to resume")
                return False
            t_step = time.perf_counter()
            self._warm_up()
            self.model.stats.reset()
            loss, logits = self.train_step(images, labels)
            self._pending.append(PendingStep(p.global_step + 1, p.epoch, p.step_in_epoch + 1, steps, loss))
            p.global_step += 1
            p.step_in_epoch += 1
            p.samples_seen += cfg.training.batch_size * self.layout.dp_size
            logged = self.metrics.logs_at(p.global_step, p.step_in_epoch, steps)
            if logged:
                self.flush()
            self.metrics.step(p.global_step, p.epoch, p.step_in_epoch, steps,
                              loss=self._last_loss if logged else None, logits=logits, labels=labels,
                              lr=self.optimizer.param_groups[0]["lr"], data_s=data_s,
                              step_s=time.perf_counter() - t_step, forward_s=self._forward_s,
                              stats=self.model.stats, dp_bytes=self._dp_bytes)
            if cfg.checkpoint.interval and p.global_step % cfg.checkpoint.interval == 0 and p.step_in_epoch < steps:
                self.save("interval")
            self._drill()
            if self._limit_reached():
                break
            t_data = time.perf_counter()
        return True

    def _end_of_epoch(self) -> dict[str, float]:
        cfg, p = self.cfg, self.position
        self.flush()
        p.epoch += 1
        p.step_in_epoch = 0
        results = {}
        if validates_after_epoch(cfg, p.epoch):
            results = self.validate(final=p.epoch == cfg.training.epochs)
        if self.schedule.after_epoch(p.epoch, results.get("val_top1_error_centre")):
            self._set_lr(self.schedule.lr)
        self.metrics.filters(self.model, p.global_step)
        self.save("epoch end")
        return results

    def train(self) -> dict[str, float]:
        cfg, p = self.cfg, self.position
        self.stop.install()
        self.metrics.open(purge_step=self.resume() + 1)
        loader = self._loader()
        for line in _schedule_misfits(cfg, len(loader)):
            self.metrics.note(line)
        self.metrics.banner(self.model, len(loader), self.optimizer.param_groups[0]["lr"])
        results: dict[str, float] = {}
        validated_at = -1
        while p.epoch < cfg.training.epochs and not self._limit_reached():
            loader = loader if loader is not None else self._loader()
            if not self._epoch(loader):
                return results
            steps, loader = len(loader), None  # the next epoch has its own order and augmentation
            if p.step_in_epoch >= steps:
                results = self._end_of_epoch()
                validated_at = p.global_step if results else validated_at
            elif self._limit_reached():
                self.save("max_steps")
        self.flush()
        # the rule train/eta.py counts with, so the ETA and the run agree
        again = final_validation_needed(cfg, validated_at_stop=validated_at == p.global_step,
                                        last_epoch=p.epoch == cfg.training.epochs)
        final = self.validate(final=True) if again else results
        self.metrics.finish(self.model, final, self._eval_loader(False), p.global_step)
        return final

    def close(self) -> None:
        self.stop.uninstall()
        self.metrics.close()
        if self.lock is not None:
            self.lock.release()
        teardown(self.layout)


def _schedule_misfits(cfg: Config, steps_per_epoch: int) -> list[str]:
    """An lr drop or a warm-up the run never reaches: said at the start, not found out at the end."""
    s, epochs = cfg.lr_scheduler, cfg.training.epochs
    lines = []
    late = [e for e in s.at_epochs if e > epochs] if s.kind == "epochs" else []
    if late:
        lines.append(f"[lr_scheduler] at_epochs = {list(s.at_epochs)}: the run has {epochs} epoch(s) ([training] "
                     f"epochs), so the drop(s) after epoch(s) {late} will not happen")
    if s.warmup_steps > epochs * steps_per_epoch:
        lines.append(f"[lr_scheduler] warmup_steps = {s.warmup_steps} is longer than the whole run ({epochs} "
                     f"epoch(s) of {steps_per_epoch} steps): the lr never reaches {cfg.optimizer.lr:g}")
    return lines


def _changed_hyperparameters(meta: dict, cfg: Config, schedule: PlateauSchedule | EpochSchedule) -> list[str]:
    """What the config changes on resume: the config wins, and the run says so."""
    lines = []
    stored_lr = meta["config"].get("optimizer", {}).get("lr")
    if stored_lr is not None and stored_lr != cfg.optimizer.lr:
        lines.append(f"[optimizer] lr = {cfg.optimizer.lr:g} in the config, {stored_lr:g} in the checkpoint: "
                     f"the config wins; after {schedule.reductions} reduction(s) the lr is now {schedule.lr:g}")
    for key in ("momentum", "weight_decay"):
        stored, now = meta["optimizer"].get(key), getattr(cfg.optimizer, key)
        if stored is not None and stored != now:
            lines.append(f"[optimizer] {key} = {now:g} in the config, {stored:g} in the checkpoint: the config wins")
    return lines


def run(cfg: Config) -> dict[str, float]:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
