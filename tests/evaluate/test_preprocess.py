"""Preprocessing for predict and eval: a model trained here is resized exactly as it always was;
a release's model is resized and cropped as its release does (timm's evaluation transform)."""

import torch
import torch.nn.functional as F

from vitkit.evaluate.preprocess import fit_pixels, prepare_images, resize_and_crop, resize_images
from vitkit.models.config import ModelConfig

SMALL = dict(patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64, num_classes=3)


def test_models_trained_here_are_preprocessed_as_before_bit_for_bit():
    cfg = ModelConfig(image_size=16, **SMALL)
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == (None, None, None)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8, generator=g)
    # What vitkit has always done: bilinear with antialiasing to the model's size, then (x - 0.5) / 0.5.
    resized = F.interpolate(batch.float() / 255.0, size=(16, 16), mode="bilinear", align_corners=False,
                            antialias=True).clamp(0.0, 1.0)
    assert torch.equal(prepare_images(batch, cfg), (resized - 0.5) / 0.5)
    same_size = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g)
    assert torch.equal(prepare_images(same_size, cfg), (same_size.float() / 255.0 - 0.5) / 0.5)


PIXEL_TOLERANCE = 0.05 / 100


def ramp(height: int, width: int) -> torch.Tensor:
    """Channel 0 holds the column index / 100, channel 1 the row index / 100."""
    rows = torch.arange(height, dtype=torch.float64).view(-1, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float64).view(1, -1).expand(height, width)
    return torch.stack([cols, rows, cols]).unsqueeze(0) / 100


def released(mode: str, crop_pct: float, interpolation: str = "bilinear") -> ModelConfig:
    return ModelConfig(image_size=16, interpolation=interpolation, crop_pct=crop_pct, crop_mode=mode, **SMALL)


def test_center_mode_scales_the_shorter_side_and_takes_the_middle():
    # 40 x 80 -> shorter side to floor(16 / 0.5) = 32, so 32 x 64; the middle 16 x 16 is rows
    # 8..23 and columns 24..39 of that. Away from the borders a ramp resamples to the source
    # coordinate each output pixel's centre maps to (within 0.05 pixels: the anti-aliasing
    # filter's taps are not symmetric about every centre); a wrong offset is a pixel or more.
    out = resize_and_crop(ramp(40, 80), released("center", 0.5))
    k = torch.arange(16, dtype=torch.float64)
    assert torch.allclose(out[0, 0, 0], ((k + 24.5) * 80 / 64 - 0.5) / 100, atol=PIXEL_TOLERANCE)
    assert torch.allclose(out[0, 1, :, 0], ((k + 8.5) * 40 / 32 - 0.5) / 100, atol=PIXEL_TOLERANCE)


def test_squash_mode_scales_both_sides():
    out = resize_and_crop(ramp(40, 80), released("squash", 0.5))
    k = torch.arange(16, dtype=torch.float64)
    assert torch.allclose(out[0, 0, 0], ((k + 8.5) * 80 / 32 - 0.5) / 100, atol=PIXEL_TOLERANCE)
    assert torch.allclose(out[0, 1, :, 0], ((k + 8.5) * 40 / 32 - 0.5) / 100, atol=PIXEL_TOLERANCE)


def test_whole_image_squashed_without_a_crop_is_a_plain_resize():
    cfg = released("squash", 1.0, "bicubic")
    x = torch.rand(2, 3, 30, 50, generator=torch.Generator().manual_seed(1))
    expected = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    assert torch.equal(resize_and_crop(x, cfg), expected)


def test_crop_sizes_are_floored_as_timm_and_deit_compute_them(monkeypatch):
    real, seen = F.interpolate, []
    monkeypatch.setattr(F, "interpolate", lambda x, size, **kw: seen.append(size) or real(x, size=size, **kw))
    # DeiT: int(224 / 0.875) = 256; big_vision's 240 // 7 * 8 = 272 is 240 / (240 / 272); a crop
    # of 384 from 450 is crop_pct 384 / 450, and 384 / (384 / 450) is 449.99999999999994.
    for size, crop_pct, scaled in ((224, 0.875, 256), (240, 240 / 272, 272), (224, 0.9, 248),
                                   (384, 384 / 450, 450)):
        cfg = ModelConfig(image_size=size, interpolation="bicubic", crop_pct=crop_pct, crop_mode="squash",
                          **{**SMALL, "patch_size": 16})
        seen.clear()
        assert resize_and_crop(torch.rand(1, 3, 300, 300), cfg).shape == (1, 3, size, size)
        assert seen == [(scaled, scaled)]


def test_batches_and_lists_of_images_are_preprocessed_alike():
    cfg = released("center", 0.875, "bicubic")
    g = torch.Generator().manual_seed(2)
    batch = torch.randint(0, 256, (2, 3, 30, 45), dtype=torch.uint8, generator=g)
    as_batch = resize_images(batch, cfg)
    assert as_batch.shape == (2, 3, 16, 16)
    # Resized as one batch or one image at a time: the same filter, though not necessarily the
    # same kernel's summation order on every CPU.
    assert torch.allclose(as_batch, resize_images(list(batch), cfg), rtol=0, atol=1e-6)
    assert float(as_batch.min()) >= 0.0 and float(as_batch.max()) <= 1.0


def test_images_at_the_model_size_and_a_teachers_input_are_taken_as_they_are():
    # A run's training split is read at the model's size and then not resized again; its
    # validation and test images must not be cropped where the training images are not.
    cfg = released("center", 0.875, "bicubic")
    at_size = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(resize_images(at_size, cfg), at_size.float() / 255.0)
    # A teacher sees the student's whole augmented batch, only resized to its own input size.
    batch = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    expected = F.interpolate(batch, size=(16, 16), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    assert torch.equal(fit_pixels(batch, cfg), expected)
