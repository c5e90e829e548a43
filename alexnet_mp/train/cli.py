"""``alexnet-mp eval``, ``export``, ``filters`` and ``predict``: what to do with a training checkpoint."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from ..errors import UserError
from ..files import atomic_write
from . import checkpoint as ckpt


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / ckpt.META).exists() or not p.is_dir():
        return p
    found = ckpt.latest(p) or ckpt.latest(p.parent if p.name == "checkpoints" else p)
    if found is None:
        raise UserError(f"{p} holds no complete checkpoint (looked for {p}/checkpoints/step-N/{ckpt.META}).")
    return found


def _new_file(out: str, force: bool) -> None:
    """``--out`` onto an existing file replaces it only when asked to."""
    if not force and Path(out).is_file():
        raise UserError(f"--out {out}: the file exists; add --force to replace it, or choose another name.")


FORCE = click.option("--force", is_flag=True, help="Replace --out if it exists.")


@click.command("export")
@click.argument("checkpoint")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the state dict (.pt).")
@FORCE
def export_command(checkpoint: str, out: str, force: bool) -> None:
    """A checkpoint (or run folder) -> one state dict for alexnet_mp.AlexNet.

    Load it with torch.load(path, weights_only=True).
    """
    _new_file(out, force)
    path = resolve_checkpoint(checkpoint)
    state, meta = ckpt.reference_state(path)
    atomic_write(Path(out), lambda tmp: torch.save(state, tmp))
    click.echo(f"wrote {out}: AlexNet({meta['num_classes']}) state dict, {sum(v.numel() for v in state.values()):,} "
               f"parameters, from {path} (step {meta['global_step']})")


@click.command("filters")
@click.argument("checkpoint")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@FORCE
def filters_command(checkpoint: str, out: str, force: bool) -> None:
    """The paper's Figure 3: conv1 kernels of each column, with colour specificity."""
    from .figures import column_specificity, figure3

    _new_file(out, force)
    path = resolve_checkpoint(checkpoint)
    state, _ = ckpt.reference_state(path)
    weight = state["conv1.weight"]
    atomic_write(Path(out), lambda tmp: figure3(weight).save(tmp, format="PNG"))
    spec = column_specificity(weight)
    click.echo(f"wrote {out}: " + ", ".join(f"column {c} colour specificity {s:.3f}" for c, s in enumerate(spec)))


@click.command("eval")
@click.argument("checkpoint")
@click.option("--data", "data_path", required=True, help="Dataset root with val/<class>/*.jpg (or a flat val/ and --val-labels).")
@click.option("--ten-crop", is_flag=True, help="Average the softmax over the paper's ten patches.")
@click.option("--batch-size", type=int, default=50, show_default=True)
@click.option("--loader", type=click.Choice(["dali", "torchvision", "nvjpeg"]), default="dali", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--val-labels", default="", help="ImageNet's flat val/: its ground truth ([data] val_labels).")
@click.option("--val-synsets", default="", help="The devkit's ID-to-wnid map ([data] val_synsets).")
def eval_command(checkpoint: str, data_path: str, ten_crop: bool, batch_size: int, loader: str, device: str,
                 val_labels: str, val_synsets: str) -> None:
    """Top-1 and top-5 error of a checkpoint on DIR/val (the single-device model, one process)."""
    from ..data import DataConfig, build_eval_loader, dataset_info
    from ..model import AlexNet
    from .evaluate import evaluate

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but CUDA is not available; use cpu or auto.")
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    path = resolve_checkpoint(checkpoint)
    state, meta = ckpt.reference_state(path)
    info = dataset_info(data_path, val_labels=val_labels, val_synsets=val_synsets)
    if info.num_classes > meta["num_classes"]:
        raise UserError(f"{data_path} has {info.num_classes} classes but {path} predicts {meta['num_classes']}.")
    model = AlexNet(meta["num_classes"]).to(dev)
    model.load_state_dict(state)
    cfg = DataConfig(path=data_path, loader=loader, val_labels=val_labels, val_synsets=val_synsets)
    results = evaluate(model, build_eval_loader(cfg, batch_size=batch_size, ten_crop=ten_crop, device=dev),
                       ten_crop=ten_crop)
    how = "ten patches" if ten_crop else "centre crop"
    click.echo(f"{path} on {data_path}/val ({results['images']} images, {how}): "
               f"top-1 error {results['top1_error']:.4f}, top-5 error {results['top5_error']:.4f}")


@click.command("predict")
@click.argument("checkpoint")
@click.argument("images", nargs=-1, required=True)
@click.option("--centre-crop", is_flag=True, help="Score the centre 224 patch only (default: the paper's ten patches).")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per image.")
@click.option("--names", "names_file", default="", help="Class names: 'wnid words' lines in label order, or a "
              "run's classes.json [default: the checkpoint's run folder's classes.json].")
def predict_command(checkpoint: str, images: tuple[str, ...], centre_crop: bool, top: int, names_file: str) -> None:
    """Top classes of each IMAGE (files or folders of JPEG/PNG/BMP) by a checkpoint (or run folder)."""
    from ..model import AlexNet
    from .predict import class_names, image_files, predict, prepare, report

    path = resolve_checkpoint(checkpoint)
    files = image_files(list(images))
    state, meta = ckpt.reference_state(path)
    names = class_names(path, names_file, meta["num_classes"])
    prepared = prepare(files, meta, ten_crop=not centre_crop)
    model = AlexNet(meta["num_classes"]).eval()
    model.load_state_dict(state)
    results = predict(model, prepared, top=top, ten_crop=not centre_crop)
    click.echo("\n".join(report(files, names, results, "centre crop" if centre_crop else "ten patches")))


@click.command("convert-checkpoint")
@click.argument("old", type=click.Path(file_okay=False))
@click.argument("new", type=click.Path(file_okay=False))
@click.option("--trust-pickle", is_flag=True,
              help="Say that OLD comes from a source you trust: its index is a pickle, and reading one can run code.")
def convert_command(old: str, new: str, trust_pickle: bool) -> None:
    """An earlier alexnet-mp checkpoint (DCP files, pickled index) -> this version's format in NEW."""
    from .convert import convert

    if not trust_pickle:
        raise UserError(f"convert-checkpoint reads {old}'s pickled .metadata, which can run code: convert only a "
                        "checkpoint from a source you trust, and add --trust-pickle to say so.")
    meta = convert(Path(old), Path(new))
    click.echo(f"wrote {new}: step {meta['global_step']} of a run of {meta['world_size']} process(es), "
               f"{meta['num_classes']} classes, in this version's format")


COMMANDS = [eval_command, export_command, filters_command, predict_command, convert_command]
