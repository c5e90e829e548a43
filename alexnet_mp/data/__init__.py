"""The input pipeline: the paper's augmentation on DALI (or torchvision), one batch per model.

Public interface (see docs/data.md):

- :class:`DataConfig` — the ``[data]`` config section.
- :func:`build_train_loader`, :func:`build_eval_loader` — per-epoch batch iterables.
- :func:`dataset_info` — classes and counts of a dataset folder.
- :func:`index_dataset` — the file index, scanned once for the whole job.
- :func:`make_dataset` — writes the generated ImageNet-style dataset.
"""

from .config import DataConfig
from .folder import DatasetInfo, dataset_info
from .loader import Batches, build_eval_loader, build_train_loader, index_dataset
from .synthetic import make_dataset

__all__ = ["Batches", "DataConfig", "DatasetInfo", "build_eval_loader", "build_train_loader", "dataset_info",
           "index_dataset", "make_dataset"]
