"""Training plots: loss and accuracy curves, confusion matrix (PNG, matplotlib's Agg canvas)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from vitkit.analysis.plots import save_figure
from vitkit.errors import printable


def plot_curves(history: list[dict], out_dir: Path) -> None:
    """loss.png, and accuracy.png for objectives that report one (train_acc, train_colour_acc ...)."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (augmented batches)")
    if all("val_loss" in h for h in history):
        ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_dir / "loss.png", dpi=110)

    accuracy = next((k[len("train_"):] for k in history[0] if k.startswith("train_") and k.endswith("acc")), None)
    if accuracy is None:
        return
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, [h[f"train_{accuracy}"] for h in history], label="train (augmented batches)")
    if all(f"val_{accuracy}" in h for h in history):
        ax.plot(epochs, [h[f"val_{accuracy}"] for h in history], label="validation")
    name = "top-1 accuracy" if accuracy == "acc" else accuracy.replace("_", " ")
    ax.set(xlabel="epoch", ylabel=name, title=name[0].upper() + name[1:], ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_dir / "accuracy.png", dpi=110)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    k = len(confusion)
    size = min(12, max(4, 0.45 * k + 2))
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if k <= 30:
        # Folder names that are not UTF-8 reach matplotlib as lone surrogates, which it cannot draw.
        labels = [printable(name) for name in class_names]
        ax.set_xticks(range(k), labels, rotation=90)
        ax.set_yticks(range(k), labels)
        peak = max(max(row) for row in confusion) or 1
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                            color="white" if v > peak / 2 else "black")
    save_figure(fig, path, dpi=110)
