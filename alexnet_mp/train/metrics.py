"""What a run shows: the console banner and progress line, and TensorBoard.

TensorBoard tags, grouped by prefix (torchtitan's habit):

* ``loss/train``, ``lr``, ``error/train_top1``, ``error/train_top5``
* ``error/val_top1_centre``, ``error/val_top5_centre``, ``error/val_top1_10crop``, ``error/val_top5_10crop``
* ``throughput/images_per_s``, ``time/data_wait_s``, ``time/step_s``
* ``memory/rank<r>/…``: CUDA ``max_allocated_GiB`` and ``max_reserved_GiB``, or the process's
  ``rss_GiB`` and ``peak_rss_GiB`` on the CPU
* ``exchange/<name>/{forward,backward}_bytes``, ``…_seconds`` (waited) and ``…_hidden_seconds``
  (in flight behind compute, with ``[parallelism] overlap``) per step (column 0's view;
  both columns send the same), ``exchange/total_bytes_per_step``, ``exchange/dp_allreduce_bytes``
* ``filters/column<c>`` (images, the paper's Figure 3) and ``filters/colour_specificity/column<c>``
* ``profile/memory_and_traffic`` (a figure, at each validation and at the end): each rank's memory
  beside the bytes of each exchange and direction at the last logged step, drawn by
  :func:`alexnet_mp.charts.memory_traffic_figure` (the chart of ``alexnet-mp profile --plot``);
  only when matplotlib is installed (``pip install -e '.[plot]'``), else a note says so once
* ``config`` (text), hparams with the final metrics, and at the end the projector:
  fc7 features of validation images with their thumbnails (the paper's Figure 4).

Only rank 0 writes; per-rank figures are gathered to it at logging steps.
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.loader import effective_loader
from ..layers import COLUMNS
from ..parallel import DIRECTIONS
from .eta import Estimate, Remaining, remaining
from .figures import column_specificity, kernel_grid

ESTIMATE_AFTER_STEPS = 5  # the banner's run-length estimate: after this many steps of this attempt

GiB = 1024**3


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def device_memory(devices) -> dict[str, float]:
    """This process's memory: CUDA peaks when on a GPU, else resident set size."""
    cuda = [d for d in dict.fromkeys(devices) if d.type == "cuda"]
    if cuda:
        return {"max_allocated_GiB": sum(torch.cuda.max_memory_allocated(d) for d in cuda) / GiB,
                "max_reserved_GiB": sum(torch.cuda.max_memory_reserved(d) for d in cuda) / GiB}
    return {"rss_GiB": _rss_bytes() / GiB, "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB}


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _schedule_words(s) -> str:
    if s.kind == "epochs":
        return "after epoch " + ", ".join(str(e) for e in sorted(s.at_epochs))
    return f"on a val plateau (at most {s.max_reductions}x)"


def _top_errors(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 error of a batch's logits."""
    with torch.no_grad():
        top = logits.detach().float().topk(min(5, logits.shape[-1]), -1).indices.cpu()
        hits = top == labels.cpu()[:, None]
        return 1 - hits[:, 0].float().mean().item(), 1 - hits.any(1).float().mean().item()


class Metrics:
    def __init__(self, cfg, layout, run_dir: Path, info) -> None:
        self.cfg, self.layout, self.run_dir, self.info = cfg, layout, run_dir, info
        self.writer = None
        self.start = time.perf_counter()
        self.window: list[tuple[float, float, int]] = []  # (step_s, data_s, images)
        self.estimate = Estimate()
        self.estimated = False
        self.last_logged: tuple[int, list[dict], int] | None = None  # (step, per-rank memory and stats, dp bytes)
        self._figure_step: int | None = None
        self._no_matplotlib_noted = False

    def open(self, purge_step: int) -> None:
        """Start TensorBoard (rank 0). ``purge_step``: the first step of this attempt; events a
        crashed attempt wrote from there on are dropped, so a resumed run shows one curve."""
        if self.layout.is_main and self.cfg.metrics.enable_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)
            self.writer.add_text("config", "```\n" + json.dumps(self.cfg.to_dict(), indent=2) + "\n```", purge_step)

    # -- console -----------------------------------------------------------------------

    def note(self, message: str) -> None:
        if self.layout.is_main:
            print(f"[alexnet-mp] {message}", file=sys.stderr, flush=True)

    def banner(self, model, steps_per_epoch: int | None, lr: float) -> None:
        if not self.layout.is_main:
            return
        c, lay, info = self.cfg, self.layout, self.info
        per_step = c.training.batch_size * lay.dp_size
        lines = [
            f"alexnet-mp training run '{c.job.name}' -> {self.run_dir}",
            f"  placement: {lay.describe()}",
            f"  data: {info.root} ({info.num_classes} classes, {info.num_train} train / {info.num_val} val images), "
            + (f"loader {effective_loader(c.data)}" if c.data.source == "folder"
               else "uint8 images made on the device and augmented there; nothing decoded"),
            f"  classes: {'; '.join(info.labels[:3])}{' …' if info.num_classes > 3 else ''}",
            f"  batch: {c.training.batch_size} per model x {lay.dp_size} replica(s) = {per_step} images per step"
            + (f", {steps_per_epoch} steps per epoch" if steps_per_epoch else ""),
            f"  recipe: SGD lr {lr:g} momentum {c.optimizer.momentum:g} weight decay "
            f"{c.optimizer.weight_decay:g}; lr x{c.lr_scheduler.factor:g} " + _schedule_words(c.lr_scheduler)
            + f"; dropout {c.model.dropout:g}; {c.training.epochs} epochs"
            + (f", at most {c.training.max_steps} steps" if c.training.max_steps else ""),
            f"  parameters: {sum(p.numel() for p in model.parameters()):,} in this process",
        ]
        if self.writer is not None:
            lines.append(f"  tensorboard --logdir {self.run_dir.parent}  (binds to localhost)")
        print("\n".join(lines), file=sys.stderr, flush=True)

    # -- per step ----------------------------------------------------------------------

    def _gather(self, obj):
        if not self.layout.distributed:
            return [obj]
        out = [None] * self.layout.world_size
        dist.all_gather_object(out, obj)
        return out

    def _left(self, step: int, epoch: int, step_in_epoch: int, steps: int) -> tuple[Remaining, tuple | None]:
        left = remaining(self.cfg, epoch=epoch, step_in_epoch=step_in_epoch, global_step=step,
                         steps_per_epoch=steps, num_val=self.info.num_val)
        return left, self.estimate.seconds(left)

    def _announce_estimate(self, step: int, epoch: int, step_in_epoch: int, steps: int) -> None:
        """Once, after the first few steps: how long the whole run will take from here."""
        left, seconds = self._left(step, epoch, step_in_epoch, steps)
        self.estimated = True
        if seconds is None or not self.layout.is_main:
            return
        train_s, val_s = seconds
        print(f"  estimate: {_fmt_time(train_s + val_s)} more -- {left.steps} steps at "
              f"{self.estimate.seconds_per_step():.2f} s, then {left.validations} validation pass(es) of "
              f"{left.forwards:,} image forwards at ~{1000 * self.estimate.seconds_per_forward():.0f} ms "
              f"({_fmt_time(val_s)}; timed from the steps' forward passes)", file=sys.stderr, flush=True)

    def logs_at(self, step: int, step_in_epoch: int, steps: int) -> bool:
        """Whether :meth:`step` logs this step (every ``log_freq`` steps and at each epoch end): the
        trainer reads the losses on the host only then."""
        return step % self.cfg.metrics.log_freq == 0 or step_in_epoch == steps

    def step(self, step: int, epoch: int, step_in_epoch: int, steps: int, *, loss: float | None, logits, labels,
             lr: float, data_s: float, step_s: float, forward_s: float | None, stats, dp_bytes: int) -> None:
        """One training step's timings; at the steps :meth:`logs_at` names, the console line and
        the scalars (``loss`` is the host's copy then, None otherwise). ``forward_s``: the forward's
        seconds while the estimate still needs them, else None."""
        self._time(step, epoch, step_in_epoch, steps, len(labels) * self.layout.dp_size, data_s, step_s, forward_s)
        if not self.logs_at(step, step_in_epoch, steps):
            return
        per_rank = self._gather({"memory": device_memory(self.layout.devices), "stats": stats.as_dict()})
        if not self.layout.is_main:
            self.window.clear()
            return
        self.last_logged = (step, per_rank, dp_bytes)
        top1, top5 = _top_errors(logits, labels)
        mean_step, mean_data, rate = self._drain_window()
        if self.writer is not None:
            self._write_scalars(step, per_rank, (
                ("loss/train", loss), ("lr", lr), ("error/train_top1", top1), ("error/train_top5", top5),
                ("throughput/images_per_s", rate), ("time/data_wait_s", mean_data), ("time/step_s", mean_step),
                ("exchange/dp_allreduce_bytes", dp_bytes)))
        _, seconds = self._left(step, epoch, step_in_epoch, steps)
        eta = sum(seconds) if seconds else 0.0
        print(f"epoch {epoch + 1}/{self.cfg.training.epochs} step {step_in_epoch}/{steps} (global {step}) | "
              f"loss {loss:.4f} top1-err {top1:.3f} lr {lr:.1e} | {rate:.1f} img/s, data {mean_data:.2f}s, "
              f"step {mean_step:.2f}s | elapsed {_fmt_time(time.perf_counter() - self.start)} "
              f"ETA {_fmt_time(eta)} (validation included)", file=sys.stderr, flush=True)

    def _time(self, step: int, epoch: int, step_in_epoch: int, steps: int, images: int, data_s: float,
              step_s: float, forward_s: float | None) -> None:
        """The step's seconds into the logging window and the run-length estimate (announced once)."""
        self.window.append((step_s, data_s, images))
        self.estimate.training_step(step_s + data_s, forward_s, images)
        if not self.estimated and self.estimate.steps >= ESTIMATE_AFTER_STEPS:
            self._announce_estimate(step, epoch, step_in_epoch, steps)

    def _drain_window(self) -> tuple[float, float, float]:
        """Mean step and data-wait seconds and images per second since the last logged step."""
        n = len(self.window)
        mean_step = sum(s for s, _, _ in self.window) / n
        mean_data = sum(d for _, d, _ in self.window) / n
        rate = sum(i for _, _, i in self.window) / max(1e-9, sum(s + d for s, d, _ in self.window))
        self.window.clear()
        return mean_step, mean_data, rate

    def _write_scalars(self, step: int, per_rank: list[dict], scalars) -> None:
        """TensorBoard: the step's ``scalars``, each rank's memory, and what column 0 exchanged."""
        w = self.writer
        for tag, v in scalars:
            w.add_scalar(tag, v, step)
        for r, item in enumerate(per_rank):
            for k, v in item["memory"].items():
                w.add_scalar(f"memory/rank{r}/{k}", v, step)
        col0 = per_rank[0]["stats"].get("0") or next(iter(per_rank[0]["stats"].values()), {})
        total = 0
        for name, per in col0.items():
            for d in DIRECTIONS:
                w.add_scalar(f"exchange/{name}/{d}_bytes", per[d]["bytes"], step)
                w.add_scalar(f"exchange/{name}/{d}_seconds", per[d]["seconds"], step)
                w.add_scalar(f"exchange/{name}/{d}_hidden_seconds", per[d]["hidden_seconds"], step)
                total += per[d]["bytes"]
        w.add_scalar("exchange/total_bytes_per_step", total, step)

    def validation(self, step: int, epoch: int, results: dict[str, float], lr: float, *, seconds: float = 0.0,
                   forwards: int = 0, ten_crop_images: int = 0) -> None:
        """``seconds`` the pass took for ``forwards`` image forwards (for the ETA); ``ten_crop_images``
        when the ten patches were scored on a subset, so the line says so."""
        if forwards:
            self.estimate.validation(seconds, forwards)
        if not self.layout.is_main:
            return
        if self.writer is not None:
            for k, v in results.items():
                self.writer.add_scalar("error/val_" + k.removeprefix("val_").replace("_error", ""), v, step)
            self.memory_traffic_figure(step)
        shown = ", ".join(f"{k.removeprefix('val_')} {v:.3f}" for k, v in results.items())
        if ten_crop_images and any(k.endswith("_10crop") for k in results):
            shown += f" (ten patches of {ten_crop_images} of the {self.info.num_val} images)"
        took = f" in {_fmt_time(seconds)}" if seconds else ""
        print(f"validation after epoch {epoch} (step {step}){took}: {shown}", file=sys.stderr, flush=True)

    def filters(self, model, step: int) -> None:
        """Figure 3: each column's conv1 kernels and colour specificity."""
        mine = {c: t["conv1.weight"] for c, t in model.own().items()}  # column (None: both) -> weight
        gathered = self._gather(mine)
        if self.writer is None:
            return
        held: dict[int | None, torch.Tensor] = {}
        for part in gathered:
            held.update(part)
        weight = held[None] if None in held else torch.cat([held[c] for c in sorted(held)])
        columns = dict(enumerate(weight.chunk(COLUMNS)))
        for c, s in enumerate(column_specificity(weight)):
            self.writer.add_scalar(f"filters/colour_specificity/column{c}", s, step)
            self.writer.add_image(f"filters/column{c}", kernel_grid(columns[c]), step)

    def memory_traffic_figure(self, step: int) -> None:
        """One figure of each rank's memory beside the bytes per exchange, from the last logged
        step (the scalars ``memory/…`` and ``exchange/…`` side by side); once per step."""
        if self.writer is None or self.last_logged is None or self._figure_step == step:
            return
        from .. import charts

        if not charts.have_matplotlib():
            if not self._no_matplotlib_noted:
                self.note(f"no memory/traffic figure in TensorBoard: matplotlib is not installed ({charts.INSTALL})")
                self._no_matplotlib_noted = True
            return
        logged, per_rank, dp_bytes = self.last_logged
        fig = charts.memory_traffic_figure(charts.training_bars(per_rank, dp_bytes, group=self.cfg.job.name),
                                          title=f"run {self.cfg.job.name!r} at step {logged}: memory per rank, "
                                                "bytes per exchange as column 0 sent them", peak_label="peak")
        self.writer.add_figure("profile/memory_and_traffic", fig, step)
        self._figure_step = step

    # -- the end -----------------------------------------------------------------------

    def finish(self, model, final: dict[str, float], loader, step: int) -> None:
        self.filters(model, step)
        n = self.cfg.metrics.projector_images
        feats, thumbs, labels = [], [], []
        if n and self.cfg.metrics.enable_tensorboard:
            from .evaluate import evaluate

            def keep(fc7, images, y):
                feats.append(fc7)
                thumbs.append(torch.nn.functional.interpolate(images, size=(48, 48), mode="area"))
                labels.append(y)

            batches = -(-n // self.cfg.validation.batch_size)
            evaluate(model, itertools.islice(loader, batches), ten_crop=False, dp_group=None, on_features=keep)
        self.note(f"finished at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()))
        if self.writer is None:
            return
        self.memory_traffic_figure(step)
        if feats:
            x = torch.cat(thumbs)[:n]
            x = (x - x.amin(dim=(1, 2, 3), keepdim=True)) / (x.amax(dim=(1, 2, 3), keepdim=True)
                                                            - x.amin(dim=(1, 2, 3), keepdim=True)).clamp_min(1e-6)
            names = [self.info.labels[i] for i in torch.cat(labels)[:n].tolist()]
            self.writer.add_embedding(torch.cat(feats)[:n], metadata=names, label_img=x, global_step=step, tag="fc7")
        c = self.cfg
        hparams = {"lr": c.optimizer.lr, "batch_size": c.training.batch_size, "momentum": c.optimizer.momentum,
                   "weight_decay": c.optimizer.weight_decay, "dropout": c.model.dropout, "lrn_alpha": c.model.lrn_alpha,
                   "world_size": self.layout.world_size, "loader": c.data.loader}
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
