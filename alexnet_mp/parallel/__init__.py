"""Placing the paper's two columns on devices and processes (docs/architecture.md).

:func:`take_column` turns the whole network into one column — half of every layer. A
placement runs the network's one forward and answers its meeting places: on one device the
whole network as itself (:func:`place_on_device`), every column in one process
(:func:`place_columns`, :func:`split_in_one_process`) or one column per process
(:func:`place_column`, :func:`split_across_processes`). What crossed is in ``placement.stats``.
"""

from . import plans
from .columns import split_columns, take_column
from .mappings import gather_from_columns, gather_logits
from .placements import (ColumnParallel, LocalColumns, Placement, Shard, WholeNetwork, default_backend,
                         default_device, place_column, place_columns, place_on_device, split_across_processes,
                         split_in_one_process)
from .stats import DIRECTIONS, ExchangeStats

__all__ = ["DIRECTIONS", "plans", "ColumnParallel", "ExchangeStats", "LocalColumns", "Placement", "Shard", "WholeNetwork",
           "default_backend", "default_device", "gather_from_columns", "gather_logits", "place_column",
           "place_columns", "place_on_device", "split_across_processes", "split_columns", "split_in_one_process",
           "take_column"]
