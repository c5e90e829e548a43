"""The fast LRN equals torch's, and LRN runs within each column's maps."""

import pytest
import torch

from alexnet_mp import AlexNet
from alexnet_mp.layers import LRN
from alexnet_mp.model.lrn import ColumnLRN

# The paper's constants, typed here rather than read from the library: n = 5, k = 2, alpha = 1e-4 on the sum, beta = 0.75.
SIZE, K, ALPHA, BETA = 5, 2.0, 1e-4, 0.75

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}

FORWARD_ULPS, BACKWARD_ULPS = 32, 64
"""Error bounds in units of the arithmetic's roundoff u, per element (derived in lrn_bounds)."""
F32_REL = FORWARD_ULPS * 2.0**-24
"""One fp32 LRN output against the exact value, relative."""
F64_REL = 2 * FORWARD_ULPS * 2.0**-53
"""Two float64 evaluations of one LRN output (ours and a reference formula), relative."""


def _window_sum(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum over the SIZE maps around each map within its column, zero-padded (float64)."""
    tg = t.unflatten(1, (groups, t.shape[1] // groups))
    out = tg.clone()
    for s in range(1, SIZE // 2 + 1):
        out[:, :, s:] += tg[:, :, :-s]
        out[:, :, :-s] += tg[:, :, s:]
    return out.flatten(1, 2)


def lrn_bounds(x: torch.Tensor, g: torch.Tensor, groups: int, u: float, u_store: float):
    """Per-element bounds on |LRN(x) - exact| and on |dLRN/dx . g - exact| for LRN computed with
    arithmetic of unit roundoff ``u`` and results stored with unit roundoff ``u_store``.

    Forward, y = x d^-beta with d = k + alpha sum x_j^2: d sums 2n + 2 rounded non-negative terms
    (relative error <= 3n + 2 = 17 u), d^-beta carries beta x that plus ~11 u for rsqrt, sqrt and
    their product, x d^-beta one more: ~25 u of |y|, bounded by 32 u.
    Backward, dx = g d^-beta - 2 alpha beta x sum_j g_j x_j d_j^-(beta+1): the two terms can cancel,
    so the bound is on the sum of the magnitudes; each product carries <= (beta+1) 17 u + ~16 u for
    the powers + a few roundings ~ 50 u, bounded by 64 u. Storing rounds once more: at most one ulp
    of the stored type, 2 u_store (round-to-nearest gives half that; Triton's interpreter truncates).
    """
    x, g = x.double(), g.double()
    d = K + ALPHA * _window_sum(x * x, groups)
    r = d ** -BETA
    fwd = (FORWARD_ULPS * u + 2 * u_store) * (x * r).abs()
    both = (g * r).abs() + 2 * ALPHA * BETA * x.abs() * _window_sum((g * x).abs() * d ** -(BETA + 1), groups)
    return fwd, (BACKWARD_ULPS * u + 2 * u_store) * both


def lrn_float64(x: torch.Tensor, g: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's own LocalResponseNorm per column in float64 on x's values: output and input gradient."""
    xr = x.detach().double().requires_grad_()
    yr = ColumnLRN(groups, impl="torch")(xr)
    (gr,) = torch.autograd.grad(yr, xr, g.double())
    return yr.detach(), gr


def worst_ratio(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor) -> float:
    """max |got - exact| / bound; <= 1 within the bound. A zero bound allows only an exact zero."""
    err = (got.double() - exact).abs()
    return (err / bound.clamp_min(torch.finfo(torch.float64).tiny)).max().item()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0, 1e3])
def test_fast_lrn_equals_torch_in_float64(scale):
    """The formula itself: both sides in float64, so anything past float64 rounding is a wrong formula."""
    torch.manual_seed(0)
    x = (torch.randn(3, 96, 13, 13, dtype=torch.float64) * scale).requires_grad_()
    g = torch.randn(3, 96, 13, 13, dtype=torch.float64)
    y = ColumnLRN(2, impl="fast")(x)
    (gx,) = torch.autograd.grad(y, x, g)
    ref_y, ref_g = lrn_float64(x, g, 2)
    # two float64 computations, each within the bound's float64 version: twice the bound
    fwd, bwd = lrn_bounds(x, g, 2, 2 * 2.0**-53, 0.0)
    assert worst_ratio(y, ref_y, fwd) <= 1.0
    assert worst_ratio(gx, ref_g, bwd) <= 1.0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0, 1e3])
def test_fast_lrn_in_fp32_is_within_fp32_rounding_of_float64(scale):
    torch.manual_seed(0)
    x = (torch.randn(3, 96, 13, 13) * scale).requires_grad_()
    g = torch.randn(3, 96, 13, 13)
    y = ColumnLRN(2, impl="fast")(x)
    (gx,) = torch.autograd.grad(y, x, g)
    assert y.dtype == gx.dtype == torch.float32
    ref_y, ref_g = lrn_float64(x, g, 2)
    fwd, bwd = lrn_bounds(x, g, 2, 2.0**-24, 0.0)
    assert worst_ratio(y, ref_y, fwd) <= 1.0
    assert worst_ratio(gx, ref_g, bwd) <= 1.0


def test_fast_lrn_gradcheck_float64():
    x = torch.randn(2, 10, 3, 3, dtype=torch.float64, requires_grad=True) * 20
    x = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(ColumnLRN(2, impl="fast"), (x,))


def test_fast_lrn_channels_last():
    torch.manual_seed(0)
    x = (torch.randn(2, 96, 9, 9) * 30).to(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 96, 9, 9).to(memory_format=torch.channels_last)
    y = ColumnLRN(2)(x)
    (gx,) = torch.autograd.grad(y, x, g)
    ref_y, ref_g = lrn_float64(x.contiguous(), g.contiguous(), 2)
    fwd, bwd = lrn_bounds(x, g, 2, 2.0**-24, 0.0)
    assert worst_ratio(y, ref_y, fwd) <= 1.0
    assert worst_ratio(gx, ref_g, bwd) <= 1.0


def test_paper_alpha_is_torch_alpha_times_size():
    assert (LRN.size, LRN.k, LRN.alpha, LRN.beta) == (SIZE, K, ALPHA, BETA)
    assert LRN.torch_alpha == pytest.approx(5e-4)
    torch.manual_seed(0)
    x = torch.randn(1, 48, 4, 4, dtype=torch.float64) * 30  # float64: the comparison is of formulas
    stock = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    ours = ColumnLRN(1)(x)
    fwd, _ = lrn_bounds(x, x, 1, 2 * 2.0**-53, 0.0)
    assert worst_ratio(ours, stock(x), fwd) <= 1.0
    # the paper's formula written out for one position
    a = x[0, :, 1, 1]
    c = 10
    expected = a[c] / (2.0 + 1e-4 * (a[c - 2:c + 3] ** 2).sum()) ** 0.75
    assert ours[0, c, 1, 1].item() == pytest.approx(expected.item(), rel=F64_REL)


def test_lrn_stays_within_each_column():
    """Maps 47 and 48 are not neighbours: with large activations the difference is visible."""
    x = torch.zeros(1, 96, 1, 1, dtype=torch.float64)
    x[0, 48] = 100.0  # a big activation in column 1's first map
    x[0, 47] = 1.0  # column 0's last map
    within = ColumnLRN(2)(x)
    across = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(x)
    assert within[0, 47].item() == pytest.approx(1.0 / (2.0 + 1e-4) ** 0.75, rel=F64_REL)
    assert within[0, 48].item() == pytest.approx(100.0 / (2.0 + 1e-4 * 100.0**2) ** 0.75, rel=F64_REL)
    # the premise: normalising across the boundary gives ~0.44 there, not ~0.59
    assert across[0, 47].item() == pytest.approx(1.0 / (2.0 + 1e-4 * 10_001) ** 0.75, rel=F64_REL)


@pytest.mark.parametrize("name,in_shape", [("conv1", (3, 224, 224)), ("conv2", (96, 27, 27))])
def test_model_lrn_does_not_cross_the_column_boundary(name, in_shape):
    """Column 0's last map next to a huge map in column 1: the reference net must not see it."""
    model = AlexNet(10, dropout=0.0)
    layer = getattr(model, name)
    half = layer.out_channels // 2
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.bias[half - 1] = 1.0  # column 0's last map: constant 1 after ReLU
        layer.bias[half] = 100.0  # column 1's first map: constant 100
    outputs = []
    model.lrn.register_forward_hook(lambda m, a, out: outputs.append(out))
    x = torch.zeros(1, *in_shape)
    with torch.no_grad():
        if name == "conv1":
            next(model.network(x))  # conv1 and conv2 with their LRNs, up to where the columns first meet
        else:
            model.lrn(torch.relu(model.conv2(x)))
    out = outputs[0]
    # fp32 LRN (conv = bias, ReLU and max-pool are exact here): within the forward bound, 32 u
    # within the column ~0.59; across the boundary it would be 1 / (2 + 1e-4 (1 + 100^2))^0.75 ~ 0.44
    assert out[0, half - 1].flatten()[0].item() == pytest.approx(1.0 / (2.0 + 1e-4 * 1.0) ** 0.75, rel=F32_REL)
    assert out[0, half].flatten()[0].item() == pytest.approx(100.0 / (2.0 + 1e-4 * 100.0**2) ** 0.75, rel=F32_REL)
