"""The paper's numbers, typed here literally and checked against what the library computes.

Other tests check shapes and counts; a wrong padding, pooling window, LRN constant, bias,
initial std, lighting eigenvalue or crop range keeps every shape. Here the network is
written a second time as plain functional code with Krizhevsky, Sutskever and Hinton
(2012)'s constants (section 3 and Figure 2) and compared in float64 on inputs large enough
for the LRN to matter; the initialisation, PCA lighting and crop grid are compared with the
published values. Nothing below is read from ``alexnet_mp.layers`` or ``augment``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from alexnet_mp import AlexNet
from alexnet_mp import layers as L
from alexnet_mp.model import run
from alexnet_mp.data import DataConfig, build_train_loader
from alexnet_mp.data.augment import IMAGENET, lighting_shift, plan_epoch
from alexnet_mp.data.folder import scan_split
from alexnet_mp.parallel import place_on_device, split_in_one_process, take_column

from data_fixtures import textured

CLASSES = 10

# --- the paper, typed once, here ----------------------------------------------------------

# conv: (out channels, input channels each output sees, kernel, stride, padding, columns it is split into
# with each column seeing only its own maps: 2 = grouped, 1 = sees both columns)
PAPER_CONVS = {
    "conv1": (96, 3, 11, 4, 2, 1),
    "conv2": (256, 48, 5, 1, 2, 2),
    "conv3": (384, 256, 3, 1, 1, 1),
    "conv4": (384, 192, 3, 1, 1, 2),
    "conv5": (256, 192, 3, 1, 1, 2),
}
PAPER_FCS = {"fc6": (4096, 256 * 6 * 6), "fc7": (4096, 4096), "fc8": (CLASSES, 4096)}
PAPER_BIAS = {"conv1": 0.0, "conv2": 1.0, "conv3": 0.0, "conv4": 1.0, "conv5": 1.0,
              "fc6": 1.0, "fc7": 1.0, "fc8": 0.0}
PAPER_INIT_STD = 0.01
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75  # alpha multiplies the sum over n maps
NAMES = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]

# fb.resnet.torch's ImageNet PCA (pixels in [0, 1]); eigenvectors are the COLUMNS.
FB_EIGVAL = [0.2175, 0.0188, 0.0045]
FB_EIGVEC = [[-0.5675, 0.7192, 0.4009],
             [-0.5808, -0.0045, -0.8140],
             [-0.5836, -0.6948, 0.4203]]

# float64 forward comparisons: eps = 1.1e-16; the largest fan-in (fc6, 9216) bounds a dot
# product's rounding by ~9216 * eps ~ 1e-12 of the sum of |terms|, and the terms here are
# of the output's order. 1e-10 leaves 100x over the worst case and is 1e6x below the smallest
# planted fault's effect (> 1e-4 relative).
F64_RTOL = 1e-10


def paper_lrn(a: torch.Tensor, load: list | None = None) -> torch.Tensor:
    """b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta over one column's maps.

    ``load`` receives the mean of alpha * sum(a_j^2) / k over all positions.
    """
    maps = a.shape[1]
    out = torch.empty_like(a)
    total = 0.0
    for i in range(maps):
        lo, hi = max(0, i - LRN_N // 2), min(maps - 1, i + LRN_N // 2)
        scaled = LRN_ALPHA * (a[:, lo:hi + 1] ** 2).sum(1)
        out[:, i] = a[:, i] / (LRN_K + scaled) ** LRN_BETA
        total += scaled.mean().item() / LRN_K
    if load is not None:
        load.append(total / maps)
    return out


def paper_stage(name: str, x: torch.Tensor, p: dict[str, torch.Tensor], lrn_load: list | None = None) -> torch.Tensor:
    """Layer ``name`` and what follows it, written from the paper, on the whole (two-column) net.

    ``lrn_load`` collects alpha * sum(a^2) / k at every LRN: the test's proof that the LRN is
    not in its near-linear regime (where a typo in alpha or n would be invisible).
    """
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    if name in PAPER_CONVS:
        out_ch, in_ch, kernel, stride, padding, columns = PAPER_CONVS[name]
        assert w.shape == (out_ch, in_ch, kernel, kernel), name
        # each column's output maps see only that column's input maps where columns == 2
        xs = x.chunk(columns, 1) if columns == 2 else [x, x]
        y = torch.cat([F.conv2d(xc, wc, bc, stride=stride, padding=padding)
                       for xc, wc, bc in zip(xs, w.chunk(2, 0), b.chunk(2, 0))], 1)
    else:
        assert w.shape == PAPER_FCS[name], name
        y = F.linear(x, w, b)
    if name != "fc8":
        y = F.relu(y)
    if name in ("conv1", "conv2"):
        y = torch.cat([paper_lrn(h, lrn_load) for h in y.chunk(2, 1)], 1)  # within each column's maps
    if name in ("conv1", "conv2", "conv5"):
        y = F.max_pool2d(y, kernel_size=3, stride=2)  # overlapping pooling, s=2, z=3
    if name == "conv5":
        y = y.flatten(1)
    return y  # dropout after fc6 and fc7 is the identity at test time (inverted dropout)


def lively_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 weights scaled so both LRNs see alpha * sum(a^2) of the order of k.

    gain / sqrt(fan_in): conv1 pre-activations ~ N(0, 150^2) on an N(0, 1) input; later
    layers keep the scale. Biases random, so that a bias that is not added shows.
    """
    g = torch.Generator().manual_seed(seed)
    gains = {"conv1": 150.0, "conv2": 4.0, "conv3": 2.0, "conv4": 2.0, "conv5": 2.0, "fc6": 2.0, "fc7": 2.0,
             "fc8": 2.0}
    state = {}
    for name in NAMES:
        shape = (PAPER_CONVS[name][0], PAPER_CONVS[name][1], PAPER_CONVS[name][2], PAPER_CONVS[name][2]) \
            if name in PAPER_CONVS else PAPER_FCS[name]
        fan_in = int(np.prod(shape[1:]))
        state[f"{name}.weight"] = torch.randn(shape, generator=g, dtype=torch.float64) * gains[name] / fan_in**0.5
        state[f"{name}.bias"] = torch.randn(shape[0], generator=g, dtype=torch.float64)
    return state


@pytest.fixture(scope="module")
def lively():
    """(state, input, the paper's outputs after each layer, LRN load per column per LRN)."""
    state = lively_state()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outs, load, h = {}, [], x
    for name in NAMES:
        h = outs[name] = paper_stage(name, h, state, load)
    return state, x, outs, load


@pytest.fixture(scope="module")
def lively_model(lively):
    """AlexNet(dropout=0.5) in eval() and float64, on the lively weights."""
    model = AlexNet(CLASSES, dropout=0.5).double()
    model.load_state_dict(lively[0])
    return model.eval()


def assert_f64_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == torch.float64 and got.shape == want.shape, what
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= F64_RTOL * scale, f"{what}: max |diff| {err:.3g} vs tolerance {F64_RTOL * scale:.3g}"


# --- the network --------------------------------------------------------------------------

def test_lrn_is_exercised_beyond_its_linear_regime(lively):
    """The premise of the comparisons below: alpha * sum(a^2) is of the order of k at both LRNs."""
    *_, load = lively
    assert len(load) == 4  # conv1 and conv2, two columns each
    assert all(0.2 < x < 20 for x in load), load


MEETINGS = {"conv3": "conv2", "fc6": "conv5", "fc7": "fc6", "fc8": "fc7", L.LOGITS: "fc8"}
"""Each place the columns meet, and the paper's layer whose output (and what follows it) arrives there."""


def meeting_maps(model: AlexNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the whole network hands out at each meeting place."""
    seen = {}

    def record(name, maps):
        seen[name] = maps
        return maps

    run(model.network(x), record)
    return seen


def test_the_columns_meet_where_the_layer_table_says(lively_model):
    with torch.no_grad():
        places = list(meeting_maps(lively_model, torch.zeros(1, 3, 224, 224, dtype=torch.float64)))
    assert places == [e.name for e in L.exchanges(CLASSES)] == list(MEETINGS)


@pytest.mark.parametrize("place", list(MEETINGS))
def test_each_meeting_place_gets_the_papers_maps(lively, lively_model, place):
    """The maps handed out where the columns meet equal the paper's, layer by layer, in float64."""
    _, x, outs, _ = lively
    with torch.no_grad():
        assert_f64_close(meeting_maps(lively_model, x)[place], outs[MEETINGS[place]], f"{place} <- {MEETINGS[place]}")


def test_whole_network_in_eval_equals_the_paper(lively, lively_model):
    _, x, outs, _ = lively
    with torch.no_grad():
        assert_f64_close(lively_model(x), outs["fc8"], "AlexNet")


@pytest.mark.parametrize("where", ["columns", "device"])
def test_placed_network_in_eval_equals_the_paper(lively, where):
    """Both columns in one process (per-column LRN, grouped layers as separate modules) and the
    whole network placed on one device."""
    state, x, outs, _ = lively
    if where == "columns":
        placed = split_in_one_process(["cpu", "cpu"], num_classes=CLASSES, dropout=0.5).double()
    else:
        placed = place_on_device(AlexNet(CLASSES, dropout=0.5).double(), "cpu")
    placed.load_reference_state(state)
    with torch.no_grad():
        assert_f64_close(placed.eval()(x), outs["fc8"], f"placed on {where}")


def test_modules_have_the_papers_kernels_strides_padding_and_groups():
    model, column = AlexNet(CLASSES), take_column(AlexNet(CLASSES), 1)
    for name, (out_ch, in_ch, kernel, stride, padding, columns) in PAPER_CONVS.items():
        for net, outs, groups in ((model, out_ch, columns), (column, out_ch // 2, 1)):
            m = getattr(net, name)
            assert isinstance(m, torch.nn.Conv2d), name
            got = (m.out_channels, m.weight.shape[1], m.kernel_size, m.stride, m.padding, m.groups, m.dilation)
            assert got == (outs, in_ch, (kernel, kernel), (stride, stride), (padding, padding), groups, (1, 1)), name
    for name, (out_f, in_f) in PAPER_FCS.items():
        assert (model_m := getattr(model, name)).weight.shape == (out_f, in_f), name
        assert isinstance(model_m, torch.nn.Linear)
        assert getattr(column, name).weight.shape == (out_f // 2, in_f), name


@pytest.mark.parametrize("make", [lambda: AlexNet(CLASSES), lambda: take_column(AlexNet(CLASSES), 0)],
                         ids=["AlexNet", "column"])
def test_initialisation_is_the_papers(make):
    """Weights N(0, 0.01^2): sample mean and std within 6 standard errors; biases exactly 1 or 0."""
    torch.manual_seed(0)
    net = make()
    for name in NAMES:
        m = getattr(net, name)
        w = m.weight.detach().double().flatten()
        n = w.numel()
        # standard errors of a normal sample's mean (s/sqrt(N)) and std (s/sqrt(2N))
        assert abs(w.mean().item()) < 6 * PAPER_INIT_STD / n**0.5, name
        assert abs(w.std().item() - PAPER_INIT_STD) < 6 * PAPER_INIT_STD / (2 * n) ** 0.5, name
        assert torch.all(m.bias == PAPER_BIAS[name]), (name, m.bias.unique())


# --- dropout -----------------------------------------------------------------------------

def _x(seed=2):
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_dropout_is_off_in_eval_and_on_in_train():
    torch.manual_seed(0)
    model = AlexNet(CLASSES, dropout=0.5)
    plain = AlexNet(CLASSES, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    x = _x()
    with torch.no_grad():
        model.eval(), plain.eval()
        a, b, ref = model(x), model(x), plain(x)
        assert torch.equal(a, b) and torch.equal(a, ref)
        model.train()
        assert not torch.equal(model(x), ref)


@pytest.mark.slow
def test_split_dropout_is_off_in_eval_and_on_in_train():
    """float64: the columns sum in a different order from the single-device net."""
    torch.manual_seed(0)
    ref = AlexNet(CLASSES, dropout=0.0).double().eval()
    split = split_in_one_process(["cpu", "cpu"], num_classes=CLASSES, dropout=0.5).double()
    split.load_reference_state(ref.state_dict())
    x = _x().double()
    with torch.no_grad():
        split.eval()
        a, b = split(x), split(x)
        assert torch.equal(a, b)
        assert_f64_close(a, ref(x), "split in eval vs dropout=0")
        split.train()
        assert not torch.equal(split(x), a)


def test_train_dropout_zeroes_half_of_fc6_and_fc7_and_doubles_the_rest():
    """In train(), fc7's input is relu(fc6's output) with each unit 0 or doubled, about half 0
    (p = 0.5, inverted dropout); likewise fc8's input from fc7. fc6's input (the conv stack)
    is as in eval, and nothing follows fc8."""
    torch.manual_seed(0)
    model = AlexNet(CLASSES, dropout=0.5)
    seen: dict[str, list] = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, args, out, n=n: seen.setdefault(n, []).append((args[0].detach(), out.detach())))
        for n in ("fc6", "fc7", "fc8")]
    x = _x()
    with torch.no_grad():
        model.eval()
        model(x)
        model.train()
        logits = model(x)
    for h in hooks:
        h.remove()
    assert torch.equal(seen["fc6"][0][0], seen["fc6"][1][0])  # the conv stack has no dropout
    assert torch.equal(logits, seen["fc8"][1][1])  # nothing after fc8
    for before, after in (("fc6", "fc7"), ("fc7", "fc8")):
        relu = F.relu(seen[before][1][1])  # this train pass: the layer's output after ReLU
        dropped_in = seen[after][1][0]  # what the next layer received
        kept = dropped_in != 0
        assert torch.equal(dropped_in[kept], 2 * relu[kept]), before
        live = relu > 0
        n = int(live.sum())
        dropped = float((~kept & live).sum()) / n
        assert n > 1000 and abs(dropped - 0.5) < 6 * (0.25 / n) ** 0.5, (before, dropped, n)


# --- PCA lighting -------------------------------------------------------------------------

def test_pca_eigenpairs_are_fb_resnet_torchs():
    assert np.array_equal(np.asarray(IMAGENET.eigval, dtype=np.float64), FB_EIGVAL)
    assert np.array_equal(np.asarray(IMAGENET.eigvec, dtype=np.float64), FB_EIGVEC)


def test_published_eigenvectors_are_orthonormal_to_their_rounding():
    """Columns rounded to 4 decimals (|error| <= 5e-5 each): |p_i . p_j - delta_ij| <=
    sum_k (|p_ik| + |p_jk|) 5e-5 <= 2 sqrt(3) 5e-5 < 1.8e-4 (Cauchy-Schwarz on unit columns)."""
    p = np.asarray(IMAGENET.eigvec, dtype=np.float64)
    assert np.abs(p.T @ p - np.eye(3)).max() < 1.8e-4
    assert np.abs(p @ p.T - np.eye(3)).max() < 1.8e-4


def test_lighting_shift_is_the_papers_sum_over_eigenpairs():
    """[Ir, Ig, Ib] += sum_i alpha_i lambda_i p_i, with p_i the i-th COLUMN, alpha_i = pca_std * draw."""
    draws = np.array([[1.0, 2.0, -3.0], [-0.5, 0.0, 4.0]])
    want = np.zeros((2, 3))
    for s in range(2):
        for i in range(3):
            for c in range(3):
                want[s, c] += 0.1 * draws[s, i] * FB_EIGVAL[i] * FB_EIGVEC[c][i]
    got = lighting_shift(draws, IMAGENET, 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-17)


# --- the training crop grid ---------------------------------------------------------------

def test_crop_offsets_cover_0_to_32_uniformly_and_flips_are_half():
    n = 33_000
    plan = plan_epoch(n, 123, 4)
    for axis in range(2):
        counts = np.bincount(plan.offsets[:, axis], minlength=33)
        assert plan.offsets[:, axis].min() == 0 and plan.offsets[:, axis].max() == 32
        assert len(counts) == 33
        p = 1 / 33  # each of the 33 offsets: binomial count, 6 standard deviations
        assert np.all(np.abs(counts - n * p) < 6 * (n * p * (1 - p)) ** 0.5), counts
    assert set(np.unique(plan.mirror)) == {0, 1}
    assert abs(plan.mirror.mean() - 0.5) < 6 * (0.25 / n) ** 0.5


@pytest.fixture(scope="module")
def textured_train(tmp_path_factory):
    """Three textured PNGs (lossless: decoding cannot differ), portrait, landscape and square."""
    root = tmp_path_factory.mktemp("crops") / "ds"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        for i, (h, w) in enumerate([(300, 451), (517, 333), (256, 256)]):
            Image.fromarray(textured(h, w, 10 + i)).save(root / split / "a" / f"{i}.png")
    return root


def test_train_crop_at_offset_32_is_the_bottom_right_of_the_centre_square(textured_train, tmp_path):
    """A seed whose plan holds an unmirrored (32, 32) crop; every planned crop is checked
    against Resize(256) + CenterCrop(256) + slicing, the (32, 32) one included."""
    n = 3
    seed = next((s for s in range(20_000)
                 if any((plan := plan_epoch(n, s, 0)).offsets[i].tolist() == [32, 32] and plan.mirror[i] == 0
                        for i in range(n))), None)
    assert seed is not None, "no plan in 20000 seeds ever drew offset 32 on both axes"
    plan = plan_epoch(n, seed, 0)
    cfg = DataConfig(path=str(textured_train), cache_dir=str(tmp_path / "cache"), loader="torchvision", threads=0,
                     pca_std=0.0)
    (x, _), = list(build_train_loader(cfg, batch_size=n, seed=seed, epoch=0))
    mean = torch.tensor(IMAGENET.mean).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET.std).reshape(3, 1, 1)
    files = scan_split(textured_train, "train", cache_dir=str(tmp_path / "cache")).files
    for pos in range(n):
        with Image.open(files[plan.order[pos]]) as im:
            img = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        square = TF.center_crop(TF.resize(img, 256, antialias=True), 256)
        top, left = plan.offsets[pos].tolist()
        crop = square[:, top:top + 224, left:left + 224]
        crop = crop.flip(-1) if plan.mirror[pos] else crop
        want = (crop.float() / 255.0 - mean) / std
        torch.testing.assert_close(x[pos], want, rtol=1e-6, atol=1e-5)
        if [top, left] == [32, 32]:
            assert torch.equal(crop, square[:, -224:, -224:])
            assert (x[pos] - (square[:, 31:255, 31:255].float() / 255.0 - mean) / std).abs().mean() > 0.05
