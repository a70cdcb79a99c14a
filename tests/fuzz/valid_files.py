"""Small valid files in every format vitkit reads, written by the real writers; the fuzzers
damage copies of them. Each is made once per session and handed out as bytes."""

from __future__ import annotations

import functools
import io
import json
import pickle
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

import vitkit
from vitkit.formats import google_npz, hf, timm
from vitkit.train.config import TrainConfig
from vitkit.train.loop import new_progress
from vitkit.train.state import save_training_state

TINY = dict(image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, num_classes=3)


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder for one example (hypothesis reuses a test's fixtures across examples)."""
    with tempfile.TemporaryDirectory(prefix="vitkit-fuzz-") as folder:
        yield Path(folder)


def tiny_model(**options) -> vitkit.VisionTransformer:
    torch.manual_seed(0)
    return vitkit.create_model(**{**TINY, **options})


def _written(write) -> bytes:
    with scratch() as folder:
        path = write(folder)
        return path.read_bytes()


@functools.cache
def native_file() -> bytes:
    return _written(lambda folder: vitkit.save(tiny_model(), folder / "m.safetensors"))


@functools.cache
def training_checkpoint() -> bytes:
    def write(folder: Path) -> Path:
        model = tiny_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.zeros(1, 3, 16, 16)).sum().backward()
        optimizer.step()
        progress = {**new_progress(), "epoch": 1, "update": 1, "best_val_acc": 0.5, "best_epoch": 1,
                    "train_seconds": 0.1}
        save_training_state(folder / "last.safetensors", model.config, model.state_dict(), optimizer.state_dict(),
                            {k: v.clone() for k, v in model.state_dict().items()}, progress)
        return folder / "last.safetensors"
    return _written(write)


@functools.cache
def timm_file(suffix: str) -> bytes:
    def write(folder: Path) -> Path:
        timm.write(tiny_model(), folder / f"m{suffix}")
        return folder / f"m{suffix}"
    return _written(write)


@functools.cache
def hf_files() -> dict[str, bytes]:
    with scratch() as folder:
        hf.write(tiny_model(class_names=("a", "b", "c")), folder / "hf")
        return {p.name: p.read_bytes() for p in (folder / "hf").iterdir()}


@functools.cache
def google_file(layout: str) -> bytes:
    def write(folder: Path) -> Path:
        options = {} if layout == "original" else dict(pool="map", posemb_class_slot=False)
        google_npz.write(tiny_model(**options), folder / "m.npz", layout)
        return folder / "m.npz"
    return _written(write)


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    """A safetensors file from its JSON header and data section, as the format lays them out."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@functools.cache
def npz_dataset() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.integers(0, 256, (6, 4, 4), dtype=np.uint8), y=np.array([0, 1, 0, 1, 0, 1]),
             class_names=np.array(["cat", "dog"]))
    return buffer.getvalue()


CIFAR_LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                     b"ship", b"truck"]


def cifar_batch(n: int = 4, seed: int = 0, protocol: int = 2) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"batch", b"labels": [int(v) for v in np.arange(n) % 10],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"{i}.png".encode() for i in range(n)]}
    return pickle.dumps(batch, protocol=protocol)


def write_cifar10(folder: Path, replace: dict[str, bytes] | None = None) -> Path:
    """The official python layout, with some files' bytes replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"data_batch_{i}": cifar_batch(seed=i) for i in range(1, 6)}
    files["test_batch"] = cifar_batch(seed=6)
    files["batches.meta"] = pickle.dumps({b"label_names": CIFAR_LABEL_NAMES, b"num_cases_per_batch": 4},
                                         protocol=2)
    files.update(replace or {})
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@functools.cache
def image_file(fmt: str) -> bytes:
    """A small noisy RGB picture (noise, so that compressed formats have real content)."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), "RGB")
    if fmt == "GIF":
        picture = picture.convert("P")
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def train_config_yaml() -> str:
    return TrainConfig(epochs=2, batch_size=8, lr=1e-3, model_options={"width": 16},
                       augment={"flip": True}).to_yaml()


@functools.cache
def shard_folder() -> dict[str, bytes]:
    """What `vitkit shard` writes for six small PNGs of two classes, two per shard."""
    from vitkit.data.shard_writer import shard_data

    with scratch() as folder:
        for label in ("cat", "dog"):
            (folder / "pets" / label).mkdir(parents=True)
            for i in range(3):
                (folder / "pets" / label / f"{i}.png").write_bytes(image_file("PNG"))
        # A pixel limit of 2**20 recorded in dataset.json bounds the size images are resized to.
        shard_data(folder / "pets", folder / "shards", shard_size=2, val_fraction=0, test_fraction=0,
                   max_image_pixels=2**20, quiet=True)
        return {p.name: p.read_bytes() for p in (folder / "shards").iterdir()}
