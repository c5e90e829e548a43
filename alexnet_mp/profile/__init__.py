"""``alexnet-mp profile``: per-device memory, FLOPs, time and traffic of each way to place the net.

Measured from real training steps and set beside the exact analytic figures derived from
the layer table (docs/profile.md). Modules: ``strategies`` (what runs), ``measure`` (one
rank's steps), ``analytic`` (the yardstick), ``runner`` (launch and assemble), ``report``
(table, JSON, TensorBoard), ``cli`` (the command).
"""

from .analytic import analytic_section, fc_partitions, ring_allreduce_wire
from .runner import SCHEMA, ProfileConfig, run
from .strategies import STRATEGIES, Strategy

__all__ = ["SCHEMA", "STRATEGIES", "ProfileConfig", "Strategy", "analytic_section", "fc_partitions",
           "ring_allreduce_wire", "run"]
