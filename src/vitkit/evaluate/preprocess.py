"""Turning uint8 images of any size and channel count into what a model takes as input."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from vitkit.data.augment import normalize as normalize_pixels
from vitkit.errors import DataError
from vitkit.models.config import ModelConfig


def _adapt_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    c = x.shape[1]
    if c == in_chans:
        return x
    if c == 1:
        return x.expand(-1, in_chans, -1, -1)
    if in_chans == 1:
        return x.mean(dim=1, keepdim=True)
    raise DataError(f"cannot feed {c}-channel images to a model with {in_chans} input channels")


def resize_images(images: torch.Tensor | Sequence[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """(N, in_chans, H, W) float pixels in [0, 1] at the model's image size.

    `images` is a uint8 (N, C, H, W) tensor or a list of uint8 (C, H, W) tensors of any sizes.
    Other sizes are resized bilinearly, or as the model's release resized its images (its
    config's interpolation, crop_pct, crop_mode); grey becomes RGB by repetition, RGB becomes
    grey by the channel mean.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise DataError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
        return _resize_batch(images, cfg)
    if not images:
        return torch.empty(0, cfg.in_chans, *cfg.image_size)
    return torch.cat([_resize_batch(img.unsqueeze(0), cfg) for img in images])


def _resize_batch(images: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise DataError(f"expected uint8 images, got {images.dtype}")
    pixels = images.float() / 255.0
    # A released model's images are resized and cropped as its release does; images already at
    # the model's size are taken as prepared (a data set read at that size, a run's training split).
    if cfg.interpolation is not None and tuple(images.shape[-2:]) != tuple(cfg.image_size):
        return resize_and_crop(_adapt_channels(pixels, cfg.in_chans), cfg)
    return fit_pixels(pixels, cfg)


def fit_pixels(pixels: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Float (N, C, H, W) pixels in [0, 1] -> the model's channel count and image size, as
    `resize_images` does for uint8 (e.g. a teacher fed the student's augmented batch, which it
    sees whole, released model or not)."""
    x = _adapt_channels(pixels, cfg.in_chans)
    if tuple(x.shape[-2:]) != tuple(cfg.image_size):
        x = F.interpolate(x, size=cfg.image_size, mode="bilinear", align_corners=False,
                          antialias=True).clamp(0.0, 1.0)
    return x


def resize_and_crop(pixels: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """timm's evaluation transform on float pixels: resize to image_size / crop_pct (floored, as
    timm and DeiT compute it), then take the central image_size crop (rounded as torchvision's
    CenterCrop). Bilinear and bicubic shrink with antialiasing, as Pillow does for timm and
    transformers."""
    h, w = cfg.image_size
    # The small epsilon keeps a size that crop_pct was computed from (a processor's crop / size)
    # whole: 384 / (384 / 450) is 449.99999999999994 in floating point.
    scaled = (math.floor(h / cfg.crop_pct + 1e-6), math.floor(w / cfg.crop_pct + 1e-6))
    height, width = pixels.shape[-2:]
    if cfg.crop_mode == "center":
        factor = max(scaled[0] / height, scaled[1] / width)
        # torchvision's Resize(int) gives the longer side int(size * long / short).
        scaled = (max(scaled[0], int(height * factor)), max(scaled[1], int(width * factor)))
    x = pixels
    if tuple(x.shape[-2:]) != scaled:
        smooth = cfg.interpolation in ("bilinear", "bicubic")
        options = dict(align_corners=False, antialias=True) if smooth else {}
        x = F.interpolate(x, size=scaled, mode=cfg.interpolation, **options).clamp(0.0, 1.0)
    top = int(round((scaled[0] - h) / 2.0))
    left = int(round((scaled[1] - w) / 2.0))
    return x[..., top:top + h, left:left + w]


def normalize(pixels: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """(x - input_mean) / input_std per channel, for pixels in [0, 1]."""
    return normalize_pixels(pixels, cfg.input_mean, cfg.input_std)


def prepare_images(images: torch.Tensor | Sequence[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """uint8 images (any size, any of 1 or 3 channels) -> the model's normalised float input."""
    return normalize(resize_images(images, cfg), cfg)
