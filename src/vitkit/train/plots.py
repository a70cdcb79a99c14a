"""Training plots: loss and accuracy curves, confusion matrix (PNG, matplotlib's Agg canvas)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from vitkit.analysis.plots import save_figure
from vitkit.errors import printable


def plot_curves(history: list[dict], out_dir: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss (augmented batches)")
    if all("val_loss" in h for h in history):
        ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_dir / "loss.png", dpi=110)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, [h["train_acc"] for h in history], label="train (augmented batches)")
    ax.plot(epochs, [h["val_acc"] for h in history], label="validation")
    ax.set(xlabel="epoch", ylabel="top-1 accuracy", title="Accuracy", ylim=(0, 1.01))
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
