"""A checkpoint's accuracy on one split of a dataset, what `vitkit eval` prints: top-1, top-5
and the confusion matrix, for one head of a distilled model if asked, and under FGSM/PGD
attacks at several radii."""

from __future__ import annotations

from typing import Sequence

import torch

from vitkit.data.shards import ShardBatches, default_workers, is_shard_folder, load_batches, open_shards
from vitkit.data.sources import load_data
from vitkit.data.spec import DataSpec
from vitkit.errors import ConfigError, DataError
from vitkit.evaluate.classification import classification_metrics, predict_batches, predict_logits
from vitkit.progress import Progress

SPLITS = ("train", "val", "test")


def evaluate_split(model: torch.nn.Module, data: DataSpec | str = "digits", split: str = "test", *,
                   head: str = "both", batch_size: int = 256, workers: int | None = None,
                   attack: str | None = None, eps: Sequence[float] = (8 / 255,), steps: int = 10,
                   step_size: float | None = None, random_start: bool = False, quiet: bool = True) -> dict:
    """Top-1, top-5, n and the confusion matrix (rows: true class) of `model` on `split` of
    `data`, with "class_names"; `head` picks one head of a distilled model ("cls", "dist"; "both"
    averages them, the model's own output). With `attack` ("fgsm" or "pgd"), "adversarial" lists
    the accuracy under it at each radius in `eps` (pixel units on the [0, 1] scale). A shard
    folder is streamed one batch at a time (one split's images are held in memory to attack them)."""
    from vitkit.objectives.adversarial import ATTACKS, adversarial_accuracy
    from vitkit.objectives.distill import HEADS, head_logits

    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
    if attack is not None and attack not in ATTACKS:
        raise ConfigError(f"attack must be one of {', '.join(ATTACKS)}, not {attack!r}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ConfigError(f"workers must be 0 or more, not {workers}")
    spec = DataSpec.of(data)
    logits_of = None if head == "both" else (lambda m, x: head_logits(m, x, head))
    if is_shard_folder(spec.source) and attack is None:
        shards = open_shards(spec.source, spec.max_image_pixels)
        _check_classes(model, shards.num_classes, spec.source)
        cfg = model.config
        batches = ShardBatches(shards.split(split), batch_size=batch_size, image_size=cfg.image_size,
                               channels=cfg.in_chans)
        with Progress(len(shards.split(split)), f"evaluating {split}", "img", quiet=quiet) as bar:
            def counted():
                for images, labels in load_batches(batches, workers):
                    bar.update(labels.shape[0])
                    yield images, labels

            logits, labels = predict_batches(model, counted(), logits_of=logits_of)
        class_names = shards.class_names
    else:
        splits = load_data(spec, quiet=quiet)
        _check_classes(model, splits.num_classes, spec.source)
        part = splits.split(split)
        labels = part.labels
        logits = predict_logits(model, part.images, batch_size, progress=not quiet, logits_of=logits_of)
        class_names = splits.class_names
    result = {**classification_metrics(logits, labels), "class_names": list(class_names)}
    if attack is not None:
        result["adversarial"] = [
            adversarial_accuracy(model, part.images, part.labels, attack, e, steps, step_size, random_start,
                                 batch_size, logits_of=lambda m, x: head_logits(m, x, head))
            for e in eps]
    return result


def _check_classes(model: torch.nn.Module, have: int, source: str) -> None:
    k = model.config.num_classes
    if k != have:
        raise DataError(f"the checkpoint predicts {k} classes but {source} has {have}; evaluate on the data it "
                        "was trained for, or fine-tune with `vitkit train --init`")
