"""Ten-patch evaluation averages the softmax of all ten patches (paper, section 4.1).

A fake model reads each patch's logits from its first pixels, so the test chooses every
patch's prediction; the images are built so that averaging only the unmirrored patches,
only the mirrored ones, the logits instead of the softmax, or pairing patches with the
wrong image gives a different top-1 than the paper's average. (The loader's patch
geometry, TEN_PATCHES against torchvision's TenCrop, is checked in test_data_loader.py.)
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet_mp.train.evaluate import evaluate

C = 7  # classes: top-5 is a real subset


class PatchLogits(nn.Module):
    """logits = the first C values of row 0, channel 0 of each (3, 224, 224) patch."""

    def forward(self, x):
        assert x.shape[1:] == (3, 224, 224)
        return x[:, 0, 0, :C] * 1.0


def images_with_logits(per_image: list[list[list[float]]]) -> torch.Tensor:
    """(B, 10, 3, 224, 224) whose patch j of image b makes PatchLogits return per_image[b][j]."""
    x = torch.zeros(len(per_image), 10, 3, 224, 224)
    for b, patches in enumerate(per_image):
        assert len(patches) == 10
        x[b, :, 0, 0, :C] = torch.tensor(patches)
    return x


def pad(v):
    return list(v) + [0.0] * (C - len(v))


UNMIRRORED_MISLEAD = [pad([2, 1])] * 5 + [pad([0, 3])] * 5  # label 1: the first five say 0
MIRRORED_MISLEAD = [pad([0, 0, 3])] * 5 + [pad([0, 0, 1, 2])] * 5  # label 2: the last five say 3
ONE_LOUD_PATCH = [pad([2])] * 9 + [pad([0, 0, 0, 30])]  # label 0: the mean logit says 3
TOP5_ONLY = [pad([1, 2])] * 10  # label 0: second of seven, a top-5 hit only
NOWHERE = [[6, 5, 4, 3, 2, 1, 0]] * 10  # label 6: last of seven, a miss either way

BATCHES = [([UNMIRRORED_MISLEAD, MIRRORED_MISLEAD], [1, 2]), ([ONE_LOUD_PATCH, TOP5_ONLY, NOWHERE], [0, 0, 6])]


def test_the_images_tell_the_wrong_averages_apart():
    """Premise: each plausible wrong average misranks at least one of the designed images."""
    def top1(patches, rows=slice(None), logits_mean=False):
        z = torch.tensor(patches)[rows]
        return int((z.mean(0) if logits_mean else z.softmax(-1).mean(0)).argmax())

    assert [top1(p) for p in (UNMIRRORED_MISLEAD, MIRRORED_MISLEAD, ONE_LOUD_PATCH)] == [1, 2, 0]
    assert top1(UNMIRRORED_MISLEAD, slice(0, 5)) != 1
    assert top1(MIRRORED_MISLEAD, slice(5, 10)) != 2
    assert top1(ONE_LOUD_PATCH, logits_mean=True) != 0


def test_ten_patch_evaluation_averages_the_softmax_of_all_ten_patches():
    loader = [(images_with_logits(imgs), torch.tensor(labels)) for imgs, labels in BATCHES]
    model = PatchLogits().train()
    result = evaluate(model, loader, ten_crop=True)
    # top-1 misses: TOP5_ONLY and NOWHERE; top-5 misses: NOWHERE; 5 images in all
    assert result == {"top1_error": 1.0 - 3 / 5, "top5_error": 1.0 - 4 / 5, "images": 5}
    assert model.training  # evaluate restores the mode it found


def test_centre_crop_evaluation_ranks_each_image_once():
    """The same images' first patch only, as a centre-crop loader yields them (B, 3, 224, 224)."""
    loader = [(images_with_logits(imgs)[:, 0], torch.tensor(labels)) for imgs, labels in BATCHES]
    result = evaluate(PatchLogits(), loader, ten_crop=False)
    # first patches rank: 0 (label 1: miss, top-5 hit), 2 (hit), 0 (hit), 1 (label 0: top-5 hit), 0 (label 6: miss)
    assert result == {"top1_error": 1.0 - 2 / 5, "top5_error": 1.0 - 4 / 5, "images": 5}
