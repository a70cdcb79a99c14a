"""Masked patch prediction: the paper's self-supervised objective (section 4.6, appendix B.1.2).

Half of the patch embeddings (each independently, with chance 0.5) are corrupted: 80% of those
become a learnable [mask] embedding, 10% the embedding of a random other patch, 10% stay as
they are. The random patch is another patch of the same image, so that what an image's patches
become depends on that image alone, whatever else shares its batch or its process (the paper
does not say where the random patch comes from). A linear head on the encoder output at every corrupted position
predicts that patch's 3-bit mean colour: the mean of each channel over the patch's pixels,
quantised to 8 levels, gives 8^3 = 512 classes for RGB.

Grey images: the mean grey level is quantised the same way, giving 8 classes. (A grey image
fed as RGB has R = G = B, so the paper's 512-way target would only ever take the 8 values on
the grey diagonal; 8 classes is that same target without 504 classes that never occur.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.device import autocast
from vitkit.evaluate.preprocess import normalize
from vitkit.models.vit import VisionTransformer
from vitkit.objectives.base import Draws, Objective

BITS = 3
CORRUPT_RATE = 0.5
# Of the corrupted patches: the share replaced by [mask], then by a random other patch (the
# rest are left unchanged).
MASK_SHARE = 0.8
RANDOM_SHARE = 0.1

# Corruption kinds per patch, as returned by `corrupt_patches`.
KEPT, MASKED, RANDOM, UNCHANGED = 0, 1, 2, 3


def num_colour_classes(channels: int, bits: int = BITS) -> int:
    return (2**bits) ** channels


def mean_colour_targets(pixels: torch.Tensor, patch: int, bits: int = BITS) -> torch.Tensor:
    """(B, N) class of each P x P patch (raster order) of pixels (B, C, H, W) in [0, 1]: each
    channel's mean quantised to `bits` bits, combined with the first channel most significant
    (for RGB: r * 64 + g * 8 + b)."""
    levels = 2**bits
    means = F.avg_pool2d(pixels.float(), patch)  # (B, C, gh, gw)
    quantised = (means * levels).floor().clamp(0, levels - 1).long()
    classes = torch.zeros_like(quantised[:, 0])
    for c in range(pixels.shape[1]):
        classes = classes * levels + quantised[:, c]
    return classes.flatten(1)


def corruption_plan(draws: torch.Tensor, rate: float = CORRUPT_RATE, mask_share: float = MASK_SHARE,
                    random_share: float = RANDOM_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """From (B, 3, N) uniform draws: the kind of each patch (B, N) (KEPT for untouched patches,
    MASKED / RANDOM / UNCHANGED for the corrupted ones) and, for RANDOM ones, the index (B, N)
    of the other patch of the same image that replaces it."""
    corrupted, how, pick = draws.unbind(1)
    n = draws.shape[-1]
    kind = torch.full(corrupted.shape, KEPT, dtype=torch.long, device=draws.device)
    kind = torch.where(corrupted < rate, UNCHANGED, kind)
    kind = torch.where((corrupted < rate) & (how < mask_share + random_share), RANDOM, kind)
    kind = torch.where((corrupted < rate) & (how < mask_share), MASKED, kind)
    # A uniformly drawn other patch: draw from the n - 1 others and skip over oneself.
    own = torch.arange(n, device=draws.device)
    other = (pick * max(n - 1, 1)).long().clamp(max=max(n - 2, 0))
    other = other + (other >= own).long() if n > 1 else own.expand_as(other)
    return kind, other


def apply_corruption(patches: torch.Tensor, kind: torch.Tensor, other: torch.Tensor,
                     mask_token: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patch embeddings with the plan of `corruption_plan` applied."""
    d = patches.shape[-1]
    replaced = torch.where((kind == RANDOM).unsqueeze(-1), patches.gather(1, other.unsqueeze(-1).expand(-1, -1, d)),
                           patches)
    return torch.where((kind == MASKED).unsqueeze(-1), mask_token.reshape(1, 1, d).to(patches), replaced)


def corrupt_patches(patches: torch.Tensor, mask_token: torch.Tensor, rate: float = CORRUPT_RATE,
                    mask_share: float = MASK_SHARE, random_share: float = RANDOM_SHARE,
                    draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt (B, N, D) patch embeddings. Returns (corrupted embeddings, kind (B, N)).
    `draws` (B, 3, N) uniform in [0, 1) decide it (default: torch's global generator)."""
    b, n, _ = patches.shape
    if draws is None:
        draws = torch.rand(b, 3, n, device=patches.device)
    kind, other = corruption_plan(draws, rate, mask_share, random_share)
    return apply_corruption(patches, kind, other, mask_token), kind


class MaskedPatchPrediction(Objective):
    """The objective's own parameters ([mask] embedding, colour head) and its loss."""

    uses_labels = False
    accuracy = "colour_acc"
    monitor = "val_loss"
    higher_is_better = False

    def __init__(self, model: VisionTransformer, device: torch.device | str = "cpu", precision: str = "fp32"):
        super().__init__()
        cfg = model.config
        self.patch = cfg.stem_stride
        self.device, self.precision = torch.device(device), precision
        self.mask_token = nn.Parameter(torch.zeros(cfg.width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(cfg.width, num_colour_classes(cfg.in_chans))

    def _colours(self, model: VisionTransformer, pixels: torch.Tensor, draws: Draws
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Logits and target colours of the corrupted patches, and the patches per image:
        `pixels` in [0, 1] give the targets and, normalised, the model's input."""
        targets = mean_colour_targets(pixels, self.patch)
        kind, other = corruption_plan(draws.uniform(3, targets.shape[1]))
        with autocast(self.device, self.precision):
            out = model.forward_intermediates(
                normalize(pixels, model.config),
                patch_hook=lambda patches: apply_corruption(patches, kind, other, self.mask_token))
            tokens = out["encoder"][:, model.config.num_prefix_tokens:]
            chosen = kind != KEPT
            logits = self.head(tokens[chosen]).float()
        return logits, targets[chosen], targets.shape[1]

    def forward(self, model, pixels, targets, draws: Draws) -> dict[str, torch.Tensor]:
        """The cross-entropy summed over the corrupted patches and divided by the number
        expected (CORRUPT_RATE of the batch's patches), not by the number drawn: the batch's loss
        is then the mean over its images of a quantity of each image alone, so a batch split over
        processes, each weighted by its share of the images, gives the gradient of the whole."""
        logits, wanted, patches = self._colours(model, pixels, draws)
        expected = max(pixels.shape[0], 1) * patches * CORRUPT_RATE
        loss = F.cross_entropy(logits, wanted, reduction="sum") / expected
        return {"loss": loss, "correct": (logits.argmax(-1) == wanted).sum(),
                "count": torch.tensor(wanted.numel(), device=pixels.device)}

    @torch.no_grad()
    def evaluate(self, model, pixels, labels, draws: Draws) -> dict[str, torch.Tensor]:
        logits, wanted, _ = self._colours(model, pixels, draws)
        return {"loss": F.cross_entropy(logits, wanted, reduction="sum"),
                "correct": (logits.argmax(-1) == wanted).sum(),
                "count": torch.tensor(wanted.numel(), device=pixels.device)}
