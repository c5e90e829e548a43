"""The network: :class:`AlexNet` (the paper's Figure 2) and its LRN within each column.

Nothing here knows about devices or processes; :mod:`alexnet_mp.parallel` places the columns.
"""

from .alexnet import AlexNet, Network, run
from .lrn import ColumnLRN, ReluLRNPool

__all__ = ["AlexNet", "ColumnLRN", "Network", "ReluLRNPool", "run"]
