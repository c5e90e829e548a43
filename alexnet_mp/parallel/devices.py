"""Which device and which backend a rank gets.

One GPU per rank is the intended layout, and there NCCL drives it. NCCL refuses two ranks on
one GPU, so when a node has fewer GPUs than ranks (the columns of a two-process run sharing
one GPU — how a one-GPU machine exercises the column-per-process code on CUDA) the ranks take
the GPUs round-robin and talk over gloo with their CUDA tensors: gloo all-reduces and
broadcasts those itself, and the column exchanges it cannot do on CUDA (all-gather,
reduce-scatter) go through host memory (:func:`alexnet_mp.parallel.mappings.needs_host_staging`).
That layout is for exercising and measuring the code paths, not for speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class RankDevice:
    device: torch.device
    backend: str
    sharing: int
    """Ranks of this node on this rank's GPU (1: a GPU of its own; 0 on the CPU)."""

    def describe(self) -> str:
        if self.device.type != "cuda" or self.sharing <= 1:
            return f"{self.device} ({self.backend})"
        return (f"{self.device} shared by {self.sharing} ranks (gloo: NCCL takes one rank per GPU; "
                "all-gathers and reduce-scatters staged through host memory)")


def rank_device(local_rank: int, local_world: int, gpus: int) -> RankDevice:
    """The device and backend of local rank ``local_rank`` of ``local_world`` on a node with ``gpus`` GPUs."""
    if not 0 <= local_rank < max(1, local_world):
        raise ValueError(f"local rank {local_rank} is outside a node of {local_world} ranks")
    if gpus <= 0:
        return RankDevice(torch.device("cpu"), "gloo", 0)
    device = torch.device("cuda", local_rank % gpus)
    if local_world <= gpus:
        return RankDevice(device, "nccl", 1)
    # ranks sharing this GPU: those with the same local_rank mod gpus
    sharing = len(range(local_rank % gpus, local_world, gpus))
    return RankDevice(device, "gloo", sharing)
