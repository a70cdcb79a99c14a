"""Batched augmentation: what each option does to pixels and targets, on grey and RGB."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitkit.data.augment import (AugmentConfig, Augmenter, default_augment, normalize, soft_targets,
                                 to_unit_float)
from vitkit.errors import ConfigError

SHAPES = {"grey 8x8": (64, 1, 8, 8), "rgb 32x32": (64, 3, 32, 32)}
OPTIONS = {
    "random crop": dict(crop="random", crop_padding=2),
    "resized crop": dict(crop="resized"),
    "flip": dict(flip=True),
    "randaugment": dict(randaugment=2, randaugment_magnitude=9),
    "mixup": dict(mixup=0.8),
    "cutmix": dict(cutmix=1.0),
    "erasing": dict(erasing=1.0),
    "elastic": dict(elastic=0.05),
    "everything": dict(crop="random", flip=True, randaugment=2, mixup=0.8, cutmix=1.0, erasing=0.25,
                       label_smoothing=0.1),
}


def _batch(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(shape, generator=generator)
    labels = torch.randint(0, 10, (shape[0],), generator=generator)
    return images, labels


def _augment(options, shape, seed=0):
    images, labels = _batch(shape)
    augmenter = Augmenter(AugmentConfig(**options), 10, shape[-1], shape[1])
    torch.manual_seed(seed)
    return images, labels, *augmenter(images, labels)


def test_everything_off_is_the_identity_with_smoothed_one_hot_targets():
    images, labels = _batch(SHAPES["rgb 32x32"])
    out, targets = Augmenter(AugmentConfig(label_smoothing=0.1), 10, 32, 3)(images, labels)
    assert torch.equal(out, images)
    assert torch.allclose(targets[torch.arange(64), labels], torch.full((64,), 0.91))
    assert torch.allclose(targets.sum(1), torch.ones(64))
    assert targets.min() == pytest.approx(0.01)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("option", OPTIONS.keys())
def test_every_option_keeps_shape_and_range_and_changes_images(shape, option):
    images, _, out, targets = _augment(OPTIONS[option], shape)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert targets.shape == (shape[0], 10)
    assert torch.allclose(targets.sum(1), torch.ones(shape[0]), atol=1e-6)
    assert not torch.equal(out, images)


@pytest.mark.parametrize("option", [*OPTIONS, "affine"])
def test_an_empty_batch_passes_through_every_option(option):
    options = OPTIONS.get(option, dict(rotate=15.0, scale=0.15, translate=0.05))
    out, targets = Augmenter(AugmentConfig(**options), 10, 8, 3)(torch.rand(0, 3, 8, 8),
                                                                  torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 3, 8, 8) and targets.shape == (0, 10)


@pytest.mark.parametrize("option", OPTIONS.keys())
def test_seeding_the_global_rng_fixes_the_result(option):
    _, _, first, first_targets = _augment(OPTIONS[option], SHAPES["rgb 32x32"], seed=5)
    _, _, again, again_targets = _augment(OPTIONS[option], SHAPES["rgb 32x32"], seed=5)
    _, _, other, _ = _augment(OPTIONS[option], SHAPES["rgb 32x32"], seed=6)
    assert torch.equal(first, again) and torch.equal(first_targets, again_targets)
    assert not torch.equal(first, other)


def test_a_generator_replaces_the_global_rng_without_touching_it():
    images, labels = _batch(SHAPES["grey 8x8"])
    augmenter = Augmenter(AugmentConfig(**OPTIONS["everything"]), 10, 8, 1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = augmenter(images, labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before)
    second = augmenter(images, labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_random_crop_is_a_shift_within_the_padding_filled_with_zeros():
    images, _, out, _ = _augment(dict(crop="random", crop_padding=2), SHAPES["grey 8x8"])
    padded = F.pad(images, (2, 2, 2, 2))
    shifts = {(dy, dx): padded[:, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)}
    matches = torch.stack([(out == window).flatten(1).all(1) for window in shifts.values()], 1)
    assert matches.any(1).all()
    assert matches.any(0).sum() > 15  # many different offsets are used


def test_flip_mirrors_about_half_the_images():
    images, _, out, _ = _augment(dict(flip=True), SHAPES["rgb 32x32"])
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()
    assert 15 < int(mirrored.sum()) < 49


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_erasing_changes_exactly_one_rectangle_per_image(shape):
    images, _, out, _ = _augment(dict(erasing=1.0), shape)
    changed = (out != images).any(1)
    height, width = shape[-2:]
    for mask in changed:
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert mask[top:bottom, left:right].all()
        assert int(mask.sum()) == (bottom - top) * (right - left)
        assert int(mask.sum()) <= height * width * 0.34 + max(height, width)


def test_erasing_probability_is_per_image():
    images, _, out, _ = _augment(dict(erasing=0.25), SHAPES["rgb 32x32"])
    erased = (out != images).flatten(1).any(1).sum()
    assert 5 <= int(erased) <= 30


def _pairs_with_different_labels(labels):
    partner = labels.flip(0)
    return (labels != partner).nonzero().squeeze(1), partner


@pytest.mark.parametrize("seed", range(4))
def test_mixup_blends_images_and_targets_with_one_weight(seed):
    images, labels, out, targets = _augment(dict(mixup=0.8), SHAPES["rgb 32x32"], seed)
    rows, partner = _pairs_with_different_labels(labels)
    weight = targets[rows[0], labels[rows[0]]]
    assert torch.allclose(targets[rows, labels[rows]], weight.expand(len(rows)))
    assert torch.allclose(targets[rows, partner[rows]], (1 - weight).expand(len(rows)))
    assert torch.allclose(out, weight * images + (1 - weight) * images.flip(0), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("seed", range(6))
def test_cutmix_label_mass_equals_the_pasted_pixel_fraction(shape, seed):
    images, labels, out, targets = _augment(dict(cutmix=1.0), shape, seed)
    rows, partner = _pairs_with_different_labels(labels)
    from_partner = (out == images.flip(0)).all(1) & (out != images).all(1)
    pasted_fraction = from_partner.flatten(1).float().mean(1)
    assert torch.allclose(targets[rows, partner[rows]], pasted_fraction[rows])
    assert torch.allclose(targets[rows, labels[rows]], 1 - pasted_fraction[rows])
    assert torch.equal(from_partner | (out == images).all(1), torch.ones_like(from_partner))


def test_mix_prob_zero_never_mixes():
    images, labels, out, targets = _augment(dict(mixup=0.8, cutmix=1.0, mix_prob=0.0), SHAPES["grey 8x8"])
    assert torch.equal(out, images) and torch.equal(targets, F.one_hot(labels, 10).float())


def test_randaugment_on_grey_images_avoids_the_colour_only_operation():
    augmenter = Augmenter(AugmentConfig(randaugment=14), 10, 8, 1)
    images, labels = _batch(SHAPES["grey 8x8"])
    out, _ = augmenter(images, labels)
    assert out.shape == images.shape
    with pytest.raises(ConfigError, match="at most 14 operations"):
        Augmenter(AugmentConfig(randaugment=15), 10, 8, 1)


def test_defaults_follow_the_data():
    digits = default_augment(8, 1, 1259)
    assert (digits.crop, digits.flip) == ("none", False)
    assert (digits.rotate, digits.scale, digits.translate, digits.mixup) == (15.0, 0.15, 0.05, 0.8)
    assert digits.cutmix == digits.randaugment == 0
    cifar = default_augment(32, 3, 45_000)
    assert (cifar.crop, cifar.crop_padding, cifar.flip) == ("random", 4, True)
    assert (cifar.randaugment, cifar.mixup, cifar.cutmix, cifar.erasing) == (2, 0.8, 1.0, 0.25)
    small_photos = default_augment((224, 160), 3, 900)
    assert (small_photos.crop, small_photos.flip) == ("resized", True)
    assert small_photos.randaugment == small_photos.mixup == 0


@pytest.mark.parametrize("bad", [dict(crop="centre"), dict(rotate=-1), dict(scale=1.0), dict(translate=0.5), dict(elastic=-0.1), dict(elastic=0.5), dict(crop_padding=-1), dict(resized_scale=(0.5, 0.2)),
                                 dict(randaugment_magnitude=30), dict(mixup=-1), dict(erasing=1.5),
                                 dict(label_smoothing=2)])
def test_nonsense_options_are_refused(bad):
    with pytest.raises(ConfigError):
        AugmentConfig(**bad)


def test_normalize_maps_uint8_per_channel():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize(images, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, 2.0, 0.0]), atol=1e-6)
    from_float = normalize(to_unit_float(images), (0.5,), (0.5,))
    assert torch.allclose(from_float[1, :, 1, 1], torch.tensor([-1.0, 1.0, -0.6]))
    with pytest.raises(ConfigError, match="1 or 3 values"):
        normalize(images, (0.5, 0.5), (0.5,))


def test_soft_targets_without_smoothing_are_one_hot():
    assert soft_targets(torch.tensor([2, 0]), 3, 0.0).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_resized_crop_stretches_a_box_of_the_asked_area_and_aspect():
    size = 32
    ramp = (torch.arange(size) + 0.5) / size
    images = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size), torch.zeros(size, size)])
    images = images.expand(64, 3, size, size).contiguous()
    augmenter = Augmenter(AugmentConfig(crop="resized", resized_scale=(0.25, 0.5)), 10, size, 3)
    torch.manual_seed(0)
    out, _ = augmenter(images, torch.zeros(64, dtype=torch.long))
    # Inside the image a bilinear sample of a ramp is the ramp, so its slope is the box's side.
    box_w = out[:, 0, :, 1:].diff(dim=-1).median(-1).values.median(-1).values * size
    box_h = out[:, 1, 1:, :].diff(dim=-2).median(-2).values.median(-1).values * size
    area, aspect = box_w * box_h, box_w / box_h
    assert area.min() >= 0.25 - 1e-4 and area.max() <= 0.5 + 1e-4
    assert aspect.min() >= 0.75 - 1e-4 and aspect.max() <= 4 / 3 + 1e-4
    assert area.max() - area.min() > 0.15


def test_a_batch_of_the_wrong_shape_is_named():
    with pytest.raises(ConfigError, match="built for images of 1x8x8 got a batch of 3x8x8"):
        Augmenter(AugmentConfig(), 10, 8, 1)(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))


def test_with_both_mixings_on_each_batch_uses_one_of_them():
    kinds = set()
    for seed in range(12):
        images, _, out, _ = _augment(dict(mixup=0.8, cutmix=1.0), SHAPES["grey 8x8"], seed)
        kept = (out == images) | (out == images.flip(0))
        kinds.add("cutmix" if kept.all() else "mixup")
        assert kept.all() or not kept[0].all()
    assert kinds == {"cutmix", "mixup"}


def test_affine_with_no_rotation_zoom_or_shift_is_the_identity_and_a_shift_moves_pixels():
    from vitkit.data.augment import random_affine

    images = torch.rand(4, 1, 8, 8)
    assert torch.allclose(random_affine(images, 0.0, 0.0, 0.0), images, atol=1e-6)
    # translate 1/8 of the side on 8 pixels: at most one pixel, so each output pixel is a
    # bilinear blend of input pixels within one step of it.
    torch.manual_seed(0)
    one = torch.zeros(64, 1, 8, 8)
    one[:, :, 4, 4] = 1.0
    moved = random_affine(one, 0.0, 0.0, 0.125)
    assert torch.allclose(moved.sum(dim=(1, 2, 3)), torch.ones(64), atol=1e-5)
    rows, cols = torch.nonzero(moved[:, 0] > 1e-6, as_tuple=True)[1:]
    assert rows.min() >= 3 and rows.max() <= 5 and cols.min() >= 3 and cols.max() <= 5
    assert not torch.allclose(moved, one)


def test_rotation_by_a_quarter_turn_bound_keeps_a_centred_disc():
    from vitkit.data.augment import random_affine

    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disc = (((y - 7.5) ** 2 + (x - 7.5) ** 2) < 16).float().expand(8, 1, 16, 16)
    rotated = random_affine(disc, 90.0, 0.0, 0.0)
    assert torch.allclose(rotated.sum(dim=(1, 2, 3)), disc.sum(dim=(1, 2, 3)), rtol=0.05)


def test_elastic_warp_moves_pixels_by_smooth_displacements_of_the_asked_size():
    from vitkit.data.augment import random_affine

    # On a ramp whose value is the column index, a bilinear resampling reads the column it was
    # moved from: value - column is the horizontal displacement in pixels (away from borders).
    side = 32
    ramp = torch.arange(side, dtype=torch.float32).expand(256, 1, side, side).contiguous()
    torch.manual_seed(0)
    warped = random_affine(ramp, 0.0, 0.0, 0.0, elastic=0.05)
    shift = (warped - ramp)[:, 0, 6:-6, 6:-6]
    # Control points have a standard deviation of 0.05 * 32 = 1.6 pixels; bicubic interpolation
    # between them averages neighbours, so the field's spread is somewhat below that.
    assert 0.8 < float(shift.std()) < 1.7
    # Smooth: neighbouring pixels move almost together, unlike independent noise.
    step = (shift[:, :, 1:] - shift[:, :, :-1]).abs().mean()
    assert float(step) < 0.25 * float(shift.abs().mean())
    assert torch.allclose(random_affine(ramp[:4], 0.0, 0.0, 0.0, elastic=0.0), ramp[:4], atol=1e-4)
