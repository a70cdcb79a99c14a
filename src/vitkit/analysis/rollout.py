"""Attention rollout (Abnar & Zuidema, 2020), as used for paper Fig. 6.

Per layer: average the heads, add the identity (the residual path), renormalise each row to
sum to 1; multiply the layers: R = A_L ... A_2 A_1. Row t of R says how much each input token
flows into token t at the output.

The map over the image is read from R at the output token(s) the head reads ("queries"):
- "class token" ("token" pooling): the class token's row;
- "pooled patches" ("gap" and "map" pooling): the patch tokens' rows weighted as the pooling
  weights them: uniformly for GAP, which averages exactly those tokens; for MAP by the
  probe's attention over them (mean over its heads), when the caller passes those weights
  (`pooled_patch_weights`), else the uniform stand-in;
- "distillation token" (DeiT): the distillation token's row, what the second head reads.
Only the patch columns are kept, not renormalised: what is missing from 1 flowed from the
prefix tokens. So rollout of identity attention is R = I: the class token's row is one-hot on
the class token itself and zero on every patch, while the mean patch row is uniform 1/N.
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


def rollout_queries(config) -> list[str]:
    """The queries a model's outputs are read from: the one its (first) head reads, then the
    distillation token when it has one."""
    queries = ["class token" if config.pool == "token" else "pooled patches"]
    if config.distill_token:
        queries.append("distillation token")
    return queries


def map_probe_weights(map_head, patch_tokens: torch.Tensor) -> torch.Tensor:
    """(B, heads, N) attention of a MAP head's probe over the (B, N, D) tokens it pools: the
    weights its scaled dot-product attention applies (the model's fast path does not keep them)."""
    b, n, d = patch_tokens.shape
    heads = map_head.num_heads
    query = map_head.q(map_head.probe).view(1, heads, 1, d // heads)
    keys = map_head.kv(patch_tokens)[..., :d].view(b, n, heads, d // heads).transpose(1, 2)
    logits = (query * (d // heads) ** -0.5) @ keys.transpose(-2, -1)
    return logits.softmax(dim=-1)[:, :, 0]


def pooled_patch_weights(model, intermediates: dict) -> torch.Tensor | None:
    """(B, N) weights the pooling gives the patch tokens, for the "pooled patches" query: the
    MAP probe's attention averaged over its heads; None (uniform) for every other pooling."""
    if model.config.pool != "map":
        return None
    patches = intermediates["encoder"][:, model.config.num_prefix_tokens:]
    return map_probe_weights(model.map_head, patches).mean(dim=1)


def rollout_rows(rollout: torch.Tensor, num_prefix: int, grid: tuple[int, int], query: str,
                 pooling_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, gh, gw) map of one query (see the module docstring) read from a (B, T, T) rollout.
    `pooling_weights` (B, N) weight the patch rows for "pooled patches" (default uniform)."""
    if query == "class token" and num_prefix > 0:
        rows = rollout[:, 0, num_prefix:]
    elif query == "distillation token" and num_prefix > 0:
        rows = rollout[:, num_prefix - 1, num_prefix:]
    elif query == "pooled patches":
        patch_rows = rollout[:, num_prefix:, num_prefix:]
        if pooling_weights is None:
            rows = patch_rows.mean(dim=1)
        else:
            weights = pooling_weights.to(patch_rows)
            rows = (weights / weights.sum(dim=-1, keepdim=True)).unsqueeze(1).bmm(patch_rows)[:, 0]
    else:
        raise ValueError(f"no {query!r} to read a rollout from (prefix tokens: {num_prefix}); "
                         "queries are 'class token', 'distillation token' and 'pooled patches'")
    return rows.reshape(-1, *grid).float()


def rollout_maps(attentions: list[torch.Tensor], num_prefix: int, grid: tuple[int, int],
                 pool: str = "token", pooling_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, gh, gw) rollout maps over the patch grid of the query the head reads: the class
    token's row for "token" pooling, the pooled patch rows otherwise (see the module docstring)."""
    query = "class token" if pool == "token" and num_prefix > 0 else "pooled patches"
    return rollout_rows(attention_rollout(attentions), num_prefix, grid, query, pooling_weights)


def rollout_query(pool: str) -> str:
    """How the map is read off the rollout matrix, in words (for titles and analysis.json)."""
    if pool == "map":
        return "patch tokens' rows weighted by the MAP probe's attention"
    return "class token's row" if pool == "token" else "mean of the patch tokens' rows"
