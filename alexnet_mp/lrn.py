"""Local response normalisation within each column, exact and fast.

The paper normalises each map by its ``size`` neighbours *in the same column*
(cuda-convnet's rnorm1a/rnorm1b): with two columns of 48 maps, maps 47 and 48 are not
neighbours. ``ColumnLRN(groups=2)`` on the whole 96 maps equals ``ColumnLRN(groups=1)``
on each column's 48.

``impl="fast"`` computes the window sum of squares with shifted adds and has an analytic
backward, dx = g*r - 2*alpha*beta * x * window_sum(g*x*r/d), r = d^-beta (alpha on the
sum); it agrees with ``torch.nn.LocalResponseNorm`` to a few ulp. Measured whole-step
gains are in docs/benchmarks.md. ``impl="torch"`` is the stock module, kept as the yardstick.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .layers import LRN


def _window_sum(t: torch.Tensor, half: int) -> torch.Tensor:
    """Sum over channel dim 2 of a (B, G, C, H, W) tensor in windows [c-half, c+half], zero-padded."""
    out = t.clone()
    for shift in range(1, half + 1):
        out[:, :, shift:] += t[:, :, :-shift]
        out[:, :, :-shift] += t[:, :, shift:]
    return out


def _neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d^-beta; for the paper's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)), cheaper than pow."""
    if beta == 0.75:
        r = torch.rsqrt(d)
        return r.mul_(r.sqrt())
    return d.pow(-beta)


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    # unflatten is a view for NCHW and channels_last alike (channels split into G x C/G).
    return x.unflatten(1, (groups, x.shape[1] // groups))


class _FastLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, groups, size, alpha, beta, k):
        xg = _grouped(x, groups)
        d = _window_sum(xg * xg, (size - 1) // 2).mul_(alpha).add_(k)
        r = _neg_pow(d, beta)
        y = xg * r
        ctx.save_for_backward(xg, d, r)
        ctx.params = (groups, size, alpha, beta)
        return y.flatten(1, 2)

    @staticmethod
    def backward(ctx, g):
        xg, d, r = ctx.saved_tensors
        groups, size, alpha, beta = ctx.params
        gr = _grouped(g, groups) * r
        t = _window_sum(gr.mul(xg).div_(d), (size - 1) // 2)
        dx = gr.sub_(t.mul_(xg).mul_(2.0 * alpha * beta))
        return dx.flatten(1, 2), None, None, None, None, None


class ColumnLRN(nn.Module):
    """The paper's LRN over ``size`` adjacent maps within each of ``groups`` columns."""

    def __init__(self, groups: int = 1, *, size: int = LRN.size, alpha: float = LRN.alpha,
                 beta: float = LRN.beta, k: float = LRN.k,
                 impl: Literal["fast", "torch"] = "fast") -> None:
        super().__init__()
        if impl not in ("fast", "torch"):
            raise ValueError(f"LRN impl must be 'fast' or 'torch', got {impl!r}")
        if size % 2 != 1:
            raise ValueError(f"LRN size must be odd (a window centred on each map), got {size}")
        self.groups, self.size, self.alpha, self.beta, self.k, self.impl = groups, size, alpha, beta, k, impl
        # torch's module divides alpha by size: the paper's alpha on the sum is alpha*size there.
        self._torch = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.groups:
            raise ValueError(f"{x.shape[1]} channels do not split into {self.groups} columns")
        if self.impl == "fast":
            return _FastLRN.apply(x, self.groups, self.size, self.alpha, self.beta, self.k)
        if self.groups == 1:
            return self._torch(x)
        return torch.cat([self._torch(part) for part in x.chunk(self.groups, dim=1)], dim=1)

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, size={self.size}, alpha={self.alpha} (on the sum), "
                f"beta={self.beta}, k={self.k}, impl={self.impl}")
