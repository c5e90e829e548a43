"""Top-1 and top-5 error on the validation set: centre crop, or the paper's ten patches.

With ten patches the softmax is averaged over the 4 corners + centre and their
reflections before ranking (the paper, section 4.1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..parallel import gather_from_columns
from ..parallel.overlap import Overlapped


@torch.no_grad()
def evaluate(model, loader, *, ten_crop: bool, dp_group=None, device=None, on_features=None) -> dict[str, float]:
    """Errors over every image of ``loader``, summed across data-parallel replicas.

    ``on_features(fc7, images, labels)``, if given, receives each batch's whole fc7
    activations (the input fc8 sees, gathered from both columns) — for the projector.
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64)  # top-1 hits, top-5 hits, images
    hook = None
    captured: list[torch.Tensor] = []
    if on_features is not None:
        fc8 = next(m for name, m in model.named_modules() if name.endswith("fc8"))
        hook = fc8.register_forward_pre_hook(lambda m, args: captured.append(_whole_input(m, args[0].detach())))
    try:
        for images, labels in loader:
            if device is not None:
                images = images.to(device, non_blocking=True)
            labels = labels.cpu()
            if ten_crop:
                # b images' ten patches, b crops at a time: the network sees the configured batch
                # size, not ten times it (a ten-fold batch is memory-bound and slower per crop on a CPU:
                # docs/benchmarks.md, the quick start)
                b, n = images.shape[:2]
                logits = torch.cat([model(part) for part in images.flatten(0, 1).split(b)])
                probs = logits.float().softmax(-1).view(b, n, -1).mean(1)
            else:
                probs = model(images).float().softmax(-1)
            k = min(5, probs.shape[-1])
            top = probs.topk(k, dim=-1).indices.cpu()
            hits = top == labels[:, None]
            counts += torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(), len(labels)], dtype=torch.float64)
            if on_features is not None:
                fc7 = captured[0]
                if fc7.shape[0] != images.shape[0]:  # the 2014 scheme: fc8 saw every worker's samples, rank by rank
                    fc7 = fc7.narrow(0, dist.get_rank() * images.shape[0], images.shape[0])
                on_features(fc7.cpu(), images.cpu(), labels)
                captured.clear()
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    if dp_group is not None and dist.get_world_size(dp_group) > 1:
        dist.all_reduce(counts, group=dp_group)
    hits1, hits5, total = counts.tolist()
    return {"top1_error": 1.0 - hits1 / total, "top5_error": 1.0 - hits5 / total, "images": int(total)}


def _whole_input(layer, x: torch.Tensor) -> torch.Tensor:
    """fc8's input from both columns: an overlapped fc8 takes only its own column's half."""
    if isinstance(layer, Overlapped):
        return gather_from_columns(x, layer.group)
    return x
