"""Change a trained model's input resolution: learned position embeddings (and relative
tables) are interpolated over the patch grid; the class and distillation slots are kept."""

from __future__ import annotations

import torch

from vitkit.models.config import as_pair
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
