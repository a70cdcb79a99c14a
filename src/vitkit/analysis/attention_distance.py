"""Mean attention distance (paper Fig. 7, right; appendix D.7).

For one head and one query patch i, the attention-weighted mean distance in pixels to the
patches it attends to, sum_j a_ij ||p_i - p_j||, with p the centres of the patches (the stem
stride apart, in pixels of the model's input). Averaged over query patches and images.

Prefix tokens (class, distillation) have no place in the image, so they are left out as
queries and as keys; each query's weights over the patch keys are renormalised to sum to 1
(the distance is an average over where in the image the head looks).
"""

from __future__ import annotations

import torch


def patch_distances(grid: tuple[int, int], stride: float) -> torch.Tensor:
    """(N, N) Euclidean distances in pixels between the centres of the patches, raster order."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                            indexing="ij")
    centres = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1) * stride
    return torch.cdist(centres, centres)


def uniform_attention_distance(grid: tuple[int, int], stride: float) -> float:
    """The mean attention distance of a head that attends uniformly over the patch grid: the mean
    distance between the centres of two patches (every query, every key, itself included). Heads
    far below it look locally; a head near it looks everywhere alike."""
    return float(patch_distances(grid, stride).mean())


def head_distances(attention: torch.Tensor, num_prefix: int, distances: torch.Tensor) -> torch.Tensor:
    """Per-image, per-head mean attention distance (B, H) of one layer's weights (B, H, T, T)."""
    a = attention[:, :, num_prefix:, num_prefix:].double()
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return (a * distances.to(a.device)).sum(dim=-1).mean(dim=-1)


def mean_attention_distance(attentions: list[torch.Tensor], num_prefix: int, grid: tuple[int, int],
                            stride: float) -> torch.Tensor:
    """(L, H) mean attention distance in pixels, averaged over the images of the batch."""
    distances = patch_distances(grid, stride)
    return torch.stack([head_distances(a, num_prefix, distances).mean(dim=0) for a in attentions]).float()
