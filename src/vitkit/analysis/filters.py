"""Principal components of the patch-embedding filters (paper Fig. 7, left)."""

from __future__ import annotations

import torch

from vitkit.errors import ConfigError


def filter_components(weight: torch.Tensor, num_components: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Top principal components of conv filters `weight` (D, C, P, P).

    Each of the D filters is one sample of C*P*P values; they are centred on the mean filter
    and decomposed by SVD. Returns (components (k, C, P, P), explained variance ratio (k,)),
    k = min(num_components, D, C*P*P), strongest first, each of unit norm and signed so that
    its entry of largest magnitude is positive (PCA fixes a component only up to sign).
    """
    d, c, p, q = weight.shape
    flat = weight.detach().double().reshape(d, c * p * q)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vt = torch.linalg.svd(flat, full_matrices=False)
    k = min(num_components, vt.shape[0])
    comps = vt[:k]
    peak = comps.gather(1, comps.abs().argmax(dim=1, keepdim=True))
    comps = comps * torch.sign(peak)
    variance = s**2
    ratio = variance[:k] / variance.sum().clamp_min(1e-30)
    return comps.reshape(k, c, p, q).float(), ratio.float()


def patch_embedding_components(model, num_components: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """`filter_components` of a model's patch projection. Hybrids have none worth drawing
    (their embedding is a 1 x 1 convolution on a CNN feature map): ConfigError."""
    cfg = model.config
    if cfg.stem != "patch":
        raise ConfigError("a hybrid model embeds 1 x 1 patches of a CNN feature map: no pixel filters to show")
    return filter_components(model.patch_embed.proj.weight, num_components)


def filters_for_display(components: torch.Tensor) -> torch.Tensor:
    """(k, H, W, 3) or (k, H, W) images in [0, 1]: each component min-max scaled on its own
    (all channels together, so colours keep their balance). Grey models give grey images;
    other channel counts than 1 and 3 are shown as their channel mean."""
    k, c = components.shape[:2]
    x = components if c in (1, 3) else components.mean(dim=1, keepdim=True)
    lo = x.reshape(k, -1).min(dim=1).values.view(k, 1, 1, 1)
    hi = x.reshape(k, -1).max(dim=1).values.view(k, 1, 1, 1)
    x = (x - lo) / (hi - lo).clamp_min(1e-12)
    return x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)
