"""In-memory datasets: uint8 image tensors with labels, and the train/val/test splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageSet:
    """`images` (N, C, H, W) uint8 and `labels` (N,) int64, held in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class DataSplits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[-2:])

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices for consecutive parts of each class (deterministic for a seed): the last part
    takes the remainder, every part gets at least one sample of a class that has enough."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        start = 0
        for i, frac in enumerate(fractions):
            n = int(round(frac * len(idx)))
            if frac > 0 and n == 0 and len(idx) - start > 1:
                n = 1
            parts[i].append(idx[start:start + n])
            start += n
        parts[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


def carve_splits(part_labels: dict[str, np.ndarray], fractions: dict[str, float], seed: int
                 ) -> dict[str, tuple[str, np.ndarray]]:
    """Where train, val and test come from, as split name -> (source part, indices into it).

    `part_labels` holds the labels of the parts a source provides ("train", "val", "test",
    or one "all"). Parts given are kept whole; the missing val and test are carved from train
    (or from "all") by `stratified_split` with `fractions["val"]` and `fractions["test"]`."""
    pool = "all" if "all" in part_labels else "train"
    missing = [name for name in ("val", "test") if name not in part_labels]
    pieces = stratified_split(part_labels[pool], tuple(fractions[name] for name in missing), seed)
    plan = {name: (name, np.arange(len(labels))) for name, labels in part_labels.items() if name != pool}
    plan.update(zip(missing, ((pool, index) for index in pieces[:-1])))
    plan["train"] = (pool, pieces[-1])
    return plan


def training_subset(train: ImageSet, fraction: float, seed: int) -> ImageSet:
    """A stratified `fraction` of a training set, deterministic for `seed`. For one seed the
    subsets are nested: each class is shuffled once and its first round(fraction * n) kept."""
    if fraction >= 1.0:
        return train
    keep, _ = stratified_split(train.labels.numpy(), (fraction,), seed)
    return train.subset(keep)
