"""Local response normalisation within each column, exact and fast.

The paper normalises each map by its ``size`` neighbours *in the same column*
(cuda-convnet's rnorm1a/rnorm1b): with two columns of 48 maps, maps 47 and 48 are not
neighbours. ``ColumnLRN(groups=2)`` on the whole 96 maps equals ``ColumnLRN(groups=1)``
on each column's 48.

Implementations (``impl``), all exact to fp32 rounding, with an analytic backward
dx = g*r - 2*alpha*beta * x * window_sum(g*x*r/d), r = d^-beta (alpha on the sum):

* ``"eager"``: the window sum of squares by shifted adds, a dozen PyTorch ops each way; any
  device;
* ``"triton"``: one fused Triton kernel each way (:mod:`alexnet_mp.lrn_triton`), fp32
  arithmetic; CUDA (or the Triton interpreter);
* ``"fast"`` (the default): ``"triton"`` on CUDA tensors when Triton is installed, else
  ``"eager"``; inside ``torch.compile`` always ``"eager"``, which the compiler fuses itself;
* ``"torch"``: the stock ``nn.LocalResponseNorm`` per column, kept as the yardstick.

After conv1 and conv2 the network applies ReLU, this LRN and the 3x3/2 max-pool in a row:
:func:`relu_lrn_pool` (and the module :class:`ReluLRNPool`) runs the three as one Triton
kernel each way (:mod:`alexnet_mp.model.relu_lrn_pool_triton`) where the LRN's ``impl``
would pick Triton (``"fast"`` on CUDA, ``"triton"`` always), and otherwise exactly
``pool(lrn(relu(x)))``. :class:`~alexnet_mp.model.AlexNet` asks for the fused kernel only with
``fused_relu_lrn_pool=True`` (off by default until it is measured on a GPU).

Measured gains are in docs/benchmarks.md.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module
from torch.nn.modules.utils import _pair

from ..layers import LRN, POOL_KERNEL, POOL_STRIDE

IMPLS = ("fast", "eager", "triton", "torch")


@functools.cache
def _triton_lrn():
    """The Triton autograd Function, or None when Triton cannot be imported."""
    try:
        from .lrn_triton import TritonLRN
    except ImportError:
        return None
    return TritonLRN


@functools.cache
def _triton_relu_lrn_pool():
    """The fused ReLU + LRN + max-pool autograd Function, or None when Triton cannot be imported."""
    try:
        from .relu_lrn_pool_triton import TritonReluLRNPool
    except ImportError:
        return None
    return TritonReluLRNPool


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


def _scaled_window_sum_of_squares(xg: torch.Tensor, half: int, alpha: float, k: float) -> torch.Tensor:
    """k + alpha * (window sum of x^2) without materialising x^2: one addcmul for the centre,
    then one in-place addcmul per neighbour (14 tensor-sized reads+writes instead of 20)."""
    d = torch.addcmul(xg.new_full((), k), xg, xg, value=alpha)
    for shift in range(1, half + 1):
        lo, hi = xg[:, :, :-shift], xg[:, :, shift:]
        d[:, :, shift:].addcmul_(lo, lo, value=alpha)
        d[:, :, :-shift].addcmul_(hi, hi, value=alpha)
    return d


class _FastLRN(torch.autograd.Function):
    """Forward: d = k + alpha * window_sum(x^2), r = d^-beta, y = x * r.
    Backward: dx = g*r - 2*alpha*beta * x * window_sum(g * y / d), using y = x*r (the
    output, which the next layer keeps anyway) to save a pass."""

    @staticmethod
    def forward(ctx, x, groups, size, alpha, beta, k):
        xg = _grouped(x, groups)
        d = _scaled_window_sum_of_squares(xg, (size - 1) // 2, alpha, k)
        r = _neg_pow(d, beta)
        y = xg * r
        ctx.save_for_backward(xg, d, r, y)
        ctx.params = (groups, size, alpha, beta)
        return y.flatten(1, 2)

    @staticmethod
    def backward(ctx, g):
        xg, d, r, y = ctx.saved_tensors
        groups, size, alpha, beta = ctx.params
        gg = _grouped(g, groups)
        t = _window_sum(torch.mul(gg, y).div_(d), (size - 1) // 2)
        dx = torch.addcmul(gg * r, xg, t, value=-2.0 * alpha * beta)
        return dx.flatten(1, 2), None, None, None, None, None


class ColumnLRN(nn.Module):
    """The paper's LRN over ``size`` adjacent maps within each of ``groups`` columns."""

    def __init__(self, groups: int = 1, *, size: int = LRN.size, alpha: float = LRN.alpha,
                 beta: float = LRN.beta, k: float = LRN.k,
                 impl: Literal["fast", "eager", "triton", "torch"] = "fast") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"LRN impl must be one of {IMPLS}, got {impl!r}")
        if impl == "triton" and _triton_lrn() is None:
            raise ValueError("LRN impl 'triton' needs the triton package (it ships with CUDA builds of "
                             "torch); use impl='fast' to pick it automatically where it is installed")
        if size % 2 != 1:
            raise ValueError(f"LRN size must be odd (a window centred on each map), got {size}")
        self.groups, self.size, self.alpha, self.beta, self.k, self.impl = groups, size, alpha, beta, k, impl
        # torch's module divides alpha by size: the paper's alpha on the sum is alpha*size there.
        self._torch = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.groups:
            raise ValueError(f"{x.shape[1]} channels do not split into {self.groups} columns")
        args = (x, self.groups, self.size, self.alpha, self.beta, self.k)
        if self.runs_triton(x):
            return _triton_lrn().apply(*args)
        if self.impl in ("fast", "eager"):
            return _FastLRN.apply(*args)
        if self.groups == 1:
            return self._torch(x)
        return torch.cat([self._torch(part) for part in x.chunk(self.groups, dim=1)], dim=1)

    def runs_triton(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs the Triton kernels on ``x``: ``impl="triton"``, or
        ``"fast"`` with a CUDA tensor that is not float64, outside torch.compile."""
        return self.impl == "triton" or (self.impl == "fast" and x.is_cuda and x.dtype != torch.float64
                                         and not torch.compiler.is_compiling() and _triton_lrn() is not None)

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, size={self.size}, alpha={self.alpha} (on the sum), "
                f"beta={self.beta}, k={self.k}, impl={self.impl}")


def _hooked(*modules: nn.Module) -> bool:
    """Whether a forward or backward hook would see these modules' (or any module's) calls."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(_module, "_global" + name, None) for name in hooks):
        return True
    return any(getattr(m, name, None) for m in modules for name in hooks)


def _is_fusable_pool(pool: nn.Module) -> bool:
    """``pool`` is exactly what the fused kernel implements: nn.MaxPool2d(3, 2), floor mode."""
    return (type(pool) is nn.MaxPool2d and _pair(pool.kernel_size) == (POOL_KERNEL, POOL_KERNEL)
            and _pair(pool.stride) == (POOL_STRIDE, POOL_STRIDE) and _pair(pool.padding) == (0, 0)
            and _pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices)


def fuses(x: torch.Tensor, lrn: nn.Module, pool: nn.Module) -> bool:
    """Whether :func:`relu_lrn_pool` runs the fused kernel for this input: the LRN would run its
    Triton kernels (:meth:`ColumnLRN.runs_triton`: ``impl="triton"``, or ``"fast"`` with a CUDA
    tensor that is not float64 outside torch.compile); ``lrn`` is a :class:`ColumnLRN` and
    ``pool`` the paper's pool, neither hooked (a hook sees the separate ops' tensors); the input
    is a batch of maps at least 3x3."""
    if type(lrn) is not ColumnLRN or not _is_fusable_pool(pool):
        return False
    if x.dim() != 4 or x.shape[2] < POOL_KERNEL or x.shape[3] < POOL_KERNEL or _hooked(lrn, pool):
        return False
    return lrn.runs_triton(x) and _triton_relu_lrn_pool() is not None


def relu_lrn_pool(x: torch.Tensor, lrn: nn.Module, pool: nn.Module, *, fuse: bool = True) -> torch.Tensor:
    """``pool(lrn(relu(x)))``: one fused Triton kernel each way where :func:`fuses` says so
    (and ``fuse``), else exactly the three modules in a row. ``lrn`` and ``pool`` are read at
    each call, so a network whose ``lrn`` is replaced or regrouped runs what it now holds."""
    if fuse and fuses(x, lrn, pool):
        if x.shape[1] % lrn.groups:
            raise ValueError(f"{x.shape[1]} channels do not split into {lrn.groups} columns")
        return _triton_relu_lrn_pool().apply(x, lrn.groups, lrn.size, lrn.alpha, lrn.beta, lrn.k)
    return pool(lrn(F.relu(x)))


class ReluLRNPool(nn.Module):
    """ReLU, the column LRN and the paper's overlapping max-pool (3x3, stride 2) as one module:
    :func:`relu_lrn_pool` over its own ``lrn`` (a :class:`ColumnLRN`, with the same ``impl``
    choices) and ``pool``. It holds no parameters."""

    def __init__(self, groups: int = 1, *, size: int = LRN.size, alpha: float = LRN.alpha,
                 beta: float = LRN.beta, k: float = LRN.k,
                 impl: Literal["fast", "eager", "triton", "torch"] = "fast") -> None:
        super().__init__()
        self.lrn = ColumnLRN(groups, size=size, alpha=alpha, beta=beta, k=k, impl=impl)
        self.pool = nn.MaxPool2d(POOL_KERNEL, POOL_STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_lrn_pool(x, self.lrn, self.pool)
