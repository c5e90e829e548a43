"""The fused ReLU + column LRN + 3x3/2 max-pool kernel equals the three ops in float64.

Reference: relu, torch's own LocalResponseNorm per column and max_pool2d, all in float64 on
the kernel's (already rounded) inputs. Bounds are derived, per element, from the unit
roundoff (test_lrn.lrn_bounds):

* forward: ReLU and the max add no rounding; |max_i y~_i - max_i y_i| <= max_i |y~_i - y_i|,
  so the pooled bound is the max-pool of the LRN's per-element bound (fp32 arithmetic) plus
  one rounding of the stored maximum;
* backward: the gradient reaching an LRN output is routed by the argmax and summed over the
  <= 4 windows covering it: <= 3 fp32 additions, <= 3 u of the sum of the magnitudes, which
  lrn_bounds' 64 u budget (~50 u derived) absorbs when it is given that sum (the magnitudes
  routed the same way) for g; ReLU's mask is exact (a zero where x <= 0 must be exactly 0).

Routing needs an unambiguous argmax: where the two largest LRN outputs of a window are
closer than twice the window's fp32 forward bound, fp32 may rightly pick the other one, and
that window's pooled gradient is set to zero (both sides then route nothing). Exact ties
are not ambiguous: the "tied" inputs are constant over each map, so every window ties
exactly in fp32 and in float64, and the first maximum in scan order must win (torch's rule).
Large, mostly negative inputs make windows whose maximum is 0 (all ReLU'd away), where a
gradient routed to a pixel with x <= 0 must be stopped by ReLU's mask.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` must be set
before triton is imported, hence a subprocess). benchmarks/fused_error.py reports
:func:`compare` on a GPU.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton", reason="the fused kernels need the triton package")

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]

# (shape, groups): the paper's odd maps 55 -> 27 and 27 -> 13, an even map (its last row and
# column lie in no window), the smallest map (3x3 -> 1x1) with 3-map columns (the LRN window
# cut by both column edges), 4-map columns at 55x55, a batch of 3.
CASES = [((1, 8, 55, 55), 2), ((1, 12, 27, 27), 2), ((2, 6, 8, 10), 1), ((3, 6, 3, 3), 2)]
KINDS = ("randn", "large mostly negative", "tied")
# On a GPU: the paper's two places at batch 2 (96 maps of 55x55, 256 of 27x27, two columns),
# a 13x13 map in one column, and the small odd cases.
CUDA_CASES = [((2, 96, 55, 55), 2), ((2, 256, 27, 27), 2), ((2, 48, 13, 13), 1)] + CASES[2:]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def make_inputs(shape, kind: str, dtype: torch.dtype, fmt, generator) -> torch.Tensor:
    n, c, h, w = shape
    if kind == "randn":
        x = torch.randn(shape, dtype=torch.float64, generator=generator)
    elif kind == "large mostly negative":  # ~20% positive, large enough for the LRN to matter
        x = torch.randn(shape, dtype=torch.float64, generator=generator) * 60.0 - 50.0
    elif kind == "tied":  # constant over each map: every window ties exactly
        x = (torch.randn(n, c, 1, 1, dtype=torch.float64, generator=generator).abs() * 30.0 + 0.5).expand(shape)
    else:
        raise ValueError(kind)
    return x.to(dtype).contiguous(memory_format=fmt)


def float64_reference(x: torch.Tensor, gout: torch.Tensor, groups: int):
    """relu -> torch's LRN per column -> max_pool2d(3, 2), all float64: output, input gradient
    and the LRN's output (before the pool)."""
    from alexnet_mp.model.lrn import ColumnLRN

    xr = x.detach().double().contiguous().requires_grad_()
    z = ColumnLRN(groups, impl="torch")(F.relu(xr))
    y = F.max_pool2d(z, 3, 2)
    (gx,) = torch.autograd.grad(y, xr, gout.double().contiguous())
    return y.detach(), gx, z.detach()


def ambiguous_windows(z: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Pooled positions whose two largest LRN outputs differ, by no more than twice the largest
    per-element bound in the window (fp32 may order them either way)."""
    n, c, h, w = z.shape
    cols = F.unfold(z.reshape(n * c, 1, h, w), 3, stride=2)  # (N*C, 9, OH*OW), windows in scan order
    top = cols.topk(2, dim=1).values
    gap = top[:, 0] - top[:, 1]
    reach = F.max_pool2d(bound, 3, 2).reshape(n * c, -1)
    return ((gap > 0) & (gap <= 2 * reach)).reshape(n, c, (h - 3) // 2 + 1, (w - 3) // 2 + 1)


def bounds(x: torch.Tensor, gout: torch.Tensor, z: torch.Tensor, groups: int, dtype: torch.dtype):
    """Per-element bounds on the fused output (pooled) and input gradient for fp32 arithmetic
    stored in ``dtype`` (see the module docstring)."""
    from test_lrn import UNIT_ROUNDOFF, lrn_bounds

    r = F.relu(x.double())
    zl = z.clone().requires_grad_()
    # the magnitudes of the pooled gradients, routed as the reference routes them
    (g_abs,) = torch.autograd.grad(F.max_pool2d(zl, 3, 2), zl, gout.double().abs().contiguous())
    fwd, bwd = lrn_bounds(r, g_abs, groups, UNIT_ROUNDOFF[torch.float32], UNIT_ROUNDOFF[dtype])
    return F.max_pool2d(fwd, 3, 2), bwd * (x.double() > 0)


def compare(device: str, dtype: torch.dtype, cases=CASES, kinds=KINDS, layouts=tuple(LAYOUTS), *,
            unfused: bool = False, seed: int = 0) -> list[dict]:
    """One row per (case, layout, kind): the fused kernel's worst element error against the
    float64 reference divided by its derived bound (``fwd_ratio``, ``bwd_ratio``: within the
    bound where <= 1), its largest errors relative to the largest reference value
    (``fwd_rel``, ``bwd_rel``), how many pooled windows had their gradient zeroed as
    ambiguous (``masked`` of ``windows``), and with ``unfused`` the same relative errors of
    the separate ops (``pool(lrn(relu(x)))`` with the LRN's ``fast`` choice) in ``dtype``."""
    from alexnet_mp.model import lrn_triton
    from alexnet_mp.model import relu_lrn_pool_triton as kernels

    # Accuracy does not need the fastest tile: one compilation per shape, not one per candidate
    # (the LRN alone, in the unfused comparison, tunes too: its choices are put back after).
    tune, kernels.TUNE = kernels.TUNE, False
    candidates, best = lrn_triton.CANDIDATES, dict(lrn_triton._best)
    lrn_triton.CANDIDATES = (lrn_triton.DEFAULT,)
    try:
        return _compare(device, dtype, cases, kinds, layouts, unfused, seed)
    finally:
        kernels.TUNE, lrn_triton.CANDIDATES = tune, candidates
        lrn_triton._best.clear()
        lrn_triton._best.update(best)


def _compare(device, dtype, cases, kinds, layouts, unfused, seed) -> list[dict]:
    from test_lrn import UNIT_ROUNDOFF, lrn_bounds, worst_ratio

    from alexnet_mp.model.lrn import ColumnLRN, ReluLRNPool, relu_lrn_pool

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for shape, groups in cases:
        for layout in layouts:
            fmt = LAYOUTS[layout]
            for kind in kinds:
                x = make_inputs(shape, kind, dtype, fmt, gen)
                n, c, h, w = shape
                gout = torch.randn(n, c, (h - 3) // 2 + 1, (w - 3) // 2 + 1, dtype=torch.float64,
                                   generator=gen).to(dtype)  # NCHW: for channels_last the kernel's copy path
                z = float64_reference(x, gout, groups)[2]
                reach = lrn_bounds(F.relu(x.double()), x.double(), groups, UNIT_ROUNDOFF[torch.float32], 0.0)[0]
                amb = ambiguous_windows(z, reach)
                gout = gout.masked_fill(amb, 0.0)
                ref_y, ref_g, _ = float64_reference(x, gout, groups)
                fwd, bwd = bounds(x, gout, z, groups, dtype)

                module = ReluLRNPool(groups, impl="triton")  # forced: the fused kernel on any device
                xt = x.to(device).clone().requires_grad_()  # clone keeps the layout
                yt = module(xt)
                assert yt.dtype == dtype and yt.shape == ref_y.shape
                assert yt.is_contiguous(memory_format=fmt)
                yt.backward(gout.to(device))
                assert xt.grad.dtype == dtype and xt.grad.stride() == xt.stride()
                y, gx = yt.detach().cpu(), xt.grad.cpu()
                row = {"case": f"{tuple(shape)} groups={groups}", "layout": layout, "kind": kind,
                       "dtype": str(dtype).replace("torch.", ""), "windows": amb.numel(), "masked": int(amb.sum()),
                       "fwd_ratio": worst_ratio(y, ref_y, fwd), "bwd_ratio": worst_ratio(gx, ref_g, bwd),
                       "fwd_rel": _rel(y, ref_y), "bwd_rel": _rel(gx, ref_g)}
                if unfused:
                    xu = x.to(device).clone().requires_grad_()
                    yu = relu_lrn_pool(xu, ColumnLRN(groups), module.pool, fuse=False)
                    yu.backward(gout.to(device))
                    row["unfused_fwd_rel"] = _rel(yu.detach().cpu(), ref_y)
                    row["unfused_bwd_rel"] = _rel(xu.grad.cpu(), ref_g)
                rows.append(row)
    return rows


def _rel(got: torch.Tensor, exact: torch.Tensor) -> float:
    return ((got.double() - exact).abs().max() / exact.abs().max().clamp_min(1e-300)).item()


def check(rows: list[dict]) -> None:
    """Every row within its bounds, and the checks exercised what they claim."""
    bad = [r for r in rows if not (r["fwd_ratio"] <= 1.0 and r["bwd_ratio"] <= 1.0)]
    assert not bad, bad
    assert all(r["masked"] == 0 for r in rows if r["kind"] == "tied"), rows  # exact ties route by the rule
    # ambiguity removes only a few windows' gradients: the routing is compared almost everywhere
    assert sum(r["masked"] for r in rows) <= 0.02 * sum(r["windows"] for r in rows), rows


_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
sys.path[:0] = {tests!r}
import torch
from test_relu_lrn_pool_triton import CASES, compare
rows = compare("cpu", torch.float32)
rows += compare("cpu", torch.bfloat16, cases=CASES[2:], kinds=("randn", "tied"))
print("ROWS", json.dumps(rows))
"""


def run_child(code: str) -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT), tests=[str(TESTS), str(TESTS / "model")])],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("ROWS", 1)[1])


@pytest.mark.multiprocess
def test_fused_matches_float64_in_the_interpreter():
    start = time.perf_counter()
    rows = run_child(_CHILD)
    check(rows)
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    assert len(rows) == len(CASES) * len(LAYOUTS) * len(KINDS) + 2 * len(LAYOUTS) * 2
    print(f"interpreter: {len(rows)} cases in {time.perf_counter() - start:.1f} s")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_matches_float64_on_cuda(dtype):
    rows = compare("cuda", dtype, cases=CUDA_CASES)
    check(rows)
    worst = max(max(r["fwd_ratio"], r["bwd_ratio"]) for r in rows)
    print(f"{dtype}: worst error / bound {worst:.3f}")


# --- which path runs -----------------------------------------------------------------------

class _FakeCuda(torch.Tensor):
    is_cuda = True


def _spy(monkeypatch, calls: list):
    from alexnet_mp.model import lrn

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, groups, size, alpha, beta, k):
            calls.append((x.device.type, x.dtype, groups))
            return F.max_pool2d(x.as_subclass(torch.Tensor), 3, 2)

    class LRNAlone(torch.autograd.Function):  # the LRN's own Triton kernel, where the ops run apart
        @staticmethod
        def forward(ctx, x, *args):
            return x.clone()

    monkeypatch.setattr(lrn, "_triton_relu_lrn_pool", lambda: Spy)
    monkeypatch.setattr(lrn, "_triton_lrn", lambda: LRNAlone)
    return lrn


def test_model_on_cpu_keeps_the_separate_ops_bit_for_bit(monkeypatch):
    from alexnet_mp import AlexNet

    calls = []
    lrn = _spy(monkeypatch, calls)
    torch.manual_seed(0)
    model = AlexNet(10, dropout=0.0, init="kaiming")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        got = next(model.network(x))[1]  # conv1 and conv2 with their LRNs and pools
        a = model.pool(model.lrn(F.relu(model.conv1(x))))
        expected = model.pool(model.lrn(F.relu(model.conv2(a))))
    assert calls == []  # CPU tensor with impl "fast": not the kernel
    assert torch.equal(got, expected)
    assert lrn.fuses(x.as_subclass(_FakeCuda), model.lrn, model.pool)  # its modules on CUDA could fuse, if asked

    forced = AlexNet(10, dropout=0.0, lrn_impl="triton", fused_relu_lrn_pool=True)
    with torch.no_grad():
        next(forced.network(x))
    assert calls == [("cpu", torch.float32, 2)] * 2  # "triton" forces it, after conv1 and after conv2

    calls.clear()
    apart = AlexNet(10, dropout=0.0, lrn_impl="triton")  # the default: not fused until measured on a GPU
    lrn_alone = []

    class LRNSpy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *args):
            lrn_alone.append(x.shape[1])
            return x.clone()

    monkeypatch.setattr(lrn, "_triton_lrn", lambda: LRNSpy)
    with torch.no_grad():
        next(apart.network(x))
    assert calls == [] and lrn_alone == [96, 256]  # kept apart: the LRN alone, Triton's as asked


def test_fast_fuses_only_for_cuda_tensors_that_are_not_float64(monkeypatch):
    from torch import nn

    calls = []
    lrn = _spy(monkeypatch, calls)
    pool = nn.MaxPool2d(3, 2)
    x = torch.randn(1, 4, 7, 7)
    y = lrn.relu_lrn_pool(x, lrn.ColumnLRN(2), pool)
    assert calls == []
    assert torch.equal(y, pool(lrn.ColumnLRN(2)(F.relu(x))))  # the separate ops, not the spy's pool

    cuda = x.as_subclass(_FakeCuda)
    lrn.relu_lrn_pool(cuda, lrn.ColumnLRN(2), pool)
    assert calls == [("cpu", torch.float32, 2)]
    calls.clear()
    for kept in (lrn.ColumnLRN(2, impl="eager"), lrn.ColumnLRN(2, impl="torch")):
        lrn.relu_lrn_pool(cuda, kept, pool)
    lrn.relu_lrn_pool(torch.randn(1, 4, 7, 7, dtype=torch.float64).as_subclass(_FakeCuda), lrn.ColumnLRN(2), pool)
    lrn.relu_lrn_pool(cuda, lrn.ColumnLRN(2), nn.MaxPool2d(3, 2, padding=1))  # not the kernel's pool
    lrn.relu_lrn_pool(cuda, lrn.ColumnLRN(2), nn.MaxPool2d(3, 2, ceil_mode=True))
    lrn.relu_lrn_pool(cuda, lrn.ColumnLRN(2), pool, fuse=False)
    hooked = lrn.ColumnLRN(2)
    hooked.register_forward_hook(lambda *a: None)  # a hook must see the LRN's own call
    lrn.relu_lrn_pool(cuda, hooked, pool)
    assert calls == []
    lrn.ReluLRNPool(2)(cuda)
    assert calls == [("cpu", torch.float32, 2)]
    with pytest.raises(ValueError, match="do not split into 2 columns"):
        lrn.relu_lrn_pool(torch.randn(1, 5, 7, 7).as_subclass(_FakeCuda), lrn.ColumnLRN(2), pool)
