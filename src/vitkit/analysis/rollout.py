"""Attention rollout (Abnar & Zuidema, 2020), as used for paper Fig. 6.

Per layer: average the heads, add the identity (the residual path), renormalise each row to
sum to 1; multiply the layers: R = A_L ... A_2 A_1. Row t of R says how much each input token
flows into token t at the output.

The map over the image is one row of R restricted to the patch columns:
- "token" pooling: the class token's row (the class token is what the head reads);
- "gap" and "map" pooling: the mean of the patch tokens' rows (GAP averages exactly those
  tokens; for "map", whose probe attends to them, it is the same uniform stand-in).
The patch entries are not renormalised: what is missing from 1 flowed from the prefix tokens.
So rollout of identity attention is R = I: the class token's row is one-hot on the class
token itself and zero on every patch, while the mean patch row is uniform 1/N over patches.
"""

from __future__ import annotations

import torch


def attention_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """(B, T, T) rollout of per-layer attention weights [(B, H, T, T), ...], first layer first."""
    rollout = None
    for weights in attentions:
        a = weights.double().mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def rollout_maps(attentions: list[torch.Tensor], num_prefix: int, grid: tuple[int, int],
                 pool: str = "token") -> torch.Tensor:
    """(B, gh, gw) rollout maps over the patch grid: the class token's row for "token" pooling,
    the mean patch-query row otherwise (see the module docstring)."""
    rollout = attention_rollout(attentions)
    if pool == "token" and num_prefix > 0:
        rows = rollout[:, 0, num_prefix:]
    else:
        rows = rollout[:, num_prefix:, num_prefix:].mean(dim=1)
    return rows.reshape(-1, *grid).float()


def rollout_query(pool: str) -> str:
    """How the map is read off the rollout matrix, in words (for titles and analysis.json)."""
    return "class token's row" if pool == "token" else "mean of the patch tokens' rows"
