"""``alexnet-mp make-dataset`` and ``alexnet-mp dataset-stats``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import DataError


@click.command("make-dataset")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", default=10, show_default=True, help="Number of classes (2-384).")
@click.option("--train-per-class", default=300, show_default=True, help="Training images per class.")
@click.option("--val-per-class", default=50, show_default=True, help="Validation images per class.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0, os.cpu_count() or 1),
              help="Processes rendering images, at most one per CPU; 0: one per CPU. The files do not depend on it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def make_dataset_command(directory, classes, train_per_class, val_per_class, seed, workers, quiet):
    """Write a generated ImageNet-style dataset of JPEGs: DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg."""
    from .synthetic import make_dataset

    make_dataset(directory, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                 seed=seed, progress=not quiet, workers=workers)
    click.echo(f"wrote {classes} classes x ({train_per_class} train + {val_per_class} val) images to {directory}")


@click.command("dataset-stats")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", default=2000, show_default=True, help="Training images sampled.")
@click.option("--seed", default=0, show_default=True, help="Which images and pixels are sampled.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON to write [default: DIR/color_stats.json].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def dataset_stats_command(directory, images, seed, out, quiet):
    """Compute the training set's RGB mean, std and PCA eigen-pairs (for [data] color_stats = "dataset")."""
    from .config import STATS_FILE_NAME
    from .stats import compute_color_stats, write_color_stats

    stats = compute_color_stats(directory, images=images, seed=seed, progress=not quiet)
    try:
        path = write_color_stats(stats, out or directory / STATS_FILE_NAME)
    except OSError as err:
        raise DataError(f"cannot write the statistics to {out or directory / STATS_FILE_NAME}: "
                        f"{err.strerror or err}; choose another file with --out.") from None
    click.echo(f"mean {list(stats.mean)}  std {list(stats.std)}  eigval {list(stats.eigval)}")
    click.echo(f"wrote {path}")


COMMANDS = [make_dataset_command, dataset_stats_command]
