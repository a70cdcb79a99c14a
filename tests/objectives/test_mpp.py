"""Masked patch prediction: the corruption's rates and the 3-bit mean-colour targets."""

import pytest
import torch

import vitkit
from vitkit.objectives.base import Draws
from vitkit.objectives.mpp import (KEPT, MASKED, RANDOM, UNCHANGED, MaskedPatchPrediction, corrupt_patches,
                                   mean_colour_targets)


def test_corruption_hits_half_the_patches_split_80_10_10():
    torch.manual_seed(0)
    b, n, d = 100, 64, 8
    patches = torch.randn(b, n, d)
    mask_token = torch.full((d,), 9.0)
    corrupted, kind = corrupt_patches(patches, mask_token)
    total = b * n
    hit = kind != KEPT
    # Binomial standard deviations: sqrt(p(1-p)/count); allow 4 of them.
    assert abs(float(hit.float().mean()) - 0.5) < 4 * (0.25 / total) ** 0.5
    hits = int(hit.sum())
    for k, share in ((MASKED, 0.8), (RANDOM, 0.1), (UNCHANGED, 0.1)):
        observed = int((kind == k).sum()) / hits
        assert abs(observed - share) < 4 * (share * (1 - share) / hits) ** 0.5, (k, observed)

    assert torch.equal(corrupted[kind == MASKED], mask_token.expand(int((kind == MASKED).sum()), d))
    assert torch.equal(corrupted[kind == KEPT], patches[kind == KEPT])
    assert torch.equal(corrupted[kind == UNCHANGED], patches[kind == UNCHANGED])
    # A random patch is another patch of the same image: present among its originals, not itself.
    for image in range(b):
        chosen = kind[image] == RANDOM
        replaced, own = corrupted[image][chosen], patches[image][chosen]
        matches = (replaced[:, None, :] == patches[image][None, :, :]).all(-1)
        assert matches.any(dim=1).all()
        assert not (replaced == own).all(-1).any()


def test_the_corruption_is_a_function_of_the_draws_so_each_image_is_corrupted_alike_in_any_batch():
    torch.manual_seed(0)
    patches, mask_token = torch.randn(6, 9, 4), torch.randn(4)
    draws = torch.rand(6, 3, 9)
    whole, kind = corrupt_patches(patches, mask_token, draws=draws)
    first, first_kind = corrupt_patches(patches[:2], mask_token, draws=draws[:2])
    rest, rest_kind = corrupt_patches(patches[2:], mask_token, draws=draws[2:])
    assert torch.equal(torch.cat([first, rest]), whole) and torch.equal(torch.cat([first_kind, rest_kind]), kind)


def test_mean_colour_targets_equal_a_hand_computation():
    # One 4x4 RGB image, patches of 2: patch (0, 0) has channel means 0.10, 0.55, 0.99.
    image = torch.zeros(1, 3, 4, 4)
    image[0, 0, :2, :2] = torch.tensor([[0.0, 0.2], [0.1, 0.1]])   # mean 0.1  -> level 0
    image[0, 1, :2, :2] = torch.tensor([[0.5, 0.6], [0.5, 0.6]])   # mean 0.55 -> level 4
    image[0, 2, :2, :2] = torch.tensor([[1.0, 1.0], [0.96, 1.0]])  # mean 0.99 -> level 7
    image[0, :, :2, 2:] = 1.0                                       # white: 7, 7, 7
    image[0, 0, 2:, :2] = 0.25                                      # red 2, green 0, blue 0
    # patch (1, 1) stays black: class 0
    targets = mean_colour_targets(image, patch=2)
    assert targets.tolist() == [[0 * 64 + 4 * 8 + 7, 7 * 64 + 7 * 8 + 7, 2 * 64, 0]]
    assert int(targets.max()) < 512

    grey = torch.tensor([[[[0.0, 0.3], [0.6, 0.9]]]])  # mean 0.45 -> one of 8 grey classes
    assert mean_colour_targets(grey, patch=2).tolist() == [[3]]


def test_mpp_loss_is_computed_at_the_corrupted_positions_and_trains_the_mask_embedding():
    torch.manual_seed(0)
    model = vitkit.create_model("custom", image_size=8, patch_size=2, in_chans=3, num_classes=0, width=16,
                                depth=1, num_heads=2, mlp_dim=16)
    objective = MaskedPatchPrediction(model)
    assert objective.head.out_features == 512
    pixels = torch.rand(4, 3, 8, 8)
    result = objective(model, pixels, None, Draws(0, (0,), range(4), "cpu"))
    assert 0 < result["count"] < 4 * 16
    assert result["loss"].item() == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.2)
    result["loss"].backward()
    assert objective.mask_token.grad is not None and objective.mask_token.grad.abs().sum() > 0
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
