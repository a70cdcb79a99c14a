"""Change a trained model's input resolution or patch size: learned position embeddings (and
relative tables) are interpolated over the patch grid, the class and distillation slots kept
apart; a new patch size gets FlexiViT's pseudo-inverse resize of the patch kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitkit.errors import ConfigError
from vitkit.fields import as_pair
from vitkit.models.posemb import resample_grid, resample_line
from vitkit.models.vit import VisionTransformer


def resize_state(state: dict[str, torch.Tensor], old_grid: tuple[int, int],
                 new_grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Resample every grid-shaped embedding of a vitkit state dict from `old_grid` to `new_grid`."""
    out = dict(state)
    n_old = old_grid[0] * old_grid[1]
    for key, value in state.items():
        if key.endswith("pos_embed.weight") or ("pos_embeds." in key and key.endswith(".weight")):
            slots = value.shape[1] - n_old
            out[key] = torch.cat([value[:, :slots], resample_grid(value[:, slots:], old_grid, new_grid)], dim=1)
        elif key.endswith(".row"):
            out[key] = resample_line(value, new_grid[0])
        elif key.endswith(".col"):
            out[key] = resample_line(value, new_grid[1])
        elif key.endswith("relative.table"):
            old = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
            new = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
            out[key] = torch.cat([resample_grid(value[:-1], old, new), value[-1:]], dim=0)
    return out


def resize_image_size(model: VisionTransformer, image_size) -> VisionTransformer:
    """A copy of `model` for inputs of `image_size` (int or (h, w)), same patch size."""
    image_size = as_pair(image_size)
    cfg = model.config
    if image_size == cfg.image_size:
        return model
    new_cfg = cfg.replace(image_size=image_size)
    state = resize_state(model.state_dict(), cfg.grid_size, new_cfg.grid_size)
    ref = next(model.parameters())
    resized = VisionTransformer(new_cfg).to(ref.device, ref.dtype)
    resized.load_state_dict(state)
    return resized.train(model.training)


def patch_resize_matrix(old: int, new: int) -> torch.Tensor:
    """B, (new^2, old^2): the bilinear resize (anti-aliased when shrinking) of a flattened
    old x old patch to new x new, built column by column from the basis patches."""
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bilinear", align_corners=False, antialias=True)
    return resized.reshape(old * old, new * new).t()


def resize_patch_kernel(weight: torch.Tensor, new: int) -> torch.Tensor:
    """FlexiViT's pseudo-inverse resize (Beyer et al. 2023, arXiv 2212.08013, section 3.4).

    A token is <x, w> for a patch x. When patches are resized, x' = B x, the new kernel w'
    should give the same token: <B x, w'> = <x, B^T w'> = <x, w> for all x, so w' minimises
    ||B^T w' - w||, i.e. w' = pinv(B^T) w. Growing the patch, B^T has full row rank and the
    tokens are reproduced exactly; shrinking, this is the least-squares best."""
    out_chans, in_chans, old, old_w = weight.shape
    if old != old_w:
        raise ConfigError(f"patch kernel {old}x{old_w} is not square")
    if new == old:
        return weight
    b = patch_resize_matrix(old, new)
    w = weight.detach().double().reshape(out_chans * in_chans, old * old).t()
    resized = torch.linalg.pinv(b.t()) @ w
    return resized.t().reshape(out_chans, in_chans, new, new).to(weight.dtype)


def resize_model(model: VisionTransformer, image_size=None, patch_size: int | None = None) -> VisionTransformer:
    """A copy of `model` for a new input size and/or patch size: position embeddings (and
    relative tables) resampled to the new grid, the patch kernel pseudo-inverse resized."""
    cfg = model.config
    image_size = as_pair(image_size) if image_size is not None else cfg.image_size
    patch_size = int(patch_size) if patch_size is not None else cfg.patch_size
    if image_size == cfg.image_size and patch_size == cfg.patch_size:
        return model
    new_cfg = cfg.replace(image_size=image_size, patch_size=patch_size)
    state = dict(model.state_dict())
    if patch_size != cfg.patch_size:
        state["patch_embed.proj.weight"] = resize_patch_kernel(state["patch_embed.proj.weight"], patch_size)
    state = resize_state(state, cfg.grid_size, new_cfg.grid_size)
    ref = next(model.parameters())
    resized = VisionTransformer(new_cfg).to(ref.device, ref.dtype)
    resized.load_state_dict(state)
    return resized.train(model.training)
