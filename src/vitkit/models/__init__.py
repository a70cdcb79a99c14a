"""Models: the ViT family (one class, variants as config values), its presets and cost."""

from __future__ import annotations

import torch

from vitkit.models.config import ModelConfig
from vitkit.models.presets import preset_config, preset_names
from vitkit.models.vit import VisionTransformer


def create_model(name: str = "custom", **overrides) -> VisionTransformer:
    """A new, randomly initialised model: a preset name with keyword overrides, or "custom"
    with every option given (unset options take ModelConfig's defaults)."""
    if name == "custom":
        cfg = ModelConfig.from_dict(overrides)
    else:
        cfg = preset_config(name, **overrides)
    return VisionTransformer(cfg)


def list_models() -> list[str]:
    return preset_names()


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of a model (on any device, the meta device included)."""
    return sum(p.numel() for p in model.parameters())


def parameters_of(cfg: ModelConfig) -> int:
    """Parameters of the model a config builds, built on the meta device (no memory, no
    initialisation cost)."""
    with torch.device("meta"):
        return count_parameters(VisionTransformer(cfg))


def forward_flops(cfg: ModelConfig) -> int:
    """FLOPs (2 per multiply-add) of one forward pass on one image, counting matrix products,
    convolutions and attention; norms and activations are left out as negligible."""
    gh, gw = cfg.grid_size
    n = gh * gw
    t = n + cfg.num_prefix_tokens
    d, m = cfg.width, cfg.mlp_dim
    macs = 0
    chans = cfg.in_chans
    if cfg.stem == "resnet":
        macs += _resnet_macs(cfg)
        chans = cfg.resnet_width * 2 ** (len(cfg.resnet_layers) - 1) * 4
    macs += n * chans * cfg.patch_size**2 * d
    per_block = t * (4 * d * d + 2 * d * m) + 2 * t * t * d
    if cfg.posemb == "relative":
        per_block += t * t * d
    macs += cfg.depth * per_block
    features = cfg.representation_size or d
    if cfg.representation_size:
        macs += d * features
    macs += features * cfg.num_classes * (2 if cfg.distill_token else 1)
    return 2 * macs


def _resnet_macs(cfg: ModelConfig) -> int:
    h, w = cfg.image_size
    h, w = -(-h // 2), -(-w // 2)
    width = cfg.resnet_width
    macs = h * w * 49 * cfg.in_chans * width
    h, w = -(-h // 2), -(-w // 2)
    chans = width
    for i, units in enumerate(cfg.resnet_layers):
        f = width * 2**i
        for u in range(units):
            stride = 2 if (u == 0 and i > 0) else 1
            macs += h * w * chans * f
            h, w = -(-h // stride), -(-w // stride)
            macs += h * w * 9 * f * f + h * w * f * 4 * f
            if chans != 4 * f or stride != 1:
                macs += h * w * chans * 4 * f
            chans = 4 * f
    return macs


__all__ = ["ModelConfig", "VisionTransformer", "create_model", "list_models",
           "count_parameters", "forward_flops", "parameters_of"]
