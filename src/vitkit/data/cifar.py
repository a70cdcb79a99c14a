"""CIFAR-10 / CIFAR-100 in the layout of the official python tarballs, read without running code.

The batches are pickles. A pickle can name any importable function and have it called, so
they are read with an unpickler that resolves only the few numpy names an ndarray needs.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from vitkit.errors import DataError

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # Files written under numpy 1 say numpy.core, under numpy 2 numpy._core.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # Pickle protocol 5 stores arrays as a buffer handed to _frombuffer.
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    # Python 3 writes bytes as _codecs.encode(text, "latin1") under protocols 0-2; it only encodes.
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed numpy names."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, str, numbers and numpy arrays; refuses every other global."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refused global {module}.{name}") from None


def load_pickle(path: Path) -> dict:
    """A CIFAR batch as a dict with bytes keys (as the official files, written by Python 2)."""
    try:
        data = path.read_bytes()
        batch = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _RefusedGlobal as err:
        raise DataError(f"{path} is not a plain CIFAR batch ({err}); it was not loaded. "
                        "Use the official python version of the data set") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError) as err:
        raise DataError(f"{path} is not a readable CIFAR batch ({type(err).__name__}: {err}); "
                        "re-extract the official python tarball") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; "
                        "re-extract the official python tarball")
    return batch


def _field(batch: dict, key: str, path: Path):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{path} has no {key!r} entry; is this the python version of CIFAR?")


def _images_and_labels(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' should be uint8 (N, 3072), found {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {label_key!r} should be {data.shape[0]} integers, found {labels.dtype} "
                        f"{labels.shape}")
    # Rows hold the red plane, then green, then blue, each 32 x 32 in row-major order.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _names(path: Path, key: str) -> list[str]:
    names = _field(load_pickle(path), key, path)
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def find_cifar_folder(folder: Path) -> Path | None:
    """The folder itself, or the official tarball's top folder inside it, if either is CIFAR."""
    for candidate in (folder, folder / "cifar-10-batches-py", folder / "cifar-100-python"):
        if is_cifar10(candidate) or is_cifar100(candidate):
            return candidate
    return None


def is_cifar10(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CIFAR10_FILES)


def is_cifar100(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CIFAR100_FILES)


def read_cifar(folder: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """(train images, labels), (test images, labels), class names. Images are (N, 3, 32, 32)."""
    if is_cifar10(folder):
        batches = [_images_and_labels(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
        train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
        test = _images_and_labels(folder / "test_batch", "labels")
        names = _names(folder / "batches.meta", "label_names")
    else:
        train = _images_and_labels(folder / "train", "fine_labels")
        test = _images_and_labels(folder / "test", "fine_labels")
        names = _names(folder / "meta", "fine_label_names")
    for part, (_, labels) in (("train", train), ("test", test)):
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(f"{folder}: {part} labels run from {labels.min()} to {labels.max()} but there are "
                            f"{len(names)} class names; the files do not belong together")
    return train, test, names
