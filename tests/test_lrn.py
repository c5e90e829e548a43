"""The fast LRN equals torch's, and LRN runs within each column's maps."""

import pytest
import torch

from alexnet_mp import AlexNet
from alexnet_mp.layers import LRN
from alexnet_mp.lrn import ColumnLRN


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0, 1e3])
def test_fast_lrn_matches_torch_forward_and_backward(scale):
    torch.manual_seed(0)
    x = (torch.randn(3, 96, 13, 13) * scale).requires_grad_()
    fast, ref = ColumnLRN(2, impl="fast"), ColumnLRN(2, impl="torch")
    yf, yr = fast(x), ref(x)
    torch.testing.assert_close(yf, yr, rtol=2e-6, atol=1e-7 * scale)
    g = torch.randn_like(yf)
    (gf,), (gr,) = torch.autograd.grad(yf, x, g), torch.autograd.grad(yr, x, g)
    torch.testing.assert_close(gf, gr, rtol=2e-5, atol=1e-6)


def test_fast_lrn_gradcheck_float64():
    x = torch.randn(2, 10, 3, 3, dtype=torch.float64, requires_grad=True) * 20
    x = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(ColumnLRN(2, impl="fast"), (x,))


def test_fast_lrn_channels_last():
    x = torch.randn(2, 96, 9, 9).to(memory_format=torch.channels_last)
    torch.testing.assert_close(ColumnLRN(2)(x), ColumnLRN(2, impl="torch")(x.contiguous()))


def test_paper_alpha_is_torch_alpha_times_size():
    assert LRN.torch_alpha == pytest.approx(5e-4)
    x = torch.randn(1, 48, 4, 4) * 30
    stock = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    torch.testing.assert_close(ColumnLRN(1)(x), stock(x))
    # the paper's formula written out for one position
    a = x[0, :, 1, 1]
    c = 10
    expected = a[c] / (2.0 + 1e-4 * (a[c - 2:c + 3] ** 2).sum()) ** 0.75
    assert ColumnLRN(1)(x)[0, c, 1, 1].item() == pytest.approx(expected.item(), rel=1e-6)


def test_lrn_stays_within_each_column():
    """Maps 47 and 48 are not neighbours: with large activations the difference is visible."""
    x = torch.zeros(1, 96, 1, 1)
    x[0, 48] = 100.0  # a big activation in column 1's first map
    x[0, 47] = 1.0  # column 0's last map
    within = ColumnLRN(2)(x)
    across = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(x)
    assert within[0, 47].item() == pytest.approx(1.0 / (2.0 + 1e-4) ** 0.75)
    assert across[0, 47].item() == pytest.approx(1.0 / (2.0 + 1e-4 * 10_001) ** 0.75)
    assert across[0, 47].item() < 0.8 * within[0, 47].item()


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
    out = model.block(name, torch.zeros(1, *in_shape))
    within = 1.0 / (LRN.k + LRN.alpha * 1.0) ** LRN.beta
    across = 1.0 / (LRN.k + LRN.alpha * (1.0 + 100.0**2)) ** LRN.beta
    assert out[0, half - 1].flatten()[0].item() == pytest.approx(within, rel=1e-6)
    assert abs(within - across) > 0.1  # the difference a cross-column LRN would make
