"""Batched augmentation on the device where the batch lives, for float images in [0, 1].

Order per batch: affine -> crop -> flip -> RandAugment -> random erasing -> Mixup/CutMix. Every random
number is drawn on the CPU from torch's global generator (kornia does the same), so
`torch.manual_seed` fixes the result, and a GPU batch gets the same choices as a CPU one.

Crops, flip, erasing and mixing are a few tensor ops each: kornia's versions of the crops,
flip and erasing cost several times more per batch of small images, which is much of a
training step on two CPU cores. RandAugment (fifteen affine and colour operations) is kornia's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from vitkit.errors import ConfigError

CROP_KINDS = ("none", "random", "resized")
# Random erasing as in Zhong et al. (2020): erased area 2-33% of the image, aspect 0.3-3.3.
_ERASE_AREA = (0.02, 1 / 3)
_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
# Random resized crops as in Inception / torchvision: aspect ratio 3/4 to 4/3.
_CROP_LOG_ASPECT = (math.log(3 / 4), math.log(4 / 3))
# When both Mixup and CutMix are on, each batch uses one of them, CutMix with this chance (DeiT).
_CUTMIX_SHARE = 0.5


@dataclass
class AugmentConfig:
    """What to do to each training batch; every option off is the identity."""

    rotate: float = 0.0  # random rotation up to this many degrees either way; 0 is off
    scale: float = 0.0  # random zoom by a factor in [1 - scale, 1 + scale]
    translate: float = 0.0  # random shift up to this fraction of the side, sub-pixel (bilinear)
    # Smooth random warp (elastic distortion, Simard et al. 2003): a displacement drawn on a 4x4
    # grid of control points, standard deviation this fraction of the side, interpolated
    # bicubically over the image; 0 is off.
    elastic: float = 0.0
    crop: str = "none"  # "none", "random" (pad, then crop back at a random offset), "resized"
    crop_padding: int = 4
    resized_scale: tuple[float, float] = (0.25, 1.0)  # area fraction range of a resized crop
    flip: bool = False
    randaugment: int = 0  # number of RandAugment operations per batch; 0 is off
    randaugment_magnitude: int = 9  # 1..29
    mixup: float = 0.0  # Beta(alpha, alpha) of the mixing weight; 0 is off
    cutmix: float = 0.0  # the same for CutMix
    mix_prob: float = 1.0  # chance that a batch is mixed at all
    erasing: float = 0.0  # chance per image of erasing a random rectangle
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        self.resized_scale = tuple(float(s) for s in self.resized_scale)
        if self.crop not in CROP_KINDS:
            raise ConfigError(f"crop must be one of {', '.join(CROP_KINDS)}, not {self.crop!r}")
        if self.rotate < 0 or not 0 <= self.scale < 1 or not 0 <= self.translate < 0.5:
            raise ConfigError(f"rotate must be >= 0, scale in [0, 1) and translate in [0, 0.5), not "
                              f"{self.rotate}, {self.scale}, {self.translate}")
        if not 0 <= self.elastic < 0.5:
            raise ConfigError(f"elastic (displacement as a fraction of the side) must be in [0, 0.5), "
                              f"not {self.elastic}")
        if self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be 0 or more, not {self.crop_padding}")
        low, high = self.resized_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"resized_scale must satisfy 0 < low <= high <= 1, not {self.resized_scale}")
        if self.randaugment < 0 or not 0 < self.randaugment_magnitude < 30:
            raise ConfigError("randaugment must be 0 or more and randaugment_magnitude in 1..29, not "
                              f"{self.randaugment} and {self.randaugment_magnitude}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"mixup and cutmix alphas must be 0 (off) or positive, "
                              f"not {self.mixup}, {self.cutmix}")
        for name in ("mix_prob", "erasing", "label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], not {getattr(self, name)}")


def default_augment(image_size: int | Sequence[int], channels: int, num_train: int) -> AugmentConfig:
    """Defaults from the data's size, colour and count.

    - Grey images are taken to be digits, letters or scans: not mirror-symmetric, so no flip,
      and RandAugment's colour operations mean little on them. Their writing varies in slant,
      size and position, so a small random affine map (rotation 15 degrees, zoom 15%, sub-pixel
      shift 5% of the side) plus Mixup 0.8. On the bundled digits this beat whole-pixel shifts
      (which move an 8x8 digit by 12%) and each of affine and Mixup alone (docs/training.md).
    - Colour images are taken to be natural photos: mirror-symmetric, so flip; small ones get
      the CIFAR crop (pad 1/8 of the side, crop back), larger ones a random resized crop.
    - With 10,000 or more colour training images, DeiT's recipe for training ViTs from scratch
      on mid-size data: RandAugment 2 ops at magnitude 9, Mixup 0.8, CutMix 1.0, erasing 0.25.
      Below that, runs are short and these strong regularisers mostly slow learning.
    - Label smoothing 0.1 throughout (DeiT); it costs nothing.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    side = min(height, width)
    padding = max(1, side // 8)
    if channels == 1:
        return AugmentConfig(rotate=15.0, scale=0.15, translate=0.05, mixup=0.8, label_smoothing=0.1)
    config = AugmentConfig(crop="random" if side <= 64 else "resized", crop_padding=padding, flip=True,
                           label_smoothing=0.1)
    if num_train >= 10_000:
        config.randaugment, config.randaugment_magnitude = 2, 9
        config.mixup, config.cutmix, config.erasing = 0.8, 1.0, 0.25
    return config


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1, the range Augmenter works in."""
    return images.float().div_(255)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, x in [0, 1]: uint8 images are divided by 255 first,
    float images are taken to be in [0, 1] already (Augmenter's output)."""
    x = to_unit_float(images) if images.dtype == torch.uint8 else images
    channels = x.shape[1]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ConfigError(f"mean and std need 1 or {channels} values, got {len(mean)} and {len(std)}")
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot rows with `smoothing` of the mass spread evenly over all classes."""
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1 - smoothing) + smoothing / num_classes


class Augmenter:
    """`augmenter(images, labels)` -> (augmented images, soft targets (B, num_classes))."""

    def __init__(self, config: AugmentConfig, num_classes: int, image_size: int | Sequence[int],
                 channels: int) -> None:
        self.config = config
        self.num_classes = num_classes
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.channels = channels
        self._randaugment = self._make_randaugment() if config.randaugment else None

    def _make_randaugment(self) -> torch.nn.Module:
        # Imported here: kornia takes most of a second to import, and only RandAugment needs it.
        from kornia.augmentation.auto import RandAugment
        from kornia.augmentation.auto.rand_augment.rand_augment import default_policy

        # kornia draws the operations once per batch (magnitude signs per image), not per image
        # as in the paper; over many steps the mix is the same. Saturation ("color") needs
        # three channels, so grey images draw from the other 14 operations.
        policy = [op for op in default_policy if self.channels == 3 or op[0][0] != "color"]
        if self.config.randaugment > len(policy):
            raise ConfigError(f"randaugment can apply at most {len(policy)} operations, "
                              f"not {self.config.randaugment}")
        return RandAugment(n=self.config.randaugment, m=self.config.randaugment_magnitude, policy=policy)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`images` (B, C, H, W) float in [0, 1] on any device; `generator` (a CPU generator)
        replaces torch's global one for this call and leaves the global state untouched."""
        if generator is None:
            return self._augment(images, labels)
        seed = int(torch.randint(2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self._augment(images, labels)

    def _augment(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = (self.channels, *self.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ConfigError(f"augmenter built for images of {'x'.join(map(str, expected))} got a batch of "
                              f"{'x'.join(map(str, images.shape[1:]))}; resize the data to the model's input")
        config = self.config
        targets = soft_targets(labels, self.num_classes, config.label_smoothing).to(images.device)
        if images.shape[0] == 0:
            # Nothing to transform: a distributed rank's empty part of a short last batch.
            return images, targets
        if config.rotate or config.scale or config.translate or config.elastic:
            images = random_affine(images, config.rotate, config.scale, config.translate, config.elastic)
        if config.crop == "random" and config.crop_padding:
            images = random_crop(images, config.crop_padding)
        elif config.crop == "resized":
            images = random_resized_crop(images, config.resized_scale)
        if config.flip:
            images = random_flip(images)
        if self._randaugment is not None:
            images = self._randaugment(images)
        if config.erasing:
            images = random_erasing(images, config.erasing)
        if (config.mixup or config.cutmix) and torch.rand(()) < config.mix_prob:
            use_cutmix = config.cutmix > 0 and (config.mixup == 0 or torch.rand(()) < _CUTMIX_SHARE)
            mix = cutmix if use_cutmix else mixup
            images, targets = mix(images, targets, config.cutmix if use_cutmix else config.mixup)
        return images, targets


def random_affine(images: torch.Tensor, degrees: float, scale: float, translate: float,
                  elastic: float = 0.0) -> torch.Tensor:
    """Rotate, zoom, shift and (with `elastic`) smoothly warp each image by its own random
    amounts, in one resampling (bilinear, zeros outside)."""
    batch = images.shape[0]
    angle = (torch.rand(batch) * 2 - 1) * math.radians(degrees)
    zoom = 1 + (torch.rand(batch) * 2 - 1) * scale
    # affine_grid works in [-1, 1] coordinates: a shift of `translate` of the side is 2 * translate.
    shift = (torch.rand(batch, 2) * 2 - 1) * 2 * translate
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], dim=1),
                         torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1)
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if elastic:
        # Grid coordinates span 2 per side, so a displacement of `elastic` of the side is 2 * elastic.
        control = torch.randn(batch, 2, 4, 4) * (2 * elastic)
        field = F.interpolate(control.to(device=images.device, dtype=images.dtype),
                              size=images.shape[-2:], mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad every side by `padding`, then crop each image back at its own random offset."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2)).to(images.device)
    rows = offsets[:, :1] + torch.arange(height, device=images.device)
    cols = offsets[:, 1:] + torch.arange(width, device=images.device)
    # One gather over flattened pixels: several times faster than indexing rows and columns.
    flat = (rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]).view(batch, 1, -1)
    return padded.flatten(2).gather(2, flat.expand(-1, channels, -1)).view(batch, channels, height, width)


def random_resized_crop(images: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Crop each image to a random box (area fraction in `scale`, aspect 3/4..4/3) and stretch
    it back to full size, bilinearly. A box that would not fit is clipped to the image instead
    of being redrawn, which slightly favours large crops."""
    batch, _, height, width = images.shape
    area = torch.empty(batch).uniform_(*scale)
    aspect = torch.empty(batch).uniform_(*_CROP_LOG_ASPECT).exp()
    box_w = (area * aspect).sqrt().clamp(max=1)  # as fractions of the width and height
    box_h = (area / aspect).sqrt().clamp(max=1)
    centre_x = (torch.rand(batch) * (1 - box_w) + box_w / 2) * 2 - 1
    centre_y = (torch.rand(batch) * (1 - box_h) + box_h / 2) * 2 - 1
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = box_w, centre_x, box_h, centre_y
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with chance 1/2."""
    flip = (torch.rand(images.shape[0]) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def _boxes(batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Random erasing rectangles (top, left, box height, box width) fitted inside the image."""
    area = torch.empty(batch).uniform_(*_ERASE_AREA) * height * width
    aspect = torch.empty(batch).uniform_(*_ERASE_LOG_ASPECT).exp()
    box_h = (area * aspect).sqrt().round().clamp(1, height).long()
    box_w = (area / aspect).sqrt().round().clamp(1, width).long()
    top = (torch.rand(batch) * (height - box_h + 1)).long()
    left = (torch.rand(batch) * (width - box_w + 1)).long()
    return top, left, box_h, box_w


def random_erasing(images: torch.Tensor, prob: float) -> torch.Tensor:
    """With chance `prob` per image, fill one random rectangle with uniform noise (the
    random-values variant of Zhong et al., their best)."""
    batch, channels, height, width = images.shape
    chosen = torch.rand(batch) < prob
    if not chosen.any():
        return images
    top, left, box_h, box_w = (t[:, None] for t in _boxes(batch, height, width))
    rows, cols = torch.arange(height), torch.arange(width)
    inside_rows = (rows >= top) & (rows < top + box_h) & chosen[:, None]
    inside_cols = (cols >= left) & (cols < left + box_w)
    inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    # Noise only for the erased pixels: drawing it for whole images costs more than the rest.
    noise = torch.rand(int((box_h * box_w)[chosen].sum()) * channels)
    return images.masked_scatter(inside.to(images.device), noise.to(images.device, images.dtype))


def _mixing_weight(alpha: float) -> float:
    return float(torch.distributions.Beta(alpha, alpha).sample())


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image and target with those of its partner in the reversed batch."""
    weight = _mixing_weight(alpha)
    return images.flip(0).lerp_(images, weight), targets.flip(0).lerp_(targets, weight)


def cutmix(images: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste one rectangle from each image's partner in the reversed batch; the partner's share
    of the target is the pasted share of the pixels (after clipping at the border)."""
    _, _, height, width = images.shape
    cut = math.sqrt(1 - _mixing_weight(alpha))
    centre_y, centre_x = int(torch.randint(height, ())), int(torch.randint(width, ()))
    half_h, half_w = round(height * cut) // 2, round(width * cut) // 2
    top, bottom = max(centre_y - half_h, 0), min(centre_y + half_h, height)
    left, right = max(centre_x - half_w, 0), min(centre_x + half_w, width)
    pasted = (bottom - top) * (right - left) / (height * width)
    images = images.clone()
    images[:, :, top:bottom, left:right] = images[:, :, top:bottom, left:right].flip(0)
    return images, (1 - pasted) * targets + pasted * targets.flip(0)
