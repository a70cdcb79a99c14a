"""Masked autoencoder (He et al. 2022), the successor of masked patch prediction users expect.

The encoder (the ViT being pre-trained) sees only a random 25% of the patch tokens, with their
position embeddings; a light decoder gets the encoded visible tokens plus a learnable mask
token at every hidden position, adds fixed 2-D sine-cosine position embeddings, runs a few
transformer blocks and predicts each patch's pixels. The loss is the mean squared error on
the hidden patches only, against pixels normalised per patch (mean 0, variance 1; MAE's
"norm_pix_loss"), or the model's input pixels as they are with `norm_pix=False`.
"""

from __future__ import annotations

import torch
from torch import nn

from vitkit.device import autocast
from vitkit.errors import ConfigError
from vitkit.evaluate.preprocess import normalize
from vitkit.models.config import ModelConfig
from vitkit.models.posemb import sincos2d
from vitkit.models.vit import Block, VisionTransformer
from vitkit.objectives.base import Draws, Objective

MASK_RATIO = 0.75


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C): patches in raster order, each flattened as (P, P, C)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """The inverse of `patchify`."""
    b = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


def random_keep(batch: int, num_patches: int, mask_ratio: float, device,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the indices of the visible patches (B, K) and a (B, N) bool mask of the hidden
    ones, for a random subset of round((1 - mask_ratio) * N) >= 1 visible patches: the patches
    of the lowest `noise` (B, N) (default: uniform draws of torch's global generator)."""
    keep_count = max(1, round((1.0 - mask_ratio) * num_patches))
    if noise is None:
        noise = torch.rand(batch, num_patches, device=device)
    order = noise.argsort(dim=1)
    keep = order[:, :keep_count].sort(dim=1).values
    hidden = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    hidden.scatter_(1, keep, False)
    return keep, hidden


class MaskedAutoencoder(Objective):
    """The decoder and the loss; the encoder is the VisionTransformer passed to `forward`."""

    uses_labels = False
    accuracy = ""
    monitor = "val_loss"
    higher_is_better = False

    def __init__(self, model: VisionTransformer, decoder_width: int = 64, decoder_depth: int = 1,
                 decoder_heads: int = 2, mask_ratio: float = MASK_RATIO, norm_pix: bool = True,
                 device: torch.device | str = "cpu", precision: str = "fp32"):
        super().__init__()
        self.device, self.precision = torch.device(device), precision
        cfg = model.config
        if cfg.posemb == "relative" or cfg.posemb_where != "stem":
            raise ConfigError("MAE pre-training needs position embeddings added once at the stem "
                              f"(this model has posemb={cfg.posemb!r} at {cfg.posemb_where!r})")
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"mask ratio must be in (0, 1), got {mask_ratio}")
        self.patch = cfg.stem_stride
        self.grid = cfg.grid_size
        self.channels = cfg.in_chans
        self.mask_ratio = mask_ratio
        self.norm_pix = norm_pix
        block_cfg = ModelConfig(image_size=cfg.image_size, patch_size=cfg.stem_stride, in_chans=cfg.in_chans,
                                width=decoder_width, depth=decoder_depth, num_heads=decoder_heads,
                                mlp_dim=2 * decoder_width, posemb="none", act=cfg.act, norm_eps=cfg.norm_eps)
        self.embed = nn.Linear(cfg.width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sincos2d(self.grid, decoder_width), persistent=False)
        self.blocks = nn.ModuleList(Block(block_cfg, self.grid, 0.0) for _ in range(decoder_depth))
        self.norm = nn.LayerNorm(decoder_width, eps=cfg.norm_eps)
        self.predict = nn.Linear(decoder_width, self.patch * self.patch * self.channels)

    def targets(self, normalized: torch.Tensor) -> torch.Tensor:
        target = patchify(normalized.float(), self.patch)
        if self.norm_pix and target.numel():
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True, unbiased=False)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def reconstruct(self, model: VisionTransformer, normalized: torch.Tensor,
                    keep: torch.Tensor) -> torch.Tensor:
        """(B, N, P*P*C) predicted patches, from the visible patches `keep` (B, K)."""
        out = model.forward_intermediates(normalized, keep=keep)
        visible = self.embed(out["encoder"][:, model.config.num_prefix_tokens:])
        b, n = visible.shape[0], self.grid[0] * self.grid[1]
        tokens = self.mask_token.expand(b, n, -1).to(visible.dtype).clone()
        tokens.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, visible.shape[-1]), visible)
        x = tokens + self.pos_embed.to(tokens.dtype)
        for block in self.blocks:
            x, _ = block(x, self.grid)
        return self.predict(self.norm(x))

    def _error(self, model: VisionTransformer, pixels: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error per hidden patch (B, N) (zero at the visible ones) and the hidden mask."""
        normalized = normalize(pixels, model.config)
        n = self.grid[0] * self.grid[1]
        keep, hidden = random_keep(normalized.shape[0], n, self.mask_ratio, normalized.device, draws.uniform(n))
        with autocast(self.device, self.precision):
            predicted = self.reconstruct(model, normalized, keep).float()
        error = ((predicted - self.targets(normalized)) ** 2).mean(dim=-1)
        return error * hidden, hidden

    def forward(self, model, pixels, targets, draws: Draws) -> dict[str, torch.Tensor]:
        """The mean squared error over the hidden patches. Every image hides as many, so this is
        the mean over the images of each one's own error, and a batch split over processes gives
        the gradient of the whole; an empty part gives zero."""
        error, hidden = self._error(model, pixels, draws)
        per_image = hidden.shape[1] - max(1, round((1.0 - self.mask_ratio) * hidden.shape[1]))
        return {"loss": error.sum() / (max(hidden.shape[0], 1) * per_image)}

    @torch.no_grad()
    def evaluate(self, model, pixels, labels, draws: Draws) -> dict[str, torch.Tensor]:
        error, hidden = self._error(model, pixels, draws)
        return {"loss": error.sum(), "count": hidden.sum()}
