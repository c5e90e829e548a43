"""``make-dataset``: a generated ImageNet-style folder of real JPEGs with learnable classes.

Each class is a (shape, surface pattern, hue) triple: a star with stripes in orange, a
ring with dots in blue, ... Every image draws one or two instances of its class's object
at a random position, scale and rotation over a noisy colour gradient with clutter (small
shapes of any kind and colour), at a photograph-like size and aspect ratio, and about one
in twenty is saved grayscale (so hue alone never decides). Objects stay near the centre
so that a random 224 crop of the 256 centre square (the paper's augmentation) keeps them.
The same ``seed`` writes byte-identical files. The folder appears whole or not at all: the
images are written to a hidden folder inside the root and renamed into place at the end.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent")
PATTERNS = ("plain", "striped", "checked", "dotted")
HUES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet", "magenta", "pink")
MAX_CLASSES = len(SHAPES) * len(PATTERNS) * len(HUES)
GRAYSCALE_FRACTION = 0.05


def class_spec(k: int) -> tuple[int, int, int]:
    """Class ``k`` as (shape, pattern, hue) indices: unique for k < MAX_CLASSES, hues shared by several."""
    pair = k % (len(SHAPES) * len(PATTERNS))
    shape, pattern = pair % len(SHAPES), pair // len(SHAPES)
    hue = (k // (len(SHAPES) * len(PATTERNS)) + 3 * pair) % len(HUES)
    return shape, pattern, hue


def class_name(k: int) -> str:
    """A folder name that sorts in class order, e.g. ``003_orange_plain_star``."""
    shape, pattern, hue = class_spec(k)
    return f"{k:03d}_{HUES[hue]}_{PATTERNS[pattern]}_{SHAPES[shape]}"


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _outline(shape: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon points of ``SHAPES[shape]`` (discs and rings are drawn as ellipses elsewhere)."""
    def ring(n: int, radii: list[float], phase: float = 0.0) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = angle + phase + 2 * math.pi * i / (n * len(radii))
            rr = r * radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    name = SHAPES[shape]
    if name == "square":
        return ring(4, [1.0], math.pi / 4)
    if name == "triangle":
        return ring(3, [1.0], -math.pi / 2)
    if name == "star":
        return ring(5, [1.0, 0.42], -math.pi / 2)
    if name == "hexagon":
        return ring(6, [1.0])
    if name == "cross":
        w = 0.33
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in base]
    raise ValueError(name)


def _draw_shape(mask: ImageDraw.ImageDraw, shape: int, cx: float, cy: float, r: float, angle: float) -> None:
    """Draws ``SHAPES[shape]`` as 255 on an ``L`` mask (holes are 0)."""
    name = SHAPES[shape]
    if name == "disc":
        mask.ellipse((cx - r, cy - r * 0.85, cx + r, cy + r * 0.85), fill=255)
    elif name == "ring":
        mask.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        mask.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
    elif name == "crescent":
        mask.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        mask.ellipse((cx + dx - 0.8 * r, cy + dy - 0.8 * r, cx + dx + 0.8 * r, cy + dy + 0.8 * r), fill=0)
    else:
        mask.polygon(_outline(shape, cx, cy, r, angle), fill=255)


def _stamp(img: Image.Image, shape: int, cx: float, cy: float, r: float, angle: float, colour) -> None:
    """Pastes one small solid shape (clutter) through a mask the size of its bounding box."""
    side = int(2 * r) + 3
    mask = Image.new("L", (side, side), 0)
    _draw_shape(ImageDraw.Draw(mask), shape, side / 2, side / 2, r, angle)
    img.paste(colour, (int(cx - side / 2), int(cy - side / 2)), mask)


def _pattern(pattern: int, h: int, w: int, period: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 map of the surface pattern (1 = second colour) over the whole image."""
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    name = PATTERNS[pattern]
    if name == "plain":
        return np.zeros((1, 1), np.float32)
    if name == "striped":
        return ((u / period) % 1.0 < 0.5).astype(np.float32)
    if name == "checked":
        return (((u / period) // 1 + (v / period) // 1) % 2).astype(np.float32)
    du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
    return (du * du + dv * dv < np.float32(0.09)).astype(np.float32)


def render(k: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``k``, all randomness from ``rng``."""
    shape, pattern, hue = class_spec(k)
    short = int(rng.integers(160, 480))
    aspect = float(np.exp(rng.uniform(math.log(0.6), math.log(1.8))))
    h, w = (short, int(short * aspect)) if aspect >= 1 else (int(short / aspect), short)
    if rng.random() < 0.5:
        h, w = w, h
    img, noise = _background(h, w, rng)
    late = _clutter(img, h, w, rng)
    img = _objects(img, shape, pattern, hue, noise, rng)
    for args in late:
        _stamp(img, *args)
    if rng.random() < GRAYSCALE_FRACTION:
        img = img.convert("L")
    return img


def _background(h: int, w: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A low-saturation gradient plus sensor-like noise; the noise too (the object reuses it)."""
    c0 = np.array(_hsv(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.3, 0.9)), np.float32)
    c1 = np.array(_hsv(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.3, 0.9)), np.float32)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    ramp = t[None, :, None] if len(t) == w else t[:, None, None]
    noise = rng.standard_normal((h, w, 1), dtype=np.float32)
    bg = np.empty((h, w, 3), np.float32)
    np.add(c0 * (1 - ramp) + c1 * ramp, noise * np.float32(rng.uniform(3, 14)), out=bg)
    return Image.fromarray(np.clip(bg, 0, 255, out=bg).astype(np.uint8)), noise


def _clutter(img: Image.Image, h: int, w: int, rng: np.random.Generator) -> list[tuple]:
    """Small shapes of every kind and colour stamped now; every fourth is returned, to be
    stamped after the object (an occluder)."""
    s = min(h, w)
    n_clutter = int(rng.integers(3, 12))
    late = []
    for i in range(n_clutter):
        args = (int(rng.integers(len(SHAPES))), rng.uniform(0, w), rng.uniform(0, h), s * rng.uniform(0.03, 0.09),
                rng.uniform(0, 2 * math.pi), _hsv(rng.random(), rng.uniform(0.2, 1), rng.uniform(0.2, 1)))
        if i % 4 == 3:
            late.append(args)
        else:
            _stamp(img, *args)
    return late


def _objects(img: Image.Image, shape: int, pattern: int, hue: int, noise: np.ndarray,
             rng: np.random.Generator) -> Image.Image:
    """The object(s): the class's shape filled with its pattern in its hue, over ``img``."""
    h, w = noise.shape[:2]
    s = min(h, w)
    base_h = (hue + rng.uniform(-0.3, 0.3)) / len(HUES)
    main = _hsv(base_h % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    second = _hsv((base_h + rng.uniform(-0.04, 0.04)) % 1.0, rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.45))
    surface = _pattern(pattern, h, w, s * rng.uniform(0.05, 0.1), rng.uniform(0, math.pi), rng)[..., None]
    main_c, second_c = np.array(main, np.float32), np.array(second, np.float32)
    fill = main_c + (second_c - main_c) * surface
    fill = fill + noise[::-1] * np.float32(6)
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    count = 1 if rng.random() < 0.75 else 2
    for _ in range(count):
        r = s * (rng.uniform(0.2, 0.32) if count == 1 else rng.uniform(0.14, 0.22))
        cx = w / 2 + rng.uniform(-0.22, 0.22) * s
        cy = h / 2 + rng.uniform(-0.22, 0.22) * s
        _draw_shape(mdraw, shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
    return Image.composite(Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8)), img, mask)


def make_dataset(
    root: str | Path,
    *,
    classes: int = 10,
    train_per_class: int = 300,
    val_per_class: int = 50,
    seed: int = 0,
    progress: bool = True,
    workers: int = 0,
) -> Path:
    """Writes ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``; returns ``root``.

    Atomic: an exception or Ctrl-C leaves no ``train/`` or ``val/`` (nor a ``root`` it created),
    so the corrected rerun works; ``train/``, which means "the dataset exists", appears last.
    ``workers`` processes render the images (0: one per CPU this process may use); the files are
    the same for any number.
    """
    _check_options(classes, train_per_class, val_per_class, seed)
    root = Path(root)
    _check_target(root)
    created = _missing_folders(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".make-dataset-", dir=root))
    except OSError as err:
        _remove_empty(created)
        raise DataError(f"cannot create the dataset folder {root}: {err.strerror or err}; choose a folder "
                        "you can write.") from None
    placed = []
    try:
        _write_images(work, root, classes, train_per_class, val_per_class, seed, progress,
                      workers or default_workers())
        for split in ("val", "train"):
            (work / split).replace(root / split)
            placed.append(root / split)
    except BaseException as err:
        for path in placed:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        _remove_empty(created)
        if isinstance(err, OSError):
            raise DataError(f"cannot write the dataset to {root}: {err}; nothing was left behind.") from None
        raise
    shutil.rmtree(work, ignore_errors=True)  # empty by now
    return root


def _check_options(classes: int, train_per_class: int, val_per_class: int, seed: int) -> None:
    """A ``DataError`` naming the first option out of range, before anything is written."""
    if not 2 <= classes <= MAX_CLASSES:
        raise DataError(f"--classes {classes}: use between 2 and {MAX_CLASSES} classes.")
    if train_per_class < 1 or val_per_class < 1:
        raise DataError(
            f"--train-per-class {train_per_class} / --val-per-class {val_per_class}: use at least 1 image each."
        )
    if seed < 0:
        raise DataError(f"--seed {seed}: use a whole number >= 0.")


def _check_target(root: Path) -> None:
    """A ``DataError`` unless ``root`` is a folder (or absent) with no non-empty ``train/`` or ``val/``."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; make-dataset writes a folder (DIR/train/<class>/*.jpg, DIR/val/…).")
    for split in ("train", "val"):
        path = root / split
        try:
            used = path.exists() and (not path.is_dir() or any(path.iterdir()))
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror or err}.") from None
        if used:
            raise DataError(f"{path} already exists and is not empty; choose a new folder or remove it.")


def _missing_folders(root: Path) -> list[Path]:
    """``root`` and its ancestors that do not exist yet, deepest first: what a failed run removes."""
    missing = []
    for path in (root, *root.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


def _write_one(work: Path, seed: int, job: tuple[str, int, int]) -> None:
    split, k, i = job
    # One generator per image: any single file can be regenerated on its own, by any worker.
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, k, i])
    img = render(k, rng)
    img.save(work / split / class_name(k) / f"{split}_{k:03d}_{i:05d}.jpg", "JPEG", quality=int(rng.integers(75, 96)))


def _write_chunk(work: Path, seed: int, jobs: list[tuple[str, int, int]]) -> int:
    for job in jobs:
        _write_one(work, seed, job)
    return len(jobs)


def _write_images(work: Path, root: Path, classes: int, train_per_class: int, val_per_class: int, seed: int,
                  progress: bool, workers: int) -> None:
    """Every image into ``work/<split>/<class>/``, on ``workers`` processes; the progress bar names
    ``root``. The bytes do not depend on ``workers``: each image has its own generator."""
    jobs = [
        (split, k, i)
        for split, n in (("train", train_per_class), ("val", val_per_class))
        for k in range(classes)
        for i in range(n)
    ]
    for split in ("train", "val"):
        for k in range(classes):
            (work / split / class_name(k)).mkdir(parents=True)
    bar = click.progressbar(length=len(jobs), label=f"make-dataset {root}", file=sys.stderr) if progress else None
    if bar:
        bar.__enter__()
    try:
        if workers <= 1:
            for job in jobs:
                _write_one(work, seed, job)
                if bar:
                    bar.update(1)
            return
        chunk = 16
        parts = [jobs[j:j + chunk] for j in range(0, len(jobs), chunk)]
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_write_chunk, work, seed, part) for part in parts]
            try:
                for done in as_completed(futures):
                    n = done.result()
                    if bar:
                        bar.update(n)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        if bar:
            bar.__exit__(None, None, None)


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
