"""Writers for small data sets in the real on-disk layouts (imported by name: a plain
module, not conftest.py, so it cannot clash with other test folders' conftest modules)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(8, 6), mode="RGB", value: int | tuple = 128) -> Path:
    """A solid image of `size` (width, height); an int `value` fills every band."""
    path.parent.mkdir(parents=True, exist_ok=True)
    single_band = mode in ("L", "P", "I;16", "I", "1")
    colour = value if single_band or isinstance(value, tuple) else tuple([value] * len(mode))
    Image.new(mode, size, colour).save(path)
    return path


def write_class_folder(root: Path, counts: dict[str, int], size=(8, 6), mode="RGB", suffix=".png") -> Path:
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{i}{suffix}", size, mode, value=10 * i % 250)
    return root


def write_cifar10(folder: Path, per_batch: int = 20, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    """The official python layout: five training batches, a test batch, batches.meta."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {b"batch_label": f"batch {i}".encode(), b"labels": [int(v) for v in np.arange(per_batch) % 10],
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{j}.png".encode() for j in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f,
                    protocol=protocol)
    return folder


def write_cifar100(folder: Path, n_train: int = 200, n_test: int = 100) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                 b"fine_labels": [int(v) for v in np.arange(n) % 100],
                 b"coarse_labels": [int(v) for v in np.arange(n) % 20],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, f)
    return folder


def write_numbered_folder(root: Path, count: int, classes: int = 2, size=(4, 4)) -> Path:
    """`count` grey PNGs whose every pixel is the image's number (< 256), class number % classes:
    a decoded image tells which file it was."""
    for number in range(count):
        write_image(root / f"c{number % classes}" / f"{number:03d}.png", size, "L", number)
    return root
