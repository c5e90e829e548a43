"""``DataConfig``: where the images are and how they are loaded — the ``[data]`` section."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..section import Section

POOL_IMAGE_BYTES = 256 * 256 * 3
"""One image of the synthetic pool: 256x256 RGB, uint8."""


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

from .synthetic import MAX_CLASSES

STATS_FILE_NAME = "color_stats.json"


@dataclass(kw_only=True, slots=True)
class DataConfig(Section):
    """The ``[data]`` section: dataset root, loader, decoding, bad files, colour statistics."""

    SECTION: ClassVar[str] = "data"
    path: str = "data/synthetic"
    """Dataset root holding ``train/<class>/*.jpg`` and ``val/<class>/*.jpg`` (or a flat ``val/``: ``val_labels``)."""
    loader: Literal["dali", "torchvision", "nvjpeg"] = "dali"
    """``"dali"`` (NVIDIA DALI; without it installed: ``"nvjpeg"`` when decoding on a GPU, else
    ``"torchvision"``), ``"torchvision"`` (a ``DataLoader`` decoding on the CPU) or ``"nvjpeg"``
    (whole batches decoded by ``torchvision.io.decode_jpeg`` on the GPU and augmented there)."""
    decode_device: Literal["auto", "cpu", "gpu"] = "auto"
    """DALI and nvJPEG decoding: ``"auto"`` (on the GPU when CUDA is present, else CPU), ``"cpu"``, ``"gpu"``."""
    torchvision_decoder: Literal["pil", "decode_jpeg"] = "pil"
    """The torchvision path's decoder: ``"pil"`` or ``"decode_jpeg"`` (``torchvision.io``)."""
    threads: int = 2
    """DALI ``num_threads`` / ``DataLoader`` ``num_workers`` per process (0: no workers; DALI uses 1)."""
    prefetch: int = 2
    """Batches decoded ahead (DALI ``prefetch_queue_depth``, ``DataLoader`` ``prefetch_factor``)."""
    on_bad_file: Literal["skip", "fail"] = "skip"
    """An undecodable file: ``"skip"`` it (the count is logged) or ``"fail"`` naming it."""
    color_stats: Literal["imagenet", "dataset"] = "imagenet"
    """``"imagenet"`` (published mean/std and fb.resnet.torch PCA) or ``"dataset"`` (``stats_file``)."""
    stats_file: str = ""
    """JSON written by ``alexnet-mp dataset-stats``; empty means ``<path>/color_stats.json``."""
    mean: list[float] | None = None
    """RGB mean for pixels in [0, 1]; overrides ``color_stats`` when given."""
    std: list[float] | None = None
    """RGB standard deviation for pixels in [0, 1]; overrides ``color_stats`` when given."""
    pca_std: float = 0.1
    """Standard deviation of the paper's PCA lighting alphas; 0 turns the lighting off."""
    column_feed: Literal["exchange", "duplicate"] = "exchange"
    """Both columns' identical batch: ``"exchange"`` (each decodes half, all-gather) or ``"duplicate"``."""
    cache_dir: str = ""
    """Where the validated file index is cached; empty means ``~/.cache/alexnet-mp``."""
    val_labels: str = ""
    """ImageNet's flat ``val/``: its ground truth, Kaggle's ``LOC_val_solution.csv`` or the devkit's
    ``ILSVRC2012_validation_ground_truth.txt`` (detected); empty: ``val/<class>/`` folders."""
    val_synsets: str = ""
    """With the devkit's ground truth: its ID-to-wnid map, ``meta.mat`` (needs scipy) or a text file of
    one wnid per line in ILSVRC2012_ID order; empty: the ``meta.mat`` beside ``val_labels``."""
    class_names: str = ""
    """Words for each class folder: ``LOC_synset_mapping.txt``, a ``wnid words`` file or the devkit's
    ``meta.mat``; empty: classes are shown by folder name."""
    generate_if_missing: bool = False
    """Training only: write the generated dataset (``alexnet-mp make-dataset``) at ``path`` if it has no train/."""
    generate_classes: int = 10
    """With ``generate_if_missing``: classes of the generated dataset (``make-dataset --classes``)."""
    generate_train_per_class: int = 300
    """With ``generate_if_missing``: training images per class (``--train-per-class``)."""
    generate_val_per_class: int = 50
    """With ``generate_if_missing``: validation images per class (``--val-per-class``)."""
    source: Literal["folder", "synthetic"] = "folder"
    """``"folder"``: the JPEGs under ``path``; ``"synthetic"``: uint8 images made once on the device and
    augmented there, to time the trainer apart from decoding (``path`` and the loader are not used)."""
    synthetic_images: int = 512
    """With ``source = "synthetic"``: images in the pool (one epoch); 256x256 uint8 each."""
    synthetic_val_images: int = 64
    """With ``source = "synthetic"``: the first this many pool images are the validation set."""
    synthetic_classes: int = 1000
    """With ``source = "synthetic"``: labels ``i % synthetic_classes`` (the paper's 1000)."""

    def check(self) -> None:
        self.require("path", bool(self.path), "a non-empty folder name (the dataset root)")
        self.require("val_synsets", not self.val_synsets or bool(self.val_labels),
                     "empty unless val_labels names the devkit's ground truth")
        self.require("threads", self.threads >= 0, "a whole number >= 0")
        self.require("prefetch", self.prefetch >= 1, "a whole number >= 1")
        self.require("pca_std", self.pca_std >= 0, "a number >= 0 (the paper: 0.1)")
        self.require("generate_classes", 2 <= self.generate_classes <= MAX_CLASSES,
                     f"a whole number from 2 to {MAX_CLASSES}")
        self.require("generate_train_per_class", self.generate_train_per_class >= 1, "a whole number >= 1")
        self.require("generate_val_per_class", self.generate_val_per_class >= 1, "a whole number >= 1")
        most = _memory_bytes() // 2 // POOL_IMAGE_BYTES
        self.require("synthetic_images", 1 <= self.synthetic_images <= most,
                     f"a whole number from 1 to {most:,}: the pool is made in memory, {POOL_IMAGE_BYTES:,} bytes an "
                     "image, and may take at most half of this machine's")
        self.require("synthetic_val_images", 1 <= self.synthetic_val_images <= self.synthetic_images,
                     f"a whole number from 1 to synthetic_images ({self.synthetic_images})")
        self.require("synthetic_classes", self.synthetic_classes >= 2 and self.synthetic_classes % 2 == 0,
                     "an even whole number >= 2 (fc8 splits into two columns)")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                self.require(name, len(value) == 3, "three numbers (R, G, B) for pixels in [0, 1]")
        self.require("std", self.std is None or min(self.std) > 0, "three numbers > 0")

    def split_keys(self) -> dict:
        """The keys ``folder.scan_split`` and ``dataset_info`` take from this section."""
        return {"val_labels": self.val_labels, "val_synsets": self.val_synsets}
