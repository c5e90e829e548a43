"""The training loop: the paper's recipe on the split model, resumable to the sample.

One process per column under torchrun (``D`` data-parallel replicas of the pair on a
``("dp", "mp")`` mesh), or both columns in one process. The loop never looks inside the
model: it builds a :class:`~alexnet_mp.parallel.SplitAlexNet`, feeds it batches and
reads its :class:`~alexnet_mp.exchange.ExchangeStats`.

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
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import layers as L
from ..config import Config
from ..data import build_eval_loader, build_train_loader, dataset_info, make_dataset
from ..errors import ConfigError, UserError
from ..parallel import SplitAlexNet, split_across_processes, split_in_one_process
from . import checkpoint as ckpt
from .distributed import GradientReducer, Layout, setup, teardown
from .evaluate import evaluate
from .metrics import Metrics


class TrainingError(UserError):
    """Training cannot go on (a NaN loss, say); the last good checkpoint is kept."""


class _Stop:
    """Set by SIGTERM/SIGINT; the loop saves and leaves at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, _frame) -> None:
        self.signal = signum


def _plateau(cfg: Config, optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    s = cfg.lr_scheduler
    floor = cfg.optimizer.lr * s.factor ** s.max_reductions
    # min_lr a hair under lr * factor^max stops further reductions without rounding away the last one.
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=s.factor, patience=s.patience, threshold=s.threshold,
        threshold_mode="abs", min_lr=floor * (1 - 1e-6), eps=0.0)


def _ensure_data(cfg: Config, layout: Layout) -> None:
    """``[data] generate_if_missing``: the generated dataset is made on first use (rank 0; others wait)."""
    root = Path(cfg.data.path)
    if cfg.data.generate_if_missing and not (root / "train").exists():
        if layout.is_main:
            print(f"generating the quick-start dataset in {root} (alexnet-mp make-dataset)", file=sys.stderr)
            make_dataset(root)
        if layout.distributed:
            dist.barrier()


def build_model(cfg: Config, layout: Layout, num_classes: int) -> SplitAlexNet:
    kwargs = dict(num_classes=num_classes, dropout=cfg.model.dropout, lrn_alpha=cfg.model.lrn_alpha,
                  lrn_impl=cfg.model.lrn_impl, init=cfg.model.init)
    # The same seed on every rank: the weights are those of one AlexNet, whichever the placement.
    torch.manual_seed(cfg.job.seed)
    from ..model import AlexNet

    reference = AlexNet(**kwargs).state_dict()
    one = cfg.parallelism.one_process
    if layout.distributed:
        if one == "fused":
            raise ConfigError(f"[parallelism] one_process = \"fused\" applies when one process holds both columns; "
                              f"this run has one column per process ({layout.world_size} processes). Leave it "
                              "\"auto\" or run a single process.")
        model = split_across_processes(layout.mp_group, device=layout.devices[0],
                                       overlap=cfg.parallelism.overlap, **kwargs)
    elif cfg.parallelism.overlap:
        raise ConfigError("[parallelism] overlap = true needs one column per process (torchrun "
                          f"--nproc_per_node={L.COLUMNS} or 2 x D); this run holds both columns in one process, "
                          "where an exchange is a device copy with nothing to overlap. Set overlap = false.")
    else:
        devices = layout.devices  # one per column
        one_device = len(set(devices)) == 1
        if one == "fused" and not one_device:
            raise ConfigError(f"[parallelism] one_process = \"fused\" needs both columns on one device; this "
                              f"process holds them on {', '.join(map(str, devices))}. Use \"columns\" (or \"auto\").")
        fused = one == "fused" or (one == "auto" and one_device and devices[0].type == "cuda")
        model = split_in_one_process(layout.devices, fused=fused, **kwargs)
    model.load_reference_state(reference)
    return model


def _agree(flags: list[bool], layout: Layout) -> list[bool]:
    """Each flag true on every rank if it is true on any, so all ranks stop or save together."""
    if not layout.distributed:
        return flags
    t = torch.tensor([float(f) for f in flags], device=layout.devices[0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


class Trainer:
    """State that a checkpoint carries: position in the data, counts, lr schedule."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.layout = setup(cfg.training.device, cfg.parallelism.data_parallel)
        self.run_dir = Path(cfg.job.dump_folder) / cfg.job.name
        _ensure_data(cfg, self.layout)
        self.info = dataset_info(cfg.data.path)
        num_classes = cfg.model.num_classes or self.info.num_classes
        if num_classes % L.COLUMNS or num_classes < 2:
            raise ConfigError(f"{cfg.data.path} has {self.info.num_classes} classes; fc8 splits into {L.COLUMNS} "
                              "columns, so set [model] num_classes to an even number >= the class count.")
        if num_classes < self.info.num_classes:
            raise ConfigError(f"[model] num_classes = {num_classes} is fewer than the {self.info.num_classes} "
                              f"classes in {cfg.data.path}.")
        self.num_classes = num_classes
        self.model = build_model(cfg, self.layout, num_classes)
        t = cfg.training
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.reducer = None
        step_module: torch.nn.Module = self.model
        p = cfg.parallelism
        if self.layout.dp_size > 1 and p.grad_sync == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            dev = self.layout.devices[0]
            step_module = DistributedDataParallel(self.model, process_group=self.layout.dp_group,
                                                  device_ids=[dev.index] if dev.type == "cuda" else None,
                                                  bucket_cap_mb=p.bucket_mb, broadcast_buffers=False)
        else:
            self.reducer = GradientReducer(self.model.parameters(), self.layout.dp_group, self.layout.dp_size,
                                           bucket_mb=p.bucket_mb, overlap=p.grad_sync == "buckets")
        self._dp_bytes = (sum(q.numel() * q.element_size() for q in self.model.parameters())
                          if self.layout.dp_size > 1 else 0)
        self.forward = torch.compile(step_module) if t.compile else step_module
        self.autocast = dict(device_type=self.layout.devices[0].type, dtype=torch.bfloat16,
                             enabled=t.mixed_precision == "bf16")
        o = cfg.optimizer
        # fused: the whole update in one pass over weights, gradients and momentum (on this
        # CPU 52 ms instead of 195 ms for the 61 M parameters, one thread; docs/benchmarks.md).
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                         weight_decay=o.weight_decay, fused=True)
        self.scheduler = _plateau(cfg, self.optimizer)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.samples_seen = 0
        self.losses: list[float] = []  # this process's training loss per step, for tests and summaries
        # dropout differs between columns (each drops its own units) and replicas
        torch.manual_seed(cfg.job.seed * 1000 + 1 + self.layout.rank)
        self.stop = _Stop()
        self.metrics = Metrics(cfg, self.layout, self.run_dir, self.info)

    # -- checkpoints -------------------------------------------------------------------

    def _meta(self) -> dict:
        return {"num_classes": self.num_classes, "world_size": self.layout.world_size,
                "batch_size": self.cfg.training.batch_size, "seed": self.cfg.job.seed, "config": self.cfg.to_dict()}

    def _trainer_state(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "samples_seen": self.samples_seen, "lr": self.optimizer.param_groups[0]["lr"]}

    def save(self, reason: str) -> Path | None:
        if not self.cfg.checkpoint.enable:
            return None
        t = time.perf_counter()
        path = ckpt.save(self.run_dir, model=self.model, optimizer=self.optimizer, trainer=self._trainer_state(),
                         scheduler=self.scheduler.state_dict(), meta=self._meta(), rank=self.layout.rank,
                         distributed=self.layout.distributed, devices=self.layout.devices,
                         keep_latest=self.cfg.checkpoint.keep_latest)
        self.metrics.note(f"saved checkpoint {path} ({reason}, {time.perf_counter() - t:.1f}s)")
        return path

    def resume(self) -> bool:
        if not self.cfg.checkpoint.enable:
            return False
        path = ckpt.latest(self.run_dir)
        if path is None:
            return False
        meta = ckpt.read_meta(path)
        ckpt.check_compatible(path, meta, {"num_classes": self.num_classes,
                                           "batch_size": self.cfg.training.batch_size, "seed": self.cfg.job.seed})
        trainer, scheduler = ckpt.load(path, model=self.model, optimizer=self.optimizer, rank=self.layout.rank,
                                       devices=self.layout.devices)
        self.scheduler.load_state_dict(scheduler)
        self.epoch, self.step_in_epoch = int(trainer["epoch"]), int(trainer["step_in_epoch"])
        self.global_step, self.samples_seen = int(trainer["global_step"]), int(trainer["samples_seen"])
        self.metrics.note(f"resumed from {path}: epoch {self.epoch + 1}, step {self.step_in_epoch} of the epoch, "
                          f"global step {self.global_step}")
        return True

    # -- loop --------------------------------------------------------------------------

    def _loader(self):
        lay = self.layout
        return build_train_loader(self.cfg.data, batch_size=self.cfg.training.batch_size, seed=self.cfg.job.seed,
                                  epoch=self.epoch, start_step=self.step_in_epoch, dp_rank=lay.dp_rank,
                                  dp_size=lay.dp_size, mp_group=lay.mp_group, device=lay.devices[0])

    def _eval_loader(self, ten_crop: bool):
        lay = self.layout
        return build_eval_loader(self.cfg.data, batch_size=self.cfg.validation.batch_size, ten_crop=ten_crop,
                                 dp_rank=lay.dp_rank, dp_size=lay.dp_size, device=lay.devices[0])

    def validate(self, *, final: bool) -> dict[str, float]:
        v = self.cfg.validation
        results = {}
        with torch.autocast(**self.autocast):
            centre = evaluate(self.model, self._eval_loader(False), ten_crop=False, dp_group=self.layout.dp_group)
            ten = (evaluate(self.model, self._eval_loader(True), ten_crop=True, dp_group=self.layout.dp_group)
                   if v.ten_crop == "every" or (v.ten_crop == "end" and final) else None)
        results.update({f"val_{k}_centre": centre[k] for k in ("top1_error", "top5_error")})
        if ten is not None:
            results.update({f"val_{k}_10crop": ten[k] for k in ("top1_error", "top5_error")})
        self.metrics.validation(self.global_step, self.epoch, results, self.optimizer.param_groups[0]["lr"])
        return results

    def _drill(self) -> None:
        d = self.cfg.debug.kill_at_step
        if d and self.global_step == d and self.layout.attempt == 0 and self.layout.rank == self.layout.world_size - 1:
            print(f"[alexnet-mp] debug.kill_at_step: rank {self.layout.rank} kills itself after step {d}",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def _limit_reached(self) -> bool:
        m = self.cfg.training.max_steps
        return bool(m) and self.global_step >= m

    def train(self) -> dict[str, float]:
        cfg = self.cfg
        self.stop.install()
        self.resume()
        loader = self._loader()
        self.metrics.banner(self.model, len(loader))
        interval = cfg.checkpoint.interval
        results: dict[str, float] = {}
        validated_at = -1
        while self.epoch < cfg.training.epochs and not self._limit_reached():
            loader = loader if loader is not None else self._loader()
            steps = len(loader)
            self.model.train()
            t_data = time.perf_counter()
            for images, labels in loader:
                data_s = time.perf_counter() - t_data
                t_step = time.perf_counter()
                self.model.stats.reset()
                if cfg.training.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(**self.autocast):
                    logits = self.forward(images)
                loss = F.cross_entropy(logits.float(), labels.to(logits.device))
                if cfg.debug.inject_nan_at_step and self.global_step + 1 == cfg.debug.inject_nan_at_step:
                    loss = loss * float("nan")
                loss_value = loss.item()
                bad, stop = _agree([not math.isfinite(loss_value), self.stop.signal is not None], self.layout)
                if bad or stop:
                    if bad:
                        raise TrainingError(
                            f"the loss is not finite at step {self.global_step + 1} (epoch {self.epoch + 1}, step "
                            f"{self.step_in_epoch + 1} of {steps}); training stopped before updating the weights. "
                            f"The last good checkpoint is kept in {ckpt.checkpoint_dir(self.run_dir)}; lower "
                            "[optimizer] lr or check the data, then run the same command to resume.")
                    self.save("signal")
                    self.metrics.note(f"stopped by signal {self.stop.signal} after step {self.global_step}; "
                                      "run the same command to resume")
                    return results
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                dp_bytes = self.reducer.finish() if self.reducer is not None else self._dp_bytes
                self.optimizer.step()
                self.losses.append(loss_value)
                self.global_step += 1
                self.step_in_epoch += 1
                self.samples_seen += cfg.training.batch_size * self.layout.dp_size
                self.metrics.step(self.global_step, self.epoch, self.step_in_epoch, steps, loss=loss, logits=logits,
                                  labels=labels, lr=self.optimizer.param_groups[0]["lr"], data_s=data_s,
                                  step_s=time.perf_counter() - t_step, stats=self.model.stats, dp_bytes=dp_bytes)
                if interval and self.global_step % interval == 0 and self.step_in_epoch < steps:
                    self.save("interval")
                self._drill()
                if self._limit_reached():
                    break
                t_data = time.perf_counter()
            loader = None  # the next epoch has its own order and augmentation
            if self.step_in_epoch >= steps:
                self.epoch += 1
                self.step_in_epoch = 0
                if self.epoch % cfg.validation.freq_epochs == 0 or self.epoch == cfg.training.epochs:
                    results = self.validate(final=self.epoch == cfg.training.epochs)
                    validated_at = self.global_step
                    self.scheduler.step(results["val_top1_error_centre"])
                self.metrics.filters(self.model, self.global_step)
                self.save("epoch end")
            elif self._limit_reached():
                self.save("max_steps")
        final = results if validated_at == self.global_step and self.epoch == cfg.training.epochs \
            else self.validate(final=True)
        self.metrics.finish(self.model, final, self._eval_loader(False), self.global_step)
        return final

    def close(self) -> None:
        self.metrics.close()
        teardown(self.layout)


def run(cfg: Config) -> dict[str, float]:
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()
