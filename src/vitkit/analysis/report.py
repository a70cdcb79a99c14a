"""`analyze`: every analysis of a model on some images, as PNGs plus `analysis.json`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from vitkit.analysis.attention_distance import head_distances, patch_distances, uniform_attention_distance
from vitkit.analysis.filters import filters_for_display, patch_embedding_components
from vitkit.analysis.plots import plot_attention_distance, plot_filters, plot_posemb_similarity, plot_rollout
from vitkit.analysis.posemb_similarity import patch_position_embeddings, position_similarity
from vitkit.analysis.rollout import pooled_patch_weights, rollout_maps, rollout_query
from vitkit.errors import ConfigError, printable
from vitkit.evaluate.preprocess import normalize, resize_images
from vitkit.io import write_json
from vitkit.progress import Progress

# Attention weights kept per forward pass (all layers and heads, float32) are capped near this
# size by shrinking the batch: a ViT-L/16 at 384 pixels needs ~0.5 GB per image.
ATTENTION_BYTES_PER_BATCH = 1 << 30


def rounded(t: torch.Tensor, decimals: int = 6) -> list:
    """Nested lists of a tensor's values rounded in float64 (float32 values printed as JSON
    carry noise digits)."""
    return t.double().round(decimals=decimals).tolist()


def attention_batch_size(cfg, batch_size: int) -> int:
    """`batch_size`, fewer (at least 1) when keeping a batch's attention weights (all layers and
    heads, float32) would pass ATTENTION_BYTES_PER_BATCH."""
    tokens = cfg.num_prefix_tokens + cfg.num_patches
    return max(1, min(batch_size, ATTENTION_BYTES_PER_BATCH // (4 * cfg.depth * cfg.num_heads * tokens**2)))


def examples_across_classes(labels: torch.Tensor | None, count: int, total: int) -> list[int]:
    """Indices of up to `count` of `total` images to show: without labels the first ones; with
    labels one image of each class in turn (the first of every class in class order, then the
    second of every class, ...), so that a few examples span the classes."""
    if labels is None:
        return list(range(min(count, total)))
    members = [torch.nonzero(labels == c).flatten().tolist() for c in sorted(set(labels.tolist()))]
    order = [m[rank] for rank in range(max(map(len, members), default=0)) for m in members if rank < len(m)]
    return order[:count]


@torch.no_grad()
def analyze(model, images: torch.Tensor | Sequence[torch.Tensor], out_dir: str | os.PathLike, *,
            num_components: int = 28, rollout_images: int = 8, batch_size: int = 32,
            progress: bool = False, name: str | None = None, labels: torch.Tensor | None = None,
            class_names: Sequence[str] | None = None) -> dict:
    """Write filters.png, posemb_similarity.png, attention_distance.png, rollout.png and
    analysis.json (the numbers behind each picture) to `out_dir`; return the JSON's content.

    `images` are uint8, (N, C, H, W) or a list of (C, H, W), resized to the model's input.
    Mean attention distance averages over all of them. rollout.png shows `rollout_images` of
    them: with `labels` (one per image) one of each class in turn (examples_across_classes),
    each captioned with its class (`class_names`, else the model's) and the prediction when it
    differs; without, the first ones. An analysis that does not apply to the model is skipped
    with a note.
    `name` heads the picture titles (default: the config's name).
    Images go through the model `batch_size` at a time, fewer when keeping the attention
    weights of a batch would exceed ATTENTION_BYTES_PER_BATCH.
    """
    model.eval()
    cfg = model.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pixels = resize_images(images, cfg)
    model_name = name or (cfg.name if cfg.name != "custom" else "model")
    result: dict = {
        "model": {"name": cfg.name, "image_size": list(cfg.image_size), "patch_size": cfg.patch_size,
                  "stem": cfg.stem, "stem_stride": cfg.stem_stride, "grid": list(cfg.grid_size),
                  "depth": cfg.depth, "num_heads": cfg.num_heads, "pool": cfg.pool,
                  "posemb": cfg.posemb, "posemb_where": cfg.posemb_where},
        "num_images": int(pixels.shape[0]),
        "files": [],
        "notes": [],
    }

    try:
        components, explained = patch_embedding_components(model, num_components)
        plot_filters(filters_for_display(components), explained, out / "filters.png",
                     f"{model_name}: top {len(explained)} principal components of the "
                     f"{cfg.patch_size}x{cfg.patch_size} patch-embedding filters")
        result["filters"] = {"num_components": len(explained),
                             "explained_variance_ratio": rounded(explained),
                             "components": rounded(components)}
        result["files"].append("filters.png")
    except ConfigError as e:
        result["filters"] = None
        result["notes"].append(f"filters.png skipped: {e}")

    try:
        embeddings, source = patch_position_embeddings(model)
        similarity = position_similarity(embeddings)
        plot_posemb_similarity(similarity, cfg.grid_size, out / "posemb_similarity.png",
                               f"{model_name}: position-embedding similarity ({cfg.posemb})")
        result["posemb_similarity"] = {"grid": list(cfg.grid_size), "source": source,
                                       "similarity": rounded(similarity)}
        result["files"].append("posemb_similarity.png")
        if model.layer_pos_embeds is not None:
            result["notes"].append(f"posemb_similarity.png shows {source}")
    except ConfigError as e:
        result["posemb_similarity"] = None
        result["notes"].append(f"posemb_similarity.png skipped: {e}")

    if cfg.depth == 0 or pixels.shape[0] == 0:
        why = "the model has no attention layers" if cfg.depth == 0 else "no images were given"
        result["mean_attention_distance"] = None
        result["rollout"] = None
        result["notes"].append(f"attention_distance.png and rollout.png skipped: {why}")
        write_json(out / "analysis.json", result)
        return result

    distances = patch_distances(cfg.grid_size, cfg.stem_stride)
    n = cfg.num_prefix_tokens
    total = torch.zeros(cfg.depth, cfg.num_heads, dtype=torch.float64)
    maps: dict[int, torch.Tensor] = {}  # by image index
    device = next(model.parameters()).device
    batch_size = attention_batch_size(cfg, batch_size)
    shown = examples_across_classes(labels, rollout_images, pixels.shape[0])
    predicted = {}
    with Progress(pixels.shape[0], "attention", "img", quiet=not progress) as bar:
        for start in range(0, pixels.shape[0], batch_size):
            x = normalize(pixels[start:start + batch_size], cfg).to(device)
            out_i = model.forward_intermediates(x, attention=True)
            attn = [a.cpu() for a in out_i["attention"]]
            total += torch.stack([head_distances(a, n, distances).sum(dim=0) for a in attn])
            rows = [i - start for i in shown if start <= i < start + x.shape[0]]
            if rows:
                batch_maps = rollout_maps(attn, n, out_i["grid"], cfg.pool, pooled_patch_weights(model, out_i))
                maps.update((start + r, batch_maps[r]) for r in rows)
                predicted.update((start + r, int(out_i["logits"][r].argmax())) for r in rows)
            bar.update(x.shape[0])
    mad = (total / pixels.shape[0]).float()
    h, w = cfg.image_size
    uniform = uniform_attention_distance(cfg.grid_size, cfg.stem_stride)
    plot_attention_distance(mad, out / "attention_distance.png",
                            f"{model_name}: mean attention distance per head "
                            f"({pixels.shape[0]} images)", max_distance=float((h**2 + w**2) ** 0.5),
                            uniform_distance=uniform)
    result["mean_attention_distance"] = mad.tolist()
    result["mean_attention_distance_units"] = "pixels of the model's input image"
    result["uniform_attention_distance"] = uniform
    result["files"].append("attention_distance.png")

    if not maps:
        result["rollout"] = None
        result["notes"].append("rollout.png skipped: no images asked for (rollout_images=0)")
        write_json(out / "analysis.json", result)
        return result
    shown_maps = torch.stack([maps[i] for i in shown])
    query = rollout_query(cfg.pool)
    names = list(cfg.class_names) or [str(k) for k in range(cfg.num_classes)]
    result["rollout"] = {"query": query, "grid": list(cfg.grid_size), "images": shown,
                         "predicted": [names[predicted[i]] for i in shown]}
    captions = None
    if labels is not None:
        label_names = list(class_names or names)
        truth = [label_names[int(labels[i])] for i in shown]
        captions = [printable(t if t == p else f"{t} (model: {p})")  # matplotlib cannot draw every name
                    for t, p in zip(truth, result["rollout"]["predicted"])]
        result["rollout"]["labels"] = truth
    plot_rollout(pixels[shown], shown_maps, out / "rollout.png",
                 f"{model_name}: attention rollout ({query}; heat scaled to each map's maximum)", captions)
    result["rollout"]["maps"] = rounded(shown_maps, 8)
    result["files"].append("rollout.png")

    write_json(out / "analysis.json", result)
    return result
