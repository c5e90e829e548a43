"""ReLU, the column LRN and the overlapping 3x3/2 max-pool as one Triton kernel each way.

After conv1 and conv2 the paper's network computes ``maxpool3x3s2(LRN(relu(x)))``. Run
apart, each op reads and writes the whole activation (the LRN also keeps ``d`` in fp32 and
the pool int64 indices). Here the forward reads the conv output ``x`` and writes only the
pooled maps (a quarter of the pixels) and a one-byte argmax per pooled element; the
backward reads ``x``, the pooled gradient and the argmax, and writes ``dx`` once.

Forward, for one pooled element (n, c, oh, ow): for each of the 3x3 window's pixels
(2oh + i, 2ow + j), in scan order i then j, ``r = relu(x)``,
``d = k + alpha * sum_{m in W(c)} r_m^2`` (W(c): the ``size`` maps around c within c's
column, zero-padded at the column's edges), ``y = r_c d^-beta``; the output is the largest
``y`` and the argmax is ``3 i + j`` (an int8 in 0..8).

Ties: the *first* maximum in scan order wins (the running maximum is replaced only by a
strictly larger value), as torch's max_pool2d does; a NaN replaces the running maximum as
it does in torch, so a NaN propagates. ``relu`` keeps a NaN as well (torch's does).

Backward: the gradient ``g`` reaching an LRN-output pixel is the sum of the pooled
gradients of the (at most 2x2) windows covering it whose argmax is that pixel: row h is
covered by the windows oh with 2 oh <= h <= 2 oh + 2, i.e. oh = h // 2 (when < OH) and,
for even h >= 2, oh = h // 2 - 1 (columns alike). Then the LRN's analytic backward,
``dr_c = g_c d_c^-beta - 2 alpha beta r_c sum_{j in W(c)} g_j r_j d_j^-(beta+1)``, and
ReLU's mask: ``dx = 0`` where ``x <= 0`` (torch's rule, so NaN passes).

Memory, per element E of the conv output (the pooled output is ~E/4 for 55->27 and
27->13), saved for backward: the pre-ReLU ``x`` in its storage dtype and the int8 argmax
(E/4 bytes): 2.25 bytes per element under bf16 autocast, 4.25 in fp32. The unfused chain
keeps the ReLU output (shared with the LRN's input), the LRN's fp32 ``d``, the LRN output
(the pool's input) and the pool's int64 indices (8 bytes x E/4): about 10 bytes per element
in bf16, 14 in fp32. The price is recomputation in the backward: ``d`` for the ``size``
neighbours of each map is rebuilt from ``x`` (size^2 cached loads per element) and the
gathered gradient of each neighbour is recomputed (size x 4 windows), all from L1/L2; DRAM
traffic is one read of ``x``, the pooled gradient and argmax, and one write of ``dx``.

Arithmetic is fp32 whatever the storage dtype; each stored value is rounded once. Any
strides are accepted (NCHW, channels_last or a view): the kernels take all four strides
of every tensor. Runs under ``TRITON_INTERPRET=1`` on the CPU, which is how
tests/model/test_relu_lrn_pool_triton.py checks it without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .lrn_triton import _at, _fastest, _rpow, _rpow1

KERNEL, STRIDE = 3, 2
"""The pool this kernel implements: nn.MaxPool2d(3, 2), floor mode, no padding."""


@triton.jit
def _relu(v):
    # relu with torch's NaN behaviour: only values <= 0 become 0.
    return tl.where(v <= 0.0, 0.0, v)


@triton.jit
def _fwd_kernel(X, Y, IDX, P, C, OH, OW,
                sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
                cols, alpha, beta, k,
                HALF: tl.constexpr, BETA_075: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # This program's BLOCK_P pooled pixels (over N*OH*OW) x all channels.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    n = p // (OH * OW)
    q = p % (OH * OW)
    oh = q // OW
    ow = q % OW
    c = tl.arange(0, BLOCK_C)
    best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    arg = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    for i in tl.static_range(0, 3):
        for j in tl.static_range(0, 3):
            # floor mode without padding: every window lies inside the map
            base = (n.to(tl.int64) * sx_n + (2 * oh + i).to(tl.int64) * sx_h
                    + (2 * ow + j).to(tl.int64) * sx_w)
            acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
            for s in tl.static_range(0, 2 * HALF + 1):
                m, o = _at(pm, c, base, s - HALF, C, cols, sx_c)
                v = _relu(tl.load(X + o, mask=m, other=0.0).to(tl.float32))
                acc += v * v
            m, o = _at(pm, c, base, 0, C, cols, sx_c)
            r = _relu(tl.load(X + o, mask=m, other=0.0).to(tl.float32))
            y = r * _rpow(k + alpha * acc, beta, BETA_075)
            take = (y > best) | (y != y)  # strictly larger (first max wins), or NaN
            best = tl.where(take, y, best)
            arg = tl.where(take, 3 * i + j, arg)
    m = pm[:, None] & (c < C)[None, :]
    out = (n.to(tl.int64) * sy_n + oh.to(tl.int64) * sy_h + ow.to(tl.int64) * sy_w)[:, None] \
        + c[None, :].to(tl.int64) * sy_c
    tl.store(Y + out, best.to(Y.dtype.element_ty), mask=m)
    tl.store(IDX + out, arg.to(tl.int8), mask=m)


@triton.jit
def _gather(GO, IDX, m, ch, n, h, w, OH, OW, so_n, so_c, so_h, so_w):
    # The gradient reaching pixel (n, ch, h, w) of the LRN output: the pooled gradients of the
    # windows covering it whose argmax is this pixel. m: (BLOCK_P, BLOCK_C) mask of valid ch.
    acc = tl.zeros(m.shape, dtype=tl.float32)
    for a in tl.static_range(0, 2):
        oh = h // 2 - a
        ok_h = (oh >= 0) & (oh < OH) & (h - 2 * oh <= 2)
        for b in tl.static_range(0, 2):
            ow = w // 2 - b
            ok = ok_h & (ow >= 0) & (ow < OW) & (w - 2 * ow <= 2)
            mm = m & ok[:, None]
            o = (n.to(tl.int64) * so_n + oh.to(tl.int64) * so_h + ow.to(tl.int64) * so_w)[:, None] \
                + ch.to(tl.int64) * so_c
            gv = tl.load(GO + o, mask=mm, other=0.0).to(tl.float32)
            at = tl.load(IDX + o, mask=mm, other=-1).to(tl.int32)
            here = 3 * (h - 2 * oh) + (w - 2 * ow)
            acc += tl.where(at == here[:, None], gv, 0.0)
    return acc


@triton.jit
def _bwd_kernel(GO, IDX, X, DX, P, C, H, W, OH, OW,
                sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sd_n, sd_c, sd_h, sd_w,
                cols, alpha, beta, k,
                HALF: tl.constexpr, BETA_075: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # This program's BLOCK_P input pixels (over N*H*W) x all channels.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    n = p // (H * W)
    q = p % (H * W)
    h = q // W
    w = q % W
    c = tl.arange(0, BLOCK_C)
    base = n.to(tl.int64) * sx_n + h.to(tl.int64) * sx_h + w.to(tl.int64) * sx_w
    t = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    x_own = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    g_own = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    d_own = tl.full((BLOCK_P, BLOCK_C), 1.0, tl.float32)
    for s in tl.static_range(0, 2 * HALF + 1):
        # neighbour map c + s - HALF (within c's column): its r, d and gathered gradient
        mj, oj = _at(pm, c, base, s - HALF, C, cols, sx_c)
        xj = tl.load(X + oj, mask=mj, other=0.0).to(tl.float32)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for u in tl.static_range(0, 2 * HALF + 1):  # d_j as the forward computed it
            m2, o2 = _at(pm, c, base, (s - HALF) + (u - HALF), C, cols, sx_c)
            v = _relu(tl.load(X + o2, mask=m2, other=0.0).to(tl.float32))
            acc += v * v
        dj = k + alpha * acc
        gj = _gather(GO, IDX, mj, c[None, :] + (s - HALF), n, h, w, OH, OW, so_n, so_c, so_h, so_w)
        rj = _relu(xj)
        t += gj * rj * _rpow1(dj, beta, BETA_075)
        if s == HALF:
            x_own = xj
            g_own = gj
            d_own = dj
    dr = g_own * _rpow(d_own, beta, BETA_075) - (2.0 * alpha * beta) * _relu(x_own) * t
    dx = tl.where(x_own <= 0.0, 0.0, dr)  # ReLU's mask (as torch: NaN passes)
    m = pm[:, None] & (c < C)[None, :]
    out = (n.to(tl.int64) * sd_n + h.to(tl.int64) * sd_h + w.to(tl.int64) * sd_w)[:, None] \
        + c[None, :].to(tl.int64) * sd_c
    tl.store(DX + out, dx.to(DX.dtype.element_ty), mask=m)


# Launch configurations tried on first use for each shape on CUDA: (elements per tile,
# warps); a tile is BLOCK_P pixels x all channels (rounded up to a power of two). Compiled
# for sm_90 (benchmarks/triton_ptxas.py, no GPU needed), more than 4 elements per thread
# spill registers in both kernels, so the candidates stop there and the default is 2 per
# thread, which does not spill (the register and spill table: docs/benchmarks.md).
CANDIDATES = ((128, 4), (256, 4), (512, 4), (512, 8), (1024, 8))
DEFAULT = (256, 4)
INTERPRETER = (4096, 4)
"""Off CUDA (Triton's interpreter): larger tiles, fewer programs, each a few numpy calls."""
TUNE = True
"""Tune the launch configuration per shape on CUDA; False: DEFAULT, one compilation per
signature (accuracy checks over many shapes, where compiling every candidate dominates)."""
_best: dict[tuple, tuple[int, int]] = {}


def _run(kernel, args, pixels: int, channels: int, consts: dict, config) -> None:
    block_c = triton.next_power_of_2(channels)
    tile, warps = config
    block_p = max(1, tile // block_c)
    kernel[(triton.cdiv(pixels, block_p),)](*args, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps, **consts)


def _tune(kernel, args, pixels, channels, consts) -> tuple[int, int]:
    """The fastest of CANDIDATES for this shape."""
    return _fastest(lambda config: _run(kernel, args, pixels, channels, consts, config), CANDIDATES)


def _launch(kernel, args, x: torch.Tensor, pixels: int, consts: dict) -> None:
    if pixels == 0 or x.shape[1] == 0:
        return
    key = (getattr(kernel, "__name__", str(id(kernel))), tuple(x.shape), x.stride(), x.dtype, x.device)
    config = _best.get(key)
    if config is None:
        # Tune on CUDA, outside a CUDA-graph capture (a capture replays what it sees once).
        if not x.is_cuda:
            config = INTERPRETER
        elif TUNE and not torch.cuda.is_current_stream_capturing():
            config = _best[key] = _tune(kernel, args, pixels, x.shape[1], consts)
        else:
            config = DEFAULT
    _run(kernel, args, pixels, x.shape[1], consts, config)


def tuned_configs() -> dict[str, tuple[int, int]]:
    """What tuning chose so far, for benchmarks: 'kernel shape dtype' -> (tile, warps)."""
    return {f"{k[0]} {k[1]} {k[3]}": v for k, v in _best.items()}


def pooled_size(n: int) -> int:
    """Output length of the 3/2 pool over ``n`` (floor mode, no padding)."""
    return (n - KERNEL) // STRIDE + 1


class TritonReluLRNPool(torch.autograd.Function):
    """``TritonReluLRNPool.apply(x, groups, size, alpha, beta, k)``:
    ``max_pool2d(ColumnLRN(groups, ...)(relu(x)), 3, 2)`` in one kernel each way."""

    @staticmethod
    def forward(ctx, x, groups, size, alpha, beta, k):
        if x.dim() != 4 or x.shape[2] < KERNEL or x.shape[3] < KERNEL:
            raise ValueError(f"expected (N, C, H, W) with H, W >= {KERNEL}, got {tuple(x.shape)}")
        if x.shape[1] % groups:
            raise ValueError(f"{x.shape[1]} channels do not split into {groups} columns")
        n, c, h, w = x.shape
        oh, ow = pooled_size(h), pooled_size(w)
        fmt = torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                      and not x.is_contiguous()) else torch.contiguous_format
        y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
        idx = torch.empty((n, c, oh, ow), dtype=torch.int8, device=x.device, memory_format=fmt)
        half = (size - 1) // 2
        _launch(_fwd_kernel, (x, y, idx, n * oh * ow, c, oh, ow, *x.stride(), *y.stride(),
                              c // groups, alpha, beta, k), x, n * oh * ow,
                dict(HALF=half, BETA_075=beta == 0.75))
        ctx.save_for_backward(x, idx)
        ctx.params = (groups, size, alpha, beta, k)
        return y

    @staticmethod
    def backward(ctx, g):
        x, idx = ctx.saved_tensors
        groups, size, alpha, beta, k = ctx.params
        if g.stride() != idx.stride():  # the kernel reads g and the argmax with the same offsets
            g = torch.empty_like(idx, dtype=g.dtype).copy_(g)
        dx = torch.empty_like(x)
        n, c, h, w = x.shape
        oh, ow = idx.shape[2:]
        _launch(_bwd_kernel, (g, idx, x, dx, n * h * w, c, h, w, oh, ow, *x.stride(), *idx.stride(),
                              *dx.stride(), c // groups, alpha, beta, k), x, n * h * w,
                dict(HALF=(size - 1) // 2, BETA_075=beta == 0.75))
        return dx, None, None, None, None, None
