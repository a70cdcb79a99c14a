"""How a run is measured: its objective on the validation split after every epoch, and on the
test split at the end (for a classifier, top-1/top-5 and the confusion matrix of the run's
result, read back from its checkpoint)."""

from __future__ import annotations

import torch

from vitkit.evaluate.classification import classification_metrics, predict_logits
from vitkit.evaluate.preprocess import resize_images
from vitkit.objectives.base import Draws
from vitkit.train.batches import RunBatches
from vitkit.train.distributed import Distributed

# Keys of the draws of evaluation passes, apart from the training steps' (epoch, step) keys.
_EVAL_KEYS = {"val": -1, "test": -2}


@torch.no_grad()
def split_sums(step: torch.nn.Module, batches: RunBatches, split: str, batch_size: int, dist: Distributed,
               seed: int) -> dict[str, float]:
    """The objective of `step` (a TrainingStep, in eval mode for the pass) on a whole split:
    {"loss": mean loss, "acc": accuracy as an exact ratio of counts (objectives that have one),
    "n": items counted}. In memory, under torchrun the processes take parts of every batch and
    sum; streamed, every process reads the whole split. An image's random draws (masks) depend
    on its place in the split only, so the numbers are the same for any batch size and number
    of processes."""
    was_training = step.training
    step.eval()
    device = next(step.parameters()).device
    model_cfg = step.model.config
    shard = dist.active and not batches.streaming
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for start, (images, labels) in batches.eval_batches(split, model_cfg, batch_size):
        rows = dist.rows(labels.shape[0]) if shard else range(labels.shape[0])
        part = slice(rows.start, rows.stop)
        pixels = resize_images(images[part].to(device), model_cfg)
        draws = Draws(seed, (_EVAL_KEYS[split],), [start + r for r in rows], device)
        sums = step(pixels, labels[part].to(device), draws, evaluate=True)
        loss += sums["loss"].double()
        count += sums["count"].double()
        if "correct" in sums:
            correct += sums["correct"].double()
    if shard:
        dist.sum_(loss, correct, count)
    step.train(was_training)
    n = int(count)
    result = {"loss": float(loss) / max(n, 1), "n": n}
    if step.objective.accuracy:
        result["acc"] = int(correct) / n if n else 0.0
    return result


def classifier_test(model: torch.nn.Module, batches: RunBatches, batch_size: int, precision: str) -> dict:
    """Top-1, top-5, n and the confusion matrix of a classifier on the test split."""
    device = next(model.parameters()).device
    logits, labels = [], []
    for _, (images, batch_labels) in batches.eval_batches("test", model.config, batch_size):
        logits.append(predict_logits(model, images.to(device), batch_size, precision))
        labels.append(batch_labels)
    if not logits:
        return classification_metrics(torch.empty(0, model.config.num_classes), torch.empty(0, dtype=torch.long))
    return classification_metrics(torch.cat(logits), torch.cat(labels))
