"""The column LRN as two fused Triton kernels (forward, backward), for CUDA tensors.

The eager formulation in :mod:`alexnet_mp.model.lrn` makes about a dozen passes over the
activation each way; on a GPU those passes, not the arithmetic, are the cost (the profile is
in docs/benchmarks.md). Here each
direction is one pass: a tile of pixels x all channels is loaded once, the ``size``
neighbours of each map come from the same tile (cache), and the result is written once.

Forward: ``d = k + alpha * sum_{j in W(c)} x_j^2`` (W(c) = the ``size`` maps around c within
c's column), ``y = x * d^-beta``; ``d`` is kept in fp32 for the backward.
Backward: ``dx_c = g_c d_c^-beta - 2 alpha beta x_c sum_{j in W(c)} g_j x_j d_j^-(beta+1)``.
Arithmetic is fp32 whatever the storage dtype (bf16 under autocast).

Works for NCHW- and channels_last-contiguous tensors alike (the kernels take strides). It
runs under ``TRITON_INTERPRET=1`` on the CPU, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rpow(d, beta, BETA_075: tl.constexpr):
    # d^-beta; for the paper's 0.75 as rsqrt(d) * sqrt(rsqrt(d)).
    if BETA_075:
        rs = tl.rsqrt(d)
        return rs * tl.sqrt(rs)
    else:
        return tl.exp(-beta * tl.log(d))


@triton.jit
def _rpow1(d, beta, BETA_075: tl.constexpr):
    # d^-(beta + 1) = d^-beta / d; for 0.75 as rsqrt(d)^3 * sqrt(rsqrt(d)), no division.
    if BETA_075:
        rs = tl.rsqrt(d)
        return rs * rs * rs * tl.sqrt(rs)
    else:
        return tl.exp(-(beta + 1.0) * tl.log(d))


@triton.jit
def _tile(P, HW, s_n, s_p, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # This program's BLOCK_P pixels (over N*H*W) x all channels: pixel mask, channels, row bases.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    base = (p // HW).to(tl.int64) * s_n + (p % HW).to(tl.int64) * s_p
    return p < P, tl.arange(0, BLOCK_C), base


@triton.jit
def _at(pm, c, base, shift, C, cols, s_c):
    # Mask and offsets of channel c + shift, kept only within c's own column (zero padding).
    j = c + shift
    ok = (j >= 0) & (j < C) & ((j // cols) == (c // cols))
    return pm[:, None] & ok[None, :], base[:, None] + j[None, :].to(tl.int64) * s_c


@triton.jit
def _lrn_fwd_kernel(X, Y, D, P, C, HW, s_n, s_c, s_p, cols, alpha, beta, k,
                    HALF: tl.constexpr, BETA_075: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pm, c, base = _tile(P, HW, s_n, s_p, BLOCK_P, BLOCK_C)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for s in tl.static_range(0, 2 * HALF + 1):
        m, o = _at(pm, c, base, s - HALF, C, cols, s_c)
        v = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        acc += v * v
    m, offs = _at(pm, c, base, 0, C, cols, s_c)
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    d = k + alpha * acc
    y = x * _rpow(d, beta, BETA_075)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)
    tl.store(D + offs, d, mask=m)


@triton.jit
def _lrn_bwd_kernel(G, X, D, DX, P, C, HW, s_n, s_c, s_p, cols, alpha, beta,
                    HALF: tl.constexpr, BETA_075: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pm, c, base = _tile(P, HW, s_n, s_p, BLOCK_P, BLOCK_C)
    t = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for s in tl.static_range(0, 2 * HALF + 1):
        m, o = _at(pm, c, base, s - HALF, C, cols, s_c)
        gj = tl.load(G + o, mask=m, other=0.0).to(tl.float32)
        xj = tl.load(X + o, mask=m, other=0.0).to(tl.float32)
        dj = tl.load(D + o, mask=m, other=1.0)
        t += gj * xj * _rpow1(dj, beta, BETA_075)
    m, offs = _at(pm, c, base, 0, C, cols, s_c)
    g = tl.load(G + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    d = tl.load(D + offs, mask=m, other=1.0)
    dx = g * _rpow(d, beta, BETA_075) - (2.0 * alpha * beta) * x * t
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=m)


def _layout(x: torch.Tensor) -> torch.Tensor:
    """x as (N, C, H*W), a view; NCHW or channels_last, else a contiguous copy."""
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    return x


# Launch configurations tried on first use for each shape: (elements per tile, warps). A
# tile is BLOCK_P pixels x all channels (rounded up to a power of two). One fixed large tile
# was an order of magnitude slower in backward than the tuned choice (docs/benchmarks.md).
CANDIDATES = ((512, 4), (1024, 4), (2048, 4), (2048, 8), (4096, 8))
DEFAULT = (1024, 4)
_best: dict[tuple, tuple[int, int]] = {}


def _run(kernel, tensors, x3, scalars, half, beta, config):
    n, c, hw = x3.shape
    block_c = triton.next_power_of_2(c)
    tile, warps = config
    block_p = max(1, tile // block_c)
    s_n, s_c, s_p = x3.stride()
    grid = (triton.cdiv(n * hw, block_p),)
    kernel[grid](*tensors, n * hw, c, hw, s_n, s_c, s_p, *scalars,
                 HALF=half, BETA_075=beta == 0.75, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)


def _fastest(run, candidates) -> tuple[int, int]:
    """The config among ``candidates`` for which ``run(config)`` (one launch) is fastest, by CUDA
    events (each kernel is a pure function of its inputs, so running it repeatedly is harmless).
    Shared with :mod:`alexnet_mp.model.relu_lrn_pool_triton`."""
    times = {}
    for config in candidates:
        run(config)  # compile, warm
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            run(config)
        end.record()
        end.synchronize()
        times[config] = start.elapsed_time(end)
    return min(times, key=times.get)


def _tune(kernel, tensors, x3, scalars, half, beta) -> tuple[int, int]:
    """The fastest of CANDIDATES for this shape."""
    return _fastest(lambda config: _run(kernel, tensors, x3, scalars, half, beta, config), CANDIDATES)


def _launch(kernel, tensors, x3: torch.Tensor, *scalars, half: int, beta: float) -> None:
    key = (getattr(kernel, "__name__", str(id(kernel))), tuple(x3.shape), x3.stride(), x3.dtype, x3.device)
    config = _best.get(key)
    if config is None:
        # Tune on CUDA, outside a CUDA-graph capture (a capture replays what it sees once).
        if x3.is_cuda and not torch.cuda.is_current_stream_capturing():
            config = _best[key] = _tune(kernel, tensors, x3, scalars, half, beta)
        else:
            config = DEFAULT
    _run(kernel, tensors, x3, scalars, half, beta, config)


def tuned_configs() -> dict[str, tuple[int, int]]:
    """What tuning chose so far, for benchmarks: 'kernel shape dtype' -> (tile, warps)."""
    return {f"{k[0]} {k[1]} {k[3]}": v for k, v in _best.items()}


class TritonLRN(torch.autograd.Function):
    """``TritonLRN.apply(x, groups, size, alpha, beta, k)``: the column LRN of :mod:`alexnet_mp.lrn`."""

    @staticmethod
    def forward(ctx, x, groups, size, alpha, beta, k):
        x = _layout(x)
        y = torch.empty_like(x)  # keeps the memory format
        d = torch.empty_like(x, dtype=torch.float32)
        x3 = x.flatten(2)
        cols = x.shape[1] // groups
        _launch(_lrn_fwd_kernel, (x3, y.flatten(2), d.flatten(2)), x3, cols, alpha, beta, k,
                half=(size - 1) // 2, beta=beta)
        ctx.save_for_backward(x, d)
        ctx.params = (groups, size, alpha, beta)
        return y

    @staticmethod
    def backward(ctx, g):
        x, d = ctx.saved_tensors
        groups, size, alpha, beta = ctx.params
        if g.stride() != x.stride():  # the kernel walks g, x, d and dx with the same offsets
            g = torch.empty_like(x).copy_(g)
        dx = torch.empty_like(x)
        x3 = x.flatten(2)
        cols = x.shape[1] // groups
        _launch(_lrn_bwd_kernel, (g.flatten(2), x3, d.flatten(2), dx.flatten(2)), x3, cols, alpha, beta,
                half=(size - 1) // 2, beta=beta)
        return dx, None, None, None, None, None
