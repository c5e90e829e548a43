"""The layer table against the paper's figures (docs/paper.md): counts derived, never typed into the code."""

import pytest
import torch

from alexnet_mp import LAYERS, AlexNet
from alexnet_mp import layers as L
from alexnet_mp.model import run
from alexnet_mp.parallel import split_columns, take_column


def test_parameter_counts_match_the_paper():
    assert L.total_params() == 60_965_224
    assert L.column_params() == 30_482_612
    assert sum(p.numel() for p in AlexNet().parameters()) == 60_965_224
    for i in range(2):
        assert sum(p.numel() for p in take_column(AlexNet(), i).parameters()) == 30_482_612


def test_torchvision_alexnet_is_a_different_network():
    import torchvision

    assert sum(p.numel() for p in torchvision.models.alexnet().parameters()) == 61_100_840 != L.total_params()


def test_neuron_counts_and_the_conv1_misprint():
    neurons = {s.layer.name: s.neurons for s in L.shapes()}
    assert neurons == {"conv1": 290_400, "conv2": 186_624, "conv3": 64_896, "conv4": 64_896,
                       "conv5": 43_264, "fc6": 4096, "fc7": 4096, "fc8": 1000}
    # the paper prints 253,440 for conv1; its own 96 x 55 x 55 is 290,400
    assert L.PAPER_NEURONS_PRINTED == {"conv1": 253_440}


def test_exchanges_are_where_the_paper_has_them():
    ex = {e.name: e.floats_per_sample for e in L.exchanges()}
    assert ex == {"conv3": 21_632, "fc6": 4_608, "fc7": 2_048, "fc8": 2_048, "logits": 500}
    assert [x.name for x in LAYERS if x.sees == "both"] == ["conv3", "fc6", "fc7", "fc8"]
    # ~123 kB per column per sample forward (30,836 floats x 4 bytes), from the byte function
    assert sum(L.exchange_bytes(1).values()) == 123_344
    assert L.exchange_bytes(1, element_size=2)["conv3"] == 43_264
    # ~31.6 MB per column per step at 128, both ways
    assert 2 * sum(L.exchange_bytes(128).values()) == 31_576_064


def test_shapes_flow_through_the_model():
    model = AlexNet(10, dropout=0.0)
    outputs, meetings = {}, {}
    for name, layer in model.weight_layers():
        layer.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, tuple(out.shape[1:])))

    def meet(name, maps):
        meetings[name] = tuple(maps.shape[1:])
        return maps

    run(model.network(torch.zeros(1, *L.INPUT_SHAPE)), meet)
    # Figure 2: conv1 55x55 -> pooled 27x27; conv2 27x27 -> 13x13; 13, 13, 13 -> pooled 6x6 = 9216 features into fc6
    assert outputs == {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                       "conv5": (256, 13, 13), "fc6": (4096,), "fc7": (4096,), "fc8": (10,)}
    assert meetings == {"conv3": (256, 13, 13), "fc6": (9216,), "fc7": (4096,), "fc8": (4096,), "logits": (10,)}


def test_registration_order_and_initialisation():
    torch.manual_seed(0)
    model = AlexNet()
    names = [n for n, _ in model.named_parameters()]
    assert names == [f"{layer.name}.{p}" for layer in LAYERS for p in ("weight", "bias")]
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}  # the paper's biases of 1; the rest are 0
    for layer in LAYERS:
        m = getattr(model, layer.name)
        assert torch.all(m.bias == (1.0 if layer.name in ones else 0.0)), layer.name
        n = m.weight.numel()
        # N(0, 0.01^2): 6 standard errors of the sample std (0.01 / sqrt(2n)) and mean (0.01 / sqrt(n))
        assert abs(m.weight.std().item() - 0.01) < 6 * 0.01 / (2 * n) ** 0.5, layer.name
        assert abs(m.weight.mean().item()) < 6 * 0.01 / n**0.5, layer.name


def test_grouped_layers_are_grouped_and_dense_layers_dense():
    model = AlexNet()
    assert [model.conv2.groups, model.conv4.groups, model.conv5.groups] == [2, 2, 2]
    assert [model.conv1.groups, model.conv3.groups] == [1, 1]
    assert model.conv3.weight.shape == (384, 256, 3, 3)  # conv3 sees both columns
    assert take_column(AlexNet(), 0).conv3.weight.shape == (192, 256, 3, 3)
    assert take_column(AlexNet(), 1).conv4.weight.shape == (192, 192, 3, 3)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="even"):
        L.layers(999)
    with pytest.raises(ValueError):
        L.exchange_bytes(0)


def test_kaiming_init_is_he_normal_with_zero_biases_and_splits_like_the_paper_init():
    torch.manual_seed(0)
    model = AlexNet(10, init="kaiming")
    for s in L.shapes(10):
        m = getattr(model, s.layer.name)
        fan_in = m.weight[0].numel()
        # He normal, std sqrt(2 / fan_in): within 6 standard errors of the sample std (1 / sqrt(2n) relative)
        assert abs(m.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 6 / (2 * m.weight.numel()) ** 0.5, s.layer.name
        assert torch.all(m.bias == 0)
    columns = split_columns(model)
    assert all(torch.all(c.conv1.bias == 0) for c in columns)
    with pytest.raises(ValueError, match="init"):
        AlexNet(init="xavier")
