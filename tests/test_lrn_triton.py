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

ROOT = Path(__file__).resolve().parent.parent

CASES = [((2, 96, 7, 7), 2), ((3, 48, 5, 6), 1), ((2, 256, 4, 4), 2), ((1, 8, 3, 3), 2)]


def compare(device: str, dtype: torch.dtype) -> list[tuple[str, float, float]]:
    """(case, forward error, backward error), L2-relative against torch's LRN in float64."""
    from alexnet_mp.lrn import ColumnLRN

    torch.manual_seed(0)
    rows = []
    for shape, groups in CASES:
        for fmt in (torch.contiguous_format, torch.channels_last):
            for scale in (1e-2, 1.0, 30.0):
                x = (torch.randn(shape, dtype=torch.float64) * scale).contiguous(memory_format=fmt)
                g = torch.randn(shape, dtype=torch.float64)
                xr = x.clone().requires_grad_()
                yr = ColumnLRN(groups, impl="torch")(xr)
                yr.backward(g)
                xt = x.to(device, dtype).requires_grad_()
                yt = ColumnLRN(groups, impl="triton")(xt)
                assert yt.dtype == dtype and yt.stride() == xt.stride()
                yt.backward(g.to(device, dtype))
                assert xt.grad.stride() == xt.stride()
                fwd = ((yt.detach().cpu().double() - yr).norm() / yr.norm()).item()
                bwd = ((xt.grad.cpu().double() - xr.grad).norm() / xr.grad.norm()).item()
                rows.append((f"{shape} groups={groups} {fmt} x{scale}", fwd, bwd))
    return rows


_CHILD = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import torch
from test_lrn_triton import compare
worst = max(max(f, b) for _, f, b in compare("cpu", torch.float32))
print("WORST", worst)
"""


def test_triton_lrn_matches_torch_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"))],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    worst = float(out.stdout.split("WORST")[1])
    # fp32 arithmetic against a float64 reference: a few fp32 ulp, not more
    assert worst < 5e-7, out.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-7), (torch.bfloat16, 1e-2)])
def test_triton_lrn_matches_torch_on_cuda(dtype, tol):
    rows = compare("cuda", dtype)
    worst = max(max(f, b) for _, f, b in rows)
    assert worst < tol, rows


def test_fast_picks_triton_only_for_cuda_tensors(monkeypatch):
    from alexnet_mp import lrn

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
    torch.testing.assert_close(y, lrn.ColumnLRN(2, impl="torch")(x))
    lrn.ColumnLRN(2, impl="triton")(x)
    assert calls == ["cpu"]  # forced
