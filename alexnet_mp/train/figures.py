"""The paper's Figure 3: conv1 kernels per column, and how colour-specific each column is.

The paper found column 1's kernels largely colour-agnostic and column 2's largely
colour-specific. ``colour_specificity`` measures it per kernel as the share of the
kernel's energy that is not its grey part: with g the mean over RGB of a kernel w,
s = ||w - g||^2 / ||w||^2 — 0 for a kernel that weighs R, G and B alike, towards 1 for
one that responds to colour contrasts.
"""

from __future__ import annotations

import torch

from ..layers import COLUMNS


def colour_specificity(weight: torch.Tensor) -> torch.Tensor:
    """Per-kernel colour specificity of conv1 weights ``(K, 3, h, w)``."""
    w = weight.detach().double()
    grey = w.mean(dim=1, keepdim=True)
    energy = w.pow(2).flatten(1).sum(1).clamp_min(1e-30)
    return ((w - grey).pow(2).flatten(1).sum(1) / energy).float()


def column_specificity(weight: torch.Tensor) -> list[float]:
    """Mean colour specificity of each column's conv1 kernels (weight of the whole layer)."""
    return [s.mean().item() for s in colour_specificity(weight).chunk(COLUMNS)]


def kernel_grid(weight: torch.Tensor, *, columns: int = 8, scale: int = 4, pad: int = 1) -> torch.Tensor:
    """Kernels ``(K, 3, h, w)`` as one image ``(3, H, W)`` in [0, 1], each kernel stretched to its range."""
    w = weight.detach().float().cpu()
    k, _, h, wd = w.shape
    lo = w.flatten(1).min(1).values[:, None, None, None]
    hi = w.flatten(1).max(1).values[:, None, None, None]
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    w = w.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    rows = -(-k // columns)
    cell_h, cell_w = h * scale + pad, wd * scale + pad
    grid = torch.ones(3, rows * cell_h + pad, columns * cell_w + pad)
    for i in range(k):
        r, c = divmod(i, columns)
        grid[:, pad + r * cell_h: pad + r * cell_h + h * scale, pad + c * cell_w: pad + c * cell_w + wd * scale] = w[i]
    return grid


def figure3(weight: torch.Tensor):
    """Both columns' kernel grids side by side, labelled, as a PIL image (the paper's Figure 3)."""
    from PIL import Image, ImageDraw

    grids = [kernel_grid(part) for part in weight.chunk(COLUMNS)]
    spec = column_specificity(weight)
    label_h, gap = 16, 12
    width = sum(g.shape[2] for g in grids) + gap * (len(grids) - 1)
    height = max(g.shape[1] for g in grids) + label_h
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for c, g in enumerate(grids):
        img = Image.fromarray((g.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        canvas.paste(img, (x, label_h))
        draw.text((x + 2, 2), f"column {c}: colour specificity {spec[c]:.2f}", fill="black")
        x += g.shape[2] + gap
    return canvas
