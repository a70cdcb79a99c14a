"""Named model presets: one size table (paper Table 1 plus DeiT's Ti and S) and the patch sizes."""

from __future__ import annotations

from vitkit.errors import ConfigError
from vitkit.models.config import ModelConfig

# name: (depth, width, mlp_dim, num_heads)
SIZES = {
    "Ti": (12, 192, 768, 3),
    "S": (12, 384, 1536, 6),
    "B": (12, 768, 3072, 12),
    "L": (24, 1024, 4096, 16),
    "H": (32, 1280, 5120, 16),
}

_PLAIN = {
    "vit_ti16": ("Ti", 16),
    "vit_s16": ("S", 16),
    "vit_s32": ("S", 32),
    "vit_b16": ("B", 16),
    "vit_b32": ("B", 32),
    "vit_b8": ("B", 8),
    "vit_l16": ("L", 16),
    "vit_l32": ("L", 32),
    "vit_h14": ("H", 14),
}

# Hybrids: BiT ResNet stem, then 1x1 patches on its feature map. R50+ViT-B/16 drops stage 4
# and gives stage 3 nine units (total stride 16); R26+ViT-S/32 keeps four stages of two.
_HYBRID = {
    "vit_r50_b16": ("B", (3, 4, 9)),
    "vit_r26_s32": ("S", (2, 2, 2, 2)),
}


def size_options(size: str) -> dict:
    """The transformer shape of a size name ("Ti", "S", "B", "L", "H")."""
    if size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    depth, width, mlp_dim, heads = SIZES[size]
    return dict(depth=depth, width=width, mlp_dim=mlp_dim, num_heads=heads)


def preset_config(name: str, **overrides) -> ModelConfig:
    """The config of a named preset with keyword overrides applied."""
    if name in _PLAIN:
        size, patch = _PLAIN[name]
        base = dict(size_options(size), patch_size=patch)
    elif name in _HYBRID:
        size, layers = _HYBRID[name]
        base = dict(size_options(size), patch_size=1, stem="resnet", resnet_layers=layers)
    else:
        raise ConfigError(f"unknown model {name!r}; `vitkit models` lists the presets")
    base.update(name=name)
    base.update(overrides)
    return ModelConfig.from_dict(base)


def preset_names() -> list[str]:
    return list(_PLAIN) + list(_HYBRID)
