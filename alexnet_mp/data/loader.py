"""``build_train_loader`` / ``build_eval_loader``: the interface the trainer calls.

A loader is built per epoch (``epoch`` picks the order and the augmentation; cheap: the
file index is cached) and yields ``(images, labels)`` on ``device``: float32 NCHW
``(B, 3, 224, 224)`` — ``(B, 10, 3, 224, 224)`` for the ten patches — and int64 ``(B,)``.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .augment import load_color_stats, lighting_shift, plan_epoch
from .config import DataConfig
from .folder import DatasetInfo, scan_split
from .sharding import eval_positions, steps_per_epoch, train_positions

log = logging.getLogger(__name__)


class Batches:
    """An epoch's batches for this process: ``len()`` is the epoch's step count.

    Iterating yields the steps ``start_step … len() - 1`` (all of them for evaluation).
    """

    def __init__(self, inner, *, steps: int, start_step: int, device, exchange=None, skipped: int = 0):
        self.inner, self.steps, self.start_step, self.device = inner, steps, start_step, device
        self.exchange, self.skipped = exchange, skipped

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for images, labels in self.inner:
            if self.device is not None:
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            if self.exchange is not None:
                images, labels = self.exchange(images), self.exchange(labels)
            yield images, labels


def _column(mp_group, column_feed: str) -> tuple[int, int]:
    """(this column's part, parts): (0, 1) unless the columns exchange decoded halves."""
    if mp_group is None or column_feed == "duplicate":
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(mp_group), dist.get_world_size(mp_group)


def _gather(mp_group, parts: int):
    """All-gathers each column's part along dim 0: column order is batch order."""
    from ..parallel.mappings import all_gather_dim0 as all_gather

    def gather(t: torch.Tensor) -> torch.Tensor:
        out = t.new_empty((t.shape[0] * parts, *t.shape[1:]))
        all_gather(out, t.contiguous(), group=mp_group)
        return out

    return gather


def _default_device(cfg: DataConfig, device):
    if device is not None:
        return torch.device(device)
    if cfg.loader in ("dali", "nvjpeg") and cfg.decode_device == "gpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return None


def dali_available() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


_fallback_noted = False
_cpu_nvjpeg_noted = False


def gpu_decoding(cfg: DataConfig, device=None) -> bool:
    """Whether ``cfg`` decodes on a GPU for output ``device`` (``None``: wherever decoding puts it):
    ``decode_device`` is not ``"cpu"``, CUDA is present and ``device`` is not a CPU."""
    wants_gpu = device is None or torch.device(device).type == "cuda"
    return cfg.decode_device != "cpu" and wants_gpu and torch.cuda.is_available()


def effective_loader(cfg: DataConfig, device=None) -> str:
    """``cfg.loader``, except that ``"dali"`` without DALI installed falls back, said once: to the
    ``"nvjpeg"`` loader (batched ``torchvision.io.decode_jpeg`` on the GPU) when it would decode on a
    GPU (:func:`gpu_decoding`), else to the torchvision loader. Both apply the same per-sample plan,
    so the batches follow the same plan and exact resume holds."""
    global _fallback_noted
    if cfg.loader == "dali" and not dali_available():
        gpu = gpu_decoding(cfg, device)
        if not _fallback_noted:
            instead = ("decoding whole batches on the GPU with torchvision.io.decode_jpeg (nvJPEG) instead, the "
                       "augmentation on the GPU too" if gpu else "decoding with the torchvision loader instead")
            log.warning(f"[data] loader = \"dali\" but NVIDIA DALI is not installed here; {instead} "
                        "(pip install nvidia-dali-cuda120 for DALI).")
            _fallback_noted = True
        return "nvjpeg" if gpu else "torchvision"
    return cfg.loader


def _nvjpeg_device(cfg: DataConfig, device) -> torch.device:
    """Where the nvJPEG loader decodes: the GPU of ``device`` (or the current one), or the CPU."""
    global _cpu_nvjpeg_noted
    if gpu_decoding(cfg, device):
        return torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if cfg.decode_device == "auto" and not _cpu_nvjpeg_noted:
        log.warning("[data] loader = \"nvjpeg\" decodes on the CPU here (no CUDA, or the batches are wanted on "
                    "the CPU): libjpeg-turbo in one thread, slow; loader = \"torchvision\" decodes in worker processes.")
        _cpu_nvjpeg_noted = True
    return torch.device("cpu")


def _make_inner(cfg, split, idx, *, offsets, mirror, shift, stats, batch_size, device, ten_crop):
    """The loader for dataset indices ``idx`` (in order) with their per-sample parameters."""
    files = split.files.take(idx)
    labels, sizes = split.labels[idx], split.sizes[idx]
    which = effective_loader(cfg, device)
    if which in ("dali", "nvjpeg") and cfg.decode_device == "gpu" and not torch.cuda.is_available():
        raise ConfigError("[data] decode_device = \"gpu\" but CUDA is not available; use \"auto\" or \"cpu\".")
    if which == "dali":
        from .dali import DaliBatches, dali_params, gpu_device_id

        device_id = None
        if gpu_decoding(cfg, device):
            device_id = gpu_device_id(device if device is not None else "cuda")  # "mixed" decoding
        params = dali_params(sizes, mirror, offsets, shift, stats, ten_crop=ten_crop)
        return DaliBatches(files=files, labels=labels, params=params, batch_size=batch_size, threads=max(1, cfg.threads),
                           prefetch=cfg.prefetch, device_id=device_id, ten_crop=ten_crop,
                           std255=255.0 * np.asarray(stats.std))
    if which == "nvjpeg":
        from .nvjpeg import NvjpegBatches

        return NvjpegBatches(files=files, labels=labels, sizes=sizes, offsets=offsets, mirror=mirror, shift=shift,
                             stats=stats, batch_size=batch_size, threads=cfg.threads, prefetch=cfg.prefetch,
                             device=_nvjpeg_device(cfg, device), ten_crop=ten_crop)
    from .torchvision_loader import PlannedImages, TorchvisionBatches

    dataset = PlannedImages(files=files, labels=labels, sizes=sizes, offsets=offsets, mirror=mirror, shift=shift,
                            mean=stats.mean, std=stats.std, decoder=cfg.torchvision_decoder, ten_crop=ten_crop)
    pin = device is not None and torch.device(device).type == "cuda"
    return TorchvisionBatches(dataset, batch_size=batch_size, threads=cfg.threads, prefetch=cfg.prefetch,
                              pin_memory=pin)


def index_dataset(cfg: DataConfig, *, group=None, progress: bool = False) -> DatasetInfo:
    """Scan and cache both splits' file index once for the whole job, before any loader is built:
    every rank of ``group`` (a CPU process group; ``None``: this process alone) checks 1/world of
    the files. The loaders built afterwards read the cached index. Returns the classes (with
    ``class_names``' words) and the usable images per split, without listing the folders again."""
    from .imagenet import names_for

    splits = [scan_split(cfg.path, split, on_bad_file=cfg.on_bad_file, threads=max(4, cfg.threads),
                         cache_dir=cfg.cache_dir, group=group, progress=progress, **cfg.split_keys())
              for split in ("train", "val")]
    classes = splits[0].classes
    return DatasetInfo(root=splits[0].root, classes=classes, num_train=len(splits[0]), num_val=len(splits[1]),
                       names=names_for(classes, cfg.class_names) if cfg.class_names else None)


def build_train_loader(
    cfg: DataConfig, *, batch_size: int, seed: int, epoch: int, start_step: int = 0,
    dp_rank: int = 0, dp_size: int = 1, mp_group=None, device=None,
) -> Batches:
    """Epoch ``epoch``'s training batches for data-parallel replica ``dp_rank`` of ``dp_size``.

    ``batch_size`` is per replica. The order and every sample's crop, flip and PCA alphas
    depend only on (seed, epoch, position), so ``start_step=k`` yields exactly the
    uninterrupted epoch's steps k, k+1, …, and both columns (same seed, same ``dp_rank``)
    get the same batch. With ``mp_group`` and ``column_feed = "exchange"`` each column
    decodes 1/|mp_group| of the batch and the parts are all-gathered over ``mp_group``.
    """
    if cfg.source == "synthetic":
        return _synthetic_train(cfg, batch_size=batch_size, seed=seed, epoch=epoch, start_step=start_step,
                                dp_rank=dp_rank, dp_size=dp_size, device=device)
    split = scan_split(cfg.path, "train", on_bad_file=cfg.on_bad_file, threads=max(4, cfg.threads),
                       cache_dir=cfg.cache_dir, **cfg.split_keys())
    stats = load_color_stats(cfg)
    steps = steps_per_epoch(len(split), batch_size, dp_size)
    if steps == 0:
        raise DataError(f"{cfg.path}/train has {len(split)} usable images, fewer than one global batch "
                        f"({batch_size} x {dp_size} replicas).")
    part, parts = _column(mp_group, cfg.column_feed)
    positions = train_positions(len(split), batch_size=batch_size, dp_rank=dp_rank, dp_size=dp_size,
                                start_step=start_step, part=part, parts=parts)
    plan = plan_epoch(len(split), seed, epoch)
    idx = plan.order[positions]
    device = _default_device(cfg, device)
    inner = _make_inner(cfg, split, idx, offsets=plan.offsets[positions], mirror=plan.mirror[positions],
                        shift=lighting_shift(plan.alphas[positions], stats, cfg.pca_std), stats=stats,
                        batch_size=batch_size // parts, device=device, ten_crop=False)
    exchange = _gather(mp_group, parts) if parts > 1 else None
    return Batches(inner, steps=steps, start_step=start_step, device=device, exchange=exchange,
                   skipped=len(split.bad))


def build_eval_loader(
    cfg: DataConfig, *, batch_size: int, ten_crop: bool = False, dp_rank: int = 0, dp_size: int = 1, device=None,
    limit: int = 0,
) -> Batches:
    """Every validation image exactly once across replicas: centre 224 crop, or the ten patches.
    ``limit``: only an evenly spaced subset of that many images (every class keeps its share).

    The last batch of a replica may be smaller than ``batch_size``. Images are
    ``(B, 3, 224, 224)``, or ``(B, 10, 3, 224, 224)`` in ``TenCrop`` order with ``ten_crop``.
    """
    if cfg.source == "synthetic":
        from . import device_source

        positions = eval_positions(cfg.synthetic_val_images, dp_rank=dp_rank, dp_size=dp_size, limit=limit)
        inner = device_source.eval_batches(cfg.synthetic_images, cfg.synthetic_classes, positions=positions,
                                           stats=load_color_stats(cfg), batch_size=batch_size, device=device,
                                           ten_crop=ten_crop)
        return Batches(inner, steps=-(-len(positions) // batch_size), start_step=0, device=None)
    split = scan_split(cfg.path, "val", on_bad_file=cfg.on_bad_file, threads=max(4, cfg.threads),
                       cache_dir=cfg.cache_dir, **cfg.split_keys())
    stats = load_color_stats(cfg)
    positions = eval_positions(len(split), dp_rank=dp_rank, dp_size=dp_size, limit=limit)
    n = len(positions)
    device = _default_device(cfg, device)
    inner = _make_inner(cfg, split, positions, offsets=np.full((n, 2), 16), mirror=np.zeros(n, np.int64),
                        shift=np.zeros((n, 3)), stats=stats, batch_size=batch_size, device=device,
                        ten_crop=ten_crop)
    return Batches(inner, steps=-(-n // batch_size), start_step=0, device=device, skipped=len(split.bad))


def _synthetic_train(cfg: DataConfig, *, batch_size, seed, epoch, start_step, dp_rank, dp_size, device) -> Batches:
    """``[data] source = "synthetic"``: both columns build the whole batch from the same plan on
    their own device (nothing to exchange; the augmentation costs the same either way)."""
    from . import device_source

    n = cfg.synthetic_images
    steps = steps_per_epoch(n, batch_size, dp_size)
    if steps == 0:
        raise ConfigError(f"[data] synthetic_images = {n} is fewer than one global batch ({batch_size} x "
                          f"{dp_size} replicas); raise it.")
    positions = train_positions(n, batch_size=batch_size, dp_rank=dp_rank, dp_size=dp_size, start_step=start_step)
    inner = device_source.train_batches(n, cfg.synthetic_classes, positions=positions, seed=seed, epoch=epoch,
                                        stats=load_color_stats(cfg), pca_std=cfg.pca_std, batch_size=batch_size,
                                        device=device)
    return Batches(inner, steps=steps, start_step=start_step, device=None)
