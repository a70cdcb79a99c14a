"""Cosine similarity between the position embeddings of the patch positions (paper Fig. 7, centre)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitkit.errors import ConfigError


def patch_position_embeddings(model) -> tuple[torch.Tensor, str]:
    """(N, D) additive embedding of the patch positions on the model's grid, and where it came
    from. For `posemb_where="every_layer"` (one embedding per layer) it is layer 0's."""
    cfg = model.config
    if model.pos_embed is not None:
        module, source = model.pos_embed, "the position embedding added after the stem"
        if cfg.posemb_where == "every_layer_shared":
            source = "the position embedding shared by every layer"
    elif model.layer_pos_embeds is not None:
        module, source = model.layer_pos_embeds[0], "layer 0's embedding (every layer has its own)"
    else:
        raise ConfigError(f"posemb={cfg.posemb!r} adds no position embedding to the tokens: nothing to compare")
    with torch.no_grad():
        return module.patch_embedding(cfg.grid_size).detach().float(), source


def position_similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, N) cosine similarity of every position's embedding with every other's."""
    unit = F.normalize(embeddings.double(), dim=-1)
    return (unit @ unit.T).float()
