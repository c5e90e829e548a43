"""What the notebook (docs/notebook.py) computes, kept here so it is the package's own code.

* :func:`lrn_within_vs_across` — the paper's LRN within each column against LRN across all
  maps, on the same activations;
* :func:`load_conv1` — conv1's weights from a run folder, a checkpoint or an exported state dict;
* :func:`run_scalars` — a run's TensorBoard scalars;
* :func:`tiny_run` — a few training steps on a small generated dataset, when the user has no run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import layers as L
from .errors import CheckpointError, UserError


# --- LRN -------------------------------------------------------------------------------

def lrn_boundary_floats(num_classes: int = 1000) -> dict[str, int]:
    """Floats per sample one column would have to fetch from the other for LRN across all maps:
    the ``(size - 1) / 2`` maps nearest the boundary at every LRN layer's output size."""
    half = (L.LRN.size - 1) // 2
    return {s.layer.name: half * s.out_shape[1] * s.out_shape[2] for s in L.shapes(num_classes) if s.layer.lrn}


def lrn_within_vs_across(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Run ``model`` (an :class:`alexnet_mp.model.AlexNet`) on ``x`` with the paper's LRN
    within each column and again with one LRN across all maps, and say what changes.

    Per LRN layer (conv1, conv2): the largest relative change of each map at that layer's LRN,
    given the same input to the LRN, and which maps change at all; and for the whole net the
    relative change of the logits. Returns plain lists and floats.
    """
    from .model.lrn import ColumnLRN

    lrn = model.lrn
    within = ColumnLRN(lrn.groups, size=lrn.size, alpha=lrn.alpha, beta=lrn.beta, k=lrn.k, impl="eager")
    across = ColumnLRN(1, size=lrn.size, alpha=lrn.alpha, beta=lrn.beta, k=lrn.k, impl="eager")
    seen: list[torch.Tensor] = []

    def keep(_module, args):
        seen.append(args[0].detach())

    model.eval()
    with torch.no_grad():
        handle = lrn.register_forward_pre_hook(keep)
        try:
            logits_within = model(x)
        finally:
            handle.remove()
        model.lrn = across
        try:
            logits_across = model(x)
        finally:
            model.lrn = lrn
    boundary = lrn_boundary_floats()  # keyed by the LRN layers' names, in order
    layers = []
    for name, a in zip(boundary, seen):
        w, c = within(a), across(a)
        scale = c.abs().amax(dim=(0, 2, 3)).clamp_min(torch.finfo(c.dtype).tiny)
        per_map = ((w - c).abs().amax(dim=(0, 2, 3)) / scale).tolist()
        layers.append({"name": name, "maps": a.shape[1], "per_map_max_rel": per_map,
                       "changed_maps": [i for i, v in enumerate(per_map) if v > 0],
                       "max_rel": max(per_map)})
    diff = torch.linalg.vector_norm(logits_within - logits_across) / torch.linalg.vector_norm(logits_across)
    return {"layers": layers, "logits_rel": diff.item(),
            "argmax_agree": (logits_within.argmax(1) == logits_across.argmax(1)).float().mean().item(),
            "boundary_floats": boundary}


# --- a run -----------------------------------------------------------------------------

def load_conv1(path: str | Path) -> tuple[torch.Tensor, str]:
    """conv1's weight ``(96, 3, 11, 11)`` and where it came from: ``path`` is a run folder (its
    latest checkpoint), a checkpoint folder, or a state dict written by ``alexnet-mp export``."""
    from .train import checkpoint as ckpt
    from .train.cli import resolve_checkpoint

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p} does not exist: give a run folder (runs/<name>), a checkpoint folder "
                        "(runs/<name>/checkpoints/step-N) or a state dict from alexnet-mp export (.pt).")
    if p.is_file():
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several kinds for a file that is not a state dict
            raise CheckpointError(f"{p} is not a state dict torch can load safely ({type(err).__name__}); give "
                                  "a file written by alexnet-mp export, or a run or checkpoint folder.") from None
        if not isinstance(state, dict) or "conv1.weight" not in state:
            raise CheckpointError(f"{p} has no 'conv1.weight': it is not an alexnet-mp state dict (alexnet-mp "
                                  "export writes one).")
        return state["conv1.weight"].float(), f"{p} (state dict)"
    found = resolve_checkpoint(p)
    meta = ckpt.read_meta(found)
    state, _ = ckpt.reference_state(found)
    return state["conv1.weight"], f"{found} (step {meta['global_step']})"


def run_folder(path: str | Path) -> Path | None:
    """The run folder of ``path`` (a run, its checkpoints folder or one checkpoint), or None."""
    p = Path(path).expanduser()
    for candidate in (p, p.parent, p.parent.parent):
        if (candidate / "tb").is_dir() or (candidate / "checkpoints").is_dir():
            return candidate
    return None


def run_scalars(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar of a run's TensorBoard events (``<run>/tb``): tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        return {}
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    events = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    return {tag: ([e.step for e in es], [e.value for e in es]) for tag, es in events.items()}


def tiny_run(folder: str | Path, *, steps_per_epoch: int = 3, epochs: int = 2, batch_size: int = 4) -> Path:
    """A small run to look at when the user has none: a 2-class generated dataset and
    ``epochs`` x ``steps_per_epoch`` training steps of the split in one process (both columns,
    CPU), with TensorBoard and a checkpoint per epoch. Returns the run folder. Seconds, not
    minutes; its filters have barely moved from their initialisation."""
    from .config import load_config
    from .data import make_dataset
    from .train.trainer import Trainer

    folder = Path(folder)
    data = make_dataset(folder / "data", classes=2, train_per_class=steps_per_epoch * batch_size // 2,
                        val_per_class=2, seed=0, progress=False)
    sets = {"job.dump_folder": str(folder / "runs"), "job.name": "tiny", "data.path": str(data),
            "data.loader": "torchvision", "data.threads": 0, "data.cache_dir": str(folder / "cache"),
            "training.batch_size": batch_size, "training.epochs": epochs, "training.device": "cpu",
            "parallelism.one_process": "columns", "model.init": "kaiming", "model.dropout": 0.0,
            "validation.batch_size": 4, "validation.ten_crop": "never", "metrics.projector_images": 0,
            "metrics.enable_tensorboard": True, "metrics.log_freq": 1, "checkpoint.interval": 0,
            "checkpoint.keep_latest": 1}
    trainer = Trainer(load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()]))
    try:
        trainer.train()
    finally:
        trainer.close()
    return folder / "runs" / "tiny"


def sample_images(n: int = 4, *, seed: int = 0) -> torch.Tensor:
    """``n`` images of the generated dataset's classes 0, 1, … (alexnet_mp.data.synthetic),
    centre-cropped to 224 x 224 and standardised per channel: ``(n, 3, 224, 224)``."""
    import numpy as np
    from torchvision.transforms import functional as TF

    from .data.synthetic import render

    rng = np.random.default_rng(seed)
    size = L.INPUT_SHAPE[1]
    x = torch.stack([TF.to_tensor(TF.center_crop(TF.resize(render(k, rng), size), size)) for k in range(n)])
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std
