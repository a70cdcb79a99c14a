"""Masked patch prediction: the paper's self-supervised objective (section 4.6, appendix B.1.2).

Half of the patch embeddings (each independently, with chance 0.5) are corrupted: 80% of those
become a learnable [mask] embedding, 10% the embedding of a random other patch of the batch,
10% stay as they are. A linear head on the encoder output at every corrupted position
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

from vitkit.models.vit import VisionTransformer

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


def corrupt_patches(patches: torch.Tensor, mask_token: torch.Tensor, rate: float = CORRUPT_RATE,
                    mask_share: float = MASK_SHARE, random_share: float = RANDOM_SHARE
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt (B, N, D) patch embeddings. Returns (corrupted embeddings, kind (B, N)) with kind
    KEPT for untouched patches and MASKED / RANDOM / UNCHANGED for the corrupted ones."""
    b, n, d = patches.shape
    device = patches.device
    corrupted = torch.rand(b, n, device=device) < rate
    draw = torch.rand(b, n, device=device)
    kind = torch.full((b, n), KEPT, dtype=torch.long, device=device)
    kind[corrupted & (draw < mask_share)] = MASKED
    kind[corrupted & (draw >= mask_share) & (draw < mask_share + random_share)] = RANDOM
    kind[corrupted & (draw >= mask_share + random_share)] = UNCHANGED

    flat = patches.reshape(b * n, d)
    # A uniformly drawn other patch of the batch: draw from b*n - 1 and skip over oneself.
    own = torch.arange(b * n, device=device)
    other = torch.randint(0, max(b * n - 1, 1), (b * n,), device=device)
    other = other + (other >= own).long() if b * n > 1 else own
    replaced = torch.where((kind == RANDOM).reshape(-1, 1), flat[other], flat)
    replaced = torch.where((kind == MASKED).reshape(-1, 1), mask_token.reshape(1, d).to(flat), replaced)
    return replaced.reshape(b, n, d), kind


class MaskedPatchPrediction(nn.Module):
    """The objective's own parameters ([mask] embedding, colour head) and its loss."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        cfg = model.config
        self.patch = cfg.stem_stride
        self.mask_token = nn.Parameter(torch.zeros(cfg.width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(cfg.width, num_colour_classes(cfg.in_chans))

    def forward(self, model: VisionTransformer, pixels: torch.Tensor, normalized: torch.Tensor) -> dict:
        """Loss and accuracy of the colour prediction on one batch: `pixels` in [0, 1] give the
        targets, `normalized` is the model's input."""
        targets = mean_colour_targets(pixels, self.patch)
        kinds = {}

        def hook(patches):
            corrupted, kinds["kind"] = corrupt_patches(patches, self.mask_token)
            return corrupted

        out = model.forward_intermediates(normalized, patch_hook=hook)
        kind = kinds["kind"]
        tokens = out["encoder"][:, model.config.num_prefix_tokens:]
        chosen = kind != KEPT
        logits = self.head(tokens[chosen]).float()
        wanted = targets[chosen]
        if wanted.numel() == 0:
            loss = logits.sum() * 0.0
        else:
            loss = F.cross_entropy(logits, wanted)
        return {"loss": loss, "correct": (logits.argmax(-1) == wanted).sum(), "count": wanted.numel()}
