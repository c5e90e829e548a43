"""``alexnet-mp predict CHECKPOINT IMAGE…``: each image's top classes, by name and probability.

The images are prepared as validation prepares them (short side 256, the centre 256 square,
normalised with the run's colour statistics) and scored on the paper's ten 224 patches
(softmax averaged) or, with ``--centre-crop``, on the centre patch alone. Class names come
from the run folder's ``classes.json`` (written by training on a folder dataset) or ``--names``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.folder import IMAGE_SUFFIXES, check_image
from ..data.imagenet import RUN_CLASSES, read_class_names, read_run_classes
from ..errors import DataError


def image_files(args: list[str]) -> list[str]:
    """The files named, and the images (by suffix, sorted) of the folders named."""
    files = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.name.startswith("."))
            if not found:
                raise DataError(f"{p} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise DataError(f"{p} does not exist; give image files (JPEG, PNG, BMP) or folders of them.")
    return files


def class_names(checkpoint: Path, names_file: str, num_classes: int) -> list[str]:
    """Label k's name: ``--names`` (``wnid words`` lines in label order, or a run's classes.json),
    else the ``classes.json`` of the checkpoint's run folder; a ``DataError`` saying how to give them."""
    if names_file:
        path = Path(names_file)
        names = (read_run_classes(path) if path.suffix == ".json" else
                 [f"{k} {w}" if w != k else k for k, w in read_class_names(path).items()])
    else:
        found = [p for p in (checkpoint.parent.parent / RUN_CLASSES, checkpoint.parent / RUN_CLASSES) if p.is_file()]
        if not found:
            raise DataError(f"{checkpoint} has no class names: its run folder holds no {RUN_CLASSES} (training "
                            "writes it for a folder dataset). Give them with --names FILE: one 'wnid words' line "
                            "per class in label order (ImageNet: LOC_synset_mapping.txt), or a run's classes.json.")
        names = read_run_classes(found[0])
    if len(names) > num_classes:
        raise DataError(f"{names_file or found[0]} names {len(names)} classes but {checkpoint} predicts "
                        f"{num_classes}; give the names of the run's classes.")
    return names + [f"class {k}" for k in range(len(names), num_classes)]


def _stats(meta: dict):
    """The colour statistics the run normalised with (its [data] section), ImageNet's when it has none."""
    from ..data import DataConfig
    from ..data.augment import IMAGENET, load_color_stats

    table = meta.get("config", {}).get("data") if isinstance(meta.get("config"), dict) else None
    if not isinstance(table, dict):
        return IMAGENET
    keys = ("path", "color_stats", "stats_file", "mean", "std")
    return load_color_stats(DataConfig.from_table({k: table[k] for k in keys if k in table}, "the checkpoint's config"))


def prepare(files: list[str], meta: dict, ten_crop: bool):
    """The validation preparation of ``files`` (a ``DataError`` naming a file no decoder here reads)."""
    from ..data.torchvision_loader import PlannedImages

    sizes = []
    for f in files:
        h, w, why = check_image(f)
        if why:
            raise DataError(f"{f} is not an image this toolkit can read: {why}. Give JPEG, PNG or BMP files.")
        sizes.append((h, w))
    n, stats = len(files), _stats(meta)
    return PlannedImages(files=files, labels=np.zeros(n, np.int64), sizes=np.array(sizes), offsets=np.full((n, 2), 16),
                         mirror=np.zeros(n, np.int64), shift=np.zeros((n, 3)), mean=stats.mean, std=stats.std,
                         decoder="pil", ten_crop=ten_crop)


@torch.no_grad()
def predict(model, images, *, top: int, ten_crop: bool) -> list[tuple[list[int], list[float]]]:
    """Each image's ``top`` (class, probability), most probable first."""
    out = []
    for i in range(len(images)):
        x, _ = images[i]
        probs = model(x if ten_crop else x[None]).float().softmax(-1).mean(0)
        p, k = probs.topk(min(top, probs.numel()))
        out.append((k.tolist(), p.tolist()))
    return out


def report(files: list[str], names: list[str], results, how: str) -> list[str]:
    """The lines ``predict`` prints: each file, then its classes with probabilities."""
    lines = []
    for f, (classes, probs) in zip(files, results):
        lines.append(f"{f} ({how}):")
        lines += [f"  {p:7.2%}  {names[k]}" for k, p in zip(classes, probs)]
    return lines
