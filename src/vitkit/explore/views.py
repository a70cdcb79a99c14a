"""What the explore page shows, as JSON-ready values, computed by the functions `vitkit analyze`
uses (vitkit.analysis): the checkpoint's own panels once, and each image's views per forward."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vitkit.analysis.attention_distance import head_distances, patch_distances
from vitkit.analysis.filters import filters_for_display, patch_embedding_components
from vitkit.analysis.posemb_similarity import patch_position_embeddings, position_similarity
from vitkit.analysis.report import rounded
from vitkit.analysis.rollout import attention_rollout, pooled_patch_weights, rollout_queries, rollout_rows
from vitkit.errors import ConfigError
from vitkit.evaluate.preprocess import normalize

TOP_K = 5
# The colour maps of analyze's pictures (rollout: inferno; similarity: viridis), so the page
# and the PNGs read alike.
COLORMAPS = ("inferno", "viridis")


def prefix_token_names(config) -> list[str]:
    """Names of the tokens before the patch tokens, in sequence order."""
    return ["class token"] * (config.pool == "token") + ["distillation token"] * config.distill_token


def _colormap(name: str) -> list[list[int]]:
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(int).tolist()


def model_summary(model, name: str) -> dict:
    """The checkpoint's side of the page: its shape, and the three pictures of paper Fig. 7
    that depend on the weights alone (mean attention distance needs images: see ImageView);
    a picture that does not apply is None with a note that says why."""
    cfg = model.config
    if cfg.depth == 0:
        raise ConfigError(f"{name} has no attention layers (depth 0): nothing to explore; "
                          "use `vitkit predict` for its classes")
    summary = {
        "name": name,
        "image_size": list(cfg.image_size), "in_chans": cfg.in_chans, "patch_size": cfg.patch_size,
        "stem": cfg.stem, "stride": cfg.stem_stride, "grid": list(cfg.grid_size), "depth": cfg.depth,
        "num_heads": cfg.num_heads, "width": cfg.width, "pool": cfg.pool, "posemb": cfg.posemb,
        "posemb_where": cfg.posemb_where, "num_classes": cfg.num_classes,
        "prefix_tokens": prefix_token_names(cfg), "rollout_queries": rollout_queries(cfg),
        "max_distance": float(np.hypot(*cfg.image_size)),
        "colormaps": {c: _colormap(c) for c in COLORMAPS},
        "filters": None, "filters_note": None, "posemb_similarity": None, "posemb_note": None,
    }
    try:
        components, explained = patch_embedding_components(model)
        summary["filters"] = {"images": rounded(filters_for_display(components), 4),
                              "explained_variance_ratio": rounded(explained)}
    except ConfigError as e:
        summary["filters_note"] = str(e)
    try:
        embeddings, source = patch_position_embeddings(model)
        summary["posemb_similarity"] = {"source": source, "similarity": rounded(position_similarity(embeddings), 4)}
    except ConfigError as e:
        summary["posemb_note"] = str(e)
    return summary


@dataclass
class ImageView:
    """One image's forward pass, kept for the page: what it predicts, its rollout maps, the
    attention weights of every layer and head (for the clicked tokens), its mean attention
    distance per head, and the image as the model saw it."""

    probabilities: torch.Tensor  # (num_classes,)
    rollouts: dict[str, torch.Tensor]  # query -> (gh, gw)
    attention: torch.Tensor  # (layers, heads, T, T), float32 on the CPU
    attention_distance: torch.Tensor  # (layers, heads), pixels of the model's input
    pixels: torch.Tensor  # (C, H, W) in [0, 1]
    grid: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.attention.numel() * self.attention.element_size()


@torch.no_grad()
def image_views(model, pixels: torch.Tensor) -> list[ImageView]:
    """One forward with attention for a batch of (B, C, H, W) pixels in [0, 1] at the model's
    input size, on the model's device; each image's views on the CPU."""
    cfg = model.config
    device = next(model.parameters()).device
    out = model.forward_intermediates(normalize(pixels, cfg).to(device), attention=True)
    grid = tuple(out["grid"])
    attention = [a.float().cpu() for a in out["attention"]]
    n = cfg.num_prefix_tokens
    rollout = attention_rollout(attention)
    weights = pooled_patch_weights(model, out)
    maps = {q: rollout_rows(rollout, n, grid, q, None if weights is None else weights.cpu())
            for q in rollout_queries(cfg)}
    distances = patch_distances(grid, cfg.stem_stride)
    per_head = torch.stack([head_distances(a, n, distances) for a in attention], dim=1).float()
    probabilities = out["logits"].float().softmax(dim=-1).cpu()
    stacked = torch.stack(attention, dim=1)
    return [ImageView(probabilities[i], {q: m[i] for q, m in maps.items()}, stacked[i].clone(), per_head[i],
                      pixels[i].cpu(), grid)
            for i in range(pixels.shape[0])]


def predictions(probabilities: torch.Tensor, class_names, top_k: int = TOP_K) -> list[dict]:
    """The top classes by name (the index as a name when the checkpoint names none)."""
    if probabilities.numel() == 0:
        return []
    top = probabilities.topk(min(top_k, probabilities.numel()))
    return [{"label": class_names[i] if class_names else str(i), "index": int(i), "probability": float(p)}
            for p, i in zip(top.values.tolist(), top.indices.tolist())]


def png_data_url(pixels: torch.Tensor) -> str:
    """(C, H, W) pixels in [0, 1] as a PNG data URL: the image exactly as the model saw it."""
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    # Light compression: it is shown once, and level 6 costs more than the forward of a small model.
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def token_attention(view: ImageView, token: int, num_prefix: int) -> dict:
    """Where token `token` (sequence order: prefix tokens, then the patches in raster order)
    attends in every layer and head: its weights on the patch grid (layers, heads, gh, gw) and
    on each prefix token (layers, heads, num_prefix)."""
    row = view.attention[:, :, token]
    layers, heads = row.shape[:2]
    return {"patches": rounded(row[..., num_prefix:].reshape(layers, heads, *view.grid), 6),
            "prefix": rounded(row[..., :num_prefix], 6)}
