"""The analysis pictures, drawn with matplotlib's Agg canvas (no display, no global pyplot state)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from vitkit.io import atomic_path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def plot_filters(images: torch.Tensor, explained: torch.Tensor, path, title: str) -> None:
    """Components as images (k, P, P[, 3]) in [0, 1], 7 to a row, each with its variance share."""
    k = images.shape[0]
    cols = min(7, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(1.3 * cols + 0.4, 1.45 * rows + 0.8))
    for i in range(k):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i].numpy()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"PC {i + 1} ({100 * float(explained[i]):.1f}%)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def plot_posemb_similarity(similarity: torch.Tensor, grid: tuple[int, int], path, title: str) -> None:
    """The paper's grid of grids: tile (r, c) shows position (r, c)'s cosine similarity with
    every position, laid out on the patch grid. Drawn as one mosaic image (fast for big grids)."""
    gh, gw = grid
    gap = 1
    mosaic = np.full((gh * (gh + gap) - gap, gw * (gw + gap) - gap), np.nan)
    sim = similarity.numpy().reshape(gh, gw, gh, gw)
    for r in range(gh):
        for c in range(gw):
            y, x = r * (gh + gap), c * (gw + gap)
            mosaic[y:y + gh, x:x + gw] = sim[r, c]
    side = min(9.0, 2.0 + 0.45 * max(gh, gw))
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot(1, 1, 1)
    shown = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    step = max(1, math.ceil(max(gh, gw) / 14))
    ax.set_xticks([c * (gw + gap) + (gw - 1) / 2 for c in range(0, gw, step)], [str(c + 1) for c in range(0, gw, step)])
    ax.set_yticks([r * (gh + gap) + (gh - 1) / 2 for r in range(0, gh, step)], [str(r + 1) for r in range(0, gh, step)])
    ax.set_xlabel("Input patch column")
    ax.set_ylabel("Input patch row")
    ax.set_title(title, fontsize=11)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="Cosine similarity")
    save_figure(fig, path)


# Each head its own marker shape and colour, so heads stay apart in print and for colour-blind
# readers too; past twelve heads the shapes repeat with other colours.
HEAD_MARKERS = "osD^vP*X<>hp"


def plot_attention_distance(distances: torch.Tensor, path, title: str, max_distance: float,
                            uniform_distance: float) -> Figure:
    """One point per head at its layer's depth, as in the paper, with the distance of uniform
    attention over the grid drawn across (the line a head that looks everywhere alike sits on).
    The heads of a layer are spread a little sideways so that none hides another. Returns the
    figure (saved to `path`)."""
    from matplotlib import colormaps

    layers, heads = distances.shape
    colours = colormaps["tab10" if heads <= 10 else "tab20"]
    fig = Figure(figsize=(max(5.5, 0.35 * layers + 3.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    spread = min(0.6 / heads, 0.08)
    for h in range(heads):
        ax.scatter(np.arange(1, layers + 1) + (h - (heads - 1) / 2) * spread, distances[:, h].numpy(), s=30,
                   marker=HEAD_MARKERS[h % len(HEAD_MARKERS)], color=colours(h % colours.N), edgecolors="black",
                   linewidths=0.4, label=f"head {h + 1}", zorder=3)
    ax.axhline(uniform_distance, linestyle="--", color="0.35", linewidth=1.2, zorder=2,
               label=f"uniform attention ({uniform_distance:.1f} px)")
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_xticks(np.arange(1, layers + 1, max(1, layers // 12)))
    ax.set_xlim(0.5, layers + 0.5)
    ax.set_ylim(0, max_distance * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if heads > 16 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    ax.set_title(title, fontsize=11)
    save_figure(fig, path)
    return fig


def plot_rollout(images: torch.Tensor, maps: torch.Tensor, path, title: str,
                 captions: list[str] | None = None) -> None:
    """Top row the inputs as the model saw them ((B, C, H, W) in [0, 1]), each under its caption
    (its class and what the model predicted); bottom row each with its rollout map (upsampled
    bilinearly, scaled to its own maximum) laid over it."""
    b = images.shape[0]
    size = images.shape[-2:]
    heat = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    heat = heat / heat.reshape(b, -1).amax(dim=1).clamp_min(1e-12).view(b, 1, 1)
    fig = Figure(figsize=(1.8 * b + 0.6, 4.2))
    for i in range(b):
        img = images[i].permute(1, 2, 0).numpy()
        grey = img.shape[-1] == 1
        img = img[..., 0] if grey else img
        for row in range(2):
            ax = fig.add_subplot(2, b, row * b + i + 1)
            ax.imshow(img, cmap="gray" if grey else None, vmin=0, vmax=1)
            if row == 1:
                ax.imshow(heat[i].numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel("input" if row == 0 else "rollout", fontsize=9)
            if row == 0 and captions:
                ax.set_title(captions[i], fontsize=8)
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)
