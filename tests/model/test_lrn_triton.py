"""The fused Triton LRN kernels equal nn.LocalResponseNorm, forward and backward.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, which must be
set before triton is imported, hence a subprocess); on CUDA they run for real, in fp32 and
bf16, NCHW and channels_last.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the fused LRN kernels need the triton package")

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]

CASES = [((2, 96, 7, 7), 2), ((3, 48, 5, 6), 1), ((2, 256, 4, 4), 2), ((1, 8, 3, 3), 2)]


def compare(device: str, dtype: torch.dtype) -> list[tuple[str, float, float]]:
    """(case, forward, backward): the worst element's error against torch's LRN in float64 on the
    same (already rounded) inputs, divided by the per-element bound of :func:`test_lrn.lrn_bounds`
    for fp32 arithmetic stored in ``dtype``. Within the bound where both are <= 1."""
    from alexnet_mp.model.lrn import ColumnLRN
    from test_lrn import UNIT_ROUNDOFF, lrn_bounds, lrn_float64, worst_ratio

    torch.manual_seed(0)
    rows = []
    for shape, groups in CASES:
        for fmt in (torch.contiguous_format, torch.channels_last):
            for scale in (1e-2, 1.0, 30.0):
                x = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).contiguous(memory_format=fmt)
                g = torch.randn(shape, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
                xt = x.to(device).requires_grad_()
                yt = ColumnLRN(groups, impl="triton")(xt)
                assert yt.dtype == dtype and yt.stride() == xt.stride()
                yt.backward(g.to(device))
                assert xt.grad.dtype == dtype and xt.grad.stride() == xt.stride()
                ref_y, ref_g = lrn_float64(x.contiguous(), g.contiguous(), groups)  # exact inputs in float64
                # the kernels compute in fp32 whatever the storage dtype, and round once to store
                fwd, bwd = lrn_bounds(x, g, groups, UNIT_ROUNDOFF[torch.float32], UNIT_ROUNDOFF[dtype])
                rows.append((f"{shape} groups={groups} {fmt} x{scale}", worst_ratio(yt.detach().cpu(), ref_y, fwd),
                             worst_ratio(xt.grad.cpu(), ref_g, bwd)))
    return rows


_CHILD = """
import sys
sys.path.insert(0, {root!r})
sys.path[:0] = {tests!r}
import torch
from test_lrn_triton import compare
worst = max(max(f, b) for _, f, b in compare("cpu", torch.float32))
print("WORST", worst)
"""


@pytest.mark.multiprocess
def test_triton_lrn_matches_torch_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), tests=[str(TESTS), str(TESTS / "model")])],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    worst = float(out.stdout.split("WORST")[1])
    # fp32 arithmetic against a float64 reference: within the derived per-element bound
    assert worst <= 1.0, out.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_lrn_matches_torch_on_cuda(dtype):
    rows = compare("cuda", dtype)
    worst = max(max(f, b) for _, f, b in rows)
    assert worst <= 1.0, rows


def test_fast_picks_triton_only_for_cuda_tensors(monkeypatch):
    from alexnet_mp.model import lrn

    calls = []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *args):
            calls.append(x.device.type)
            return x.clone()

    monkeypatch.setattr(lrn, "_triton_lrn", lambda: Spy)
    x = torch.randn(1, 4, 3, 3)
    y = lrn.ColumnLRN(2, impl="fast")(x)
    assert calls == []  # CPU tensor: the shifted-add path, not the kernel
    from test_lrn import lrn_bounds, lrn_float64, worst_ratio

    assert worst_ratio(y, lrn_float64(x, x, 2)[0], lrn_bounds(x, x, 2, 2.0**-24, 0.0)[0]) <= 1.0  # the LRN, not a copy
    lrn.ColumnLRN(2, impl="triton")(x)
    assert calls == ["cpu"]  # forced


def test_fast_keeps_float64_off_the_fp32_kernel(monkeypatch):
    """The kernels compute in fp32: a float64 CUDA tensor (verify's reference) takes the exact path."""
    from alexnet_mp.model import lrn

    calls = []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *args):
            calls.append(x.dtype)
            return x.clone()

    class FakeCuda(torch.Tensor):
        is_cuda = True

    monkeypatch.setattr(lrn, "_triton_lrn", lambda: Spy)
    for dtype in (torch.float64, torch.float32):
        lrn.ColumnLRN(2, impl="fast")(torch.randn(1, 4, 3, 3, dtype=dtype).as_subclass(FakeCuda))
    assert calls == [torch.float32]
