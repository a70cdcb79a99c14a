"""Classification metrics: logits of in-memory or streamed images, top-1/top-5 accuracy, confusion matrix."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from vitkit.device import autocast
from vitkit.evaluate.preprocess import prepare_images
from vitkit.models.vit import VisionTransformer
from vitkit.progress import Progress


@torch.no_grad()
def predict_logits(model: VisionTransformer, images: torch.Tensor, batch_size: int = 512,
                   precision: str = "fp32", progress: bool = False,
                   logits_of: Callable[[VisionTransformer, torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """Logits (N, K) in float32 for uint8 images (N, C, H, W); other sizes and channel counts
    are adapted to the model's input. `progress` shows a bar (vitkit.progress) for long sets.
    `logits_of(model, x)` picks what is predicted for normalised input x (default: the model's
    output; e.g. one head of a distilled model)."""
    was_training = model.training
    model.eval()
    ref = next(model.parameters())
    cfg = model.config
    out = []
    with Progress(images.shape[0], "evaluating", "img", quiet=not progress) as bar:
        for start in range(0, images.shape[0], batch_size):
            x = prepare_images(images[start:start + batch_size].to(ref.device, non_blocking=True), cfg)
            with autocast(ref.device, precision):
                out.append((model(x) if logits_of is None else logits_of(model, x)).float())
            bar.update(x.shape[0])
    model.train(was_training)
    if not out:
        return torch.empty(0, cfg.num_classes)
    return torch.cat(out)


def predict_batches(model: VisionTransformer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    precision: str = "fp32", logits_of: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) float32 and labels (N,) for a stream of (uint8 images, labels) batches, one
    batch in memory at a time (e.g. `vitkit.data.shards.load_batches`); `logits_of` as for
    `predict_logits`."""
    logits, labels = [], []
    for images, batch_labels in batches:
        logits.append(predict_logits(model, images, images.shape[0], precision, logits_of=logits_of))
        labels.append(batch_labels)
    if not logits:
        return torch.empty(0, model.config.num_classes), torch.empty(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """top1, top5 (0..1, each the exact ratio correct / n), n and the confusion matrix (rows: true
    class, columns: predicted)."""
    labels = labels.to(logits.device)
    n, k = logits.shape
    pred = logits.argmax(dim=1)
    top = logits.topk(min(5, k), dim=1).indices
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels.cpu(), pred.cpu()), torch.ones(n, dtype=torch.long), accumulate=True)
    # Counts divided in Python: the exact ratio k/n as a float64, not a float32 mean widened.
    return {
        "top1": int((pred == labels).sum()) / n if n else 0.0,
        "top5": int((top == labels[:, None]).any(dim=1).sum()) / n if n else 0.0,
        "n": int(n),
        "confusion": confusion.tolist(),
    }
