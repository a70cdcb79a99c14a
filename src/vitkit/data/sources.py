"""Dataset sources, detected from the `--data` string. (Being extended: image folders, CIFAR, npz.)"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from vitkit.data.dataset import DataSplits, ImageSet, stratified_split
from vitkit.errors import DataError


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    with resources.files("vitkit.data").joinpath("digits.npz").open("rb") as f:
        data = np.load(f)
        return data["x"], data["y"], [str(i) for i in range(10)]


def load_data(spec: str = "digits", *, split_seed: int = 0, val_fraction: float = 0.1,
              test_fraction: float = 0.2, skip_bad_images: bool = False) -> DataSplits:
    if spec != "digits":
        raise DataError(f"unknown data source {spec!r}")
    x, y, names = _digits()
    images = torch.from_numpy(x).unsqueeze(1)
    labels = torch.from_numpy(y).long()
    val, test, train = stratified_split(y, (val_fraction, test_fraction), split_seed)
    full = ImageSet(images, labels)
    return DataSplits(full.subset(train), full.subset(val), full.subset(test), names, source="digits")
