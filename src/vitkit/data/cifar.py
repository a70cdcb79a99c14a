"""CIFAR-10 / CIFAR-100 in the layout of the official python tarballs, read without running code.

The batches are pickles. A pickle can name any importable function and have it called, so
they are read with an unpickler that resolves only the few numpy names an ndarray needs.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
from pathlib import Path

import numpy as np

from vitkit.errors import DataError
from vitkit.pickles import DamagedPickle, check_pickle

CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed numpy names, or calls one out of bounds."""


class _ArraysOnlyUnpickler(pickle._Unpickler):
    """Builds dicts, lists, bytes, str, numbers and numpy arrays; refuses every other global.

    Everything it builds that can be bigger than the opcodes naming it (arrays, and bytes made
    from text) counts against one budget of twice the file's size. A genuine batch spends each
    array's bytes at most twice (under protocol 2 once for the bytes `_codecs.encode` makes of
    the stored text, once for the array built on them), but a pickle can memoise one byte string
    and hand it to thousands of arrays, each a copy: a 1 MB file asking for gigabytes. Python's
    own unpickler, not the C one, because an array's `__setstate__` (the BUILD opcode) is where
    those copies are made, and only the Python one lets a subclass see it."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.file_bytes = len(data)
        self.spent = 0
        try:
            from numpy._core import multiarray, numeric  # numpy >= 2
        except ImportError:
            from numpy.core import multiarray, numeric
        self._allowed = {("numpy", "ndarray"): self._ndarray, ("numpy", "dtype"): np.dtype,
                         ("_codecs", "encode"): self._latin1}
        # Files written under numpy 1 say numpy.core, under numpy 2 numpy._core.
        for package in ("numpy.core", "numpy._core"):
            self._allowed[(f"{package}.multiarray", "_reconstruct")] = self._reconstruct(multiarray._reconstruct)
            # Pickle protocol 5 stores arrays as a buffer handed to _frombuffer.
            self._allowed[(f"{package}.numeric", "_frombuffer")] = self._frombuffer(numeric._frombuffer)

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refused global {module}.{name}") from None

    def _spend(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > 2 * self.file_bytes:
            raise _RefusedGlobal(f"arrays and bytes of {self.spent:,} bytes in a {self.file_bytes:,}-byte file, "
                                 "more than twice its size")

    def _spend_array(self, shape, dtype) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise _RefusedGlobal(f"an array of shape {shape}")
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise _RefusedGlobal("an array of Python objects")
        self._spend(math.prod(shape) * dtype.itemsize)

    def _ndarray(self, shape, dtype=float, *args, **kwargs) -> np.ndarray:
        self._spend_array(shape, dtype)
        return np.ndarray(shape, dtype, *args, **kwargs)

    def _reconstruct(self, reconstruct):
        def checked(subtype, shape, dtype):
            if subtype != self._ndarray:
                raise _RefusedGlobal("an array of another type than numpy.ndarray")
            self._spend_array(shape, dtype)
            return reconstruct(np.ndarray, shape, dtype)
        return checked

    def _frombuffer(self, frombuffer):
        def checked(buffer, dtype, shape, order):
            self._spend_array(shape, dtype)
            return frombuffer(buffer, dtype, shape, order)
        return checked

    def load_build(self) -> None:
        # An array's state is (version,) shape, dtype, is_fortran, raw data: numpy checks that the
        # data fits the shape, then keeps or copies it.
        state, instance = self.stack[-1], self.stack[-2]
        if isinstance(instance, np.ndarray):
            if not (isinstance(state, tuple) and len(state) in (4, 5) and isinstance(state[-3], np.dtype)):
                raise _RefusedGlobal("an array state numpy does not write")
            self._spend_array(state[-4], state[-3])
        super().load_build()

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}

    def _latin1(self, text, encoding="utf-8", errors="strict"):
        # Python 3 writes bytes as _codecs.encode(text, "latin1") under protocols 0-2; no other
        # codec is needed, and some (punycode, idna) take quadratic time on long input.
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise _RefusedGlobal(f"codec {encoding!r}")
        self._spend(len(text))
        return codecs.encode(text, "latin1", errors)


def load_pickle(path: Path) -> dict:
    """A CIFAR batch as a dict with bytes keys (as the official files, written by Python 2)."""
    try:
        data = path.read_bytes()
        check_pickle(io.BytesIO(data))
        batch = _ArraysOnlyUnpickler(data).load()
    except _RefusedGlobal as err:
        raise DataError(f"{path} is not a plain CIFAR batch ({err}); it was not loaded. "
                        "Use the official python version of the data set") from None
    except DamagedPickle as err:
        raise DataError(f"{path} is not a readable CIFAR batch: a damaged pickle ({err}); "
                        "re-extract the official python tarball") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError) as err:
        # Messages of the unpickler can run over several lines: one line for the user.
        detail = " ".join(str(err).split())
        raise DataError(f"{path} is not a readable CIFAR batch ({type(err).__name__}: {detail}); "
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


def _images_and_labels(path: Path, label_key: str, part: str, meta: Path, num_classes: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    data, labels = _field(batch, "data", path), _field(batch, label_key, path)
    # Checked before any conversion: np.asarray of a list that repeats one memoised object
    # would build an array far larger than the file.
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or \
            data.shape[1] != 3 * 32 * 32:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise DataError(f"{path}: 'data' should be uint8 (N, 3072), found {found}")
    if isinstance(labels, list) and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
                                        for v in labels):
        labels = np.array(labels, dtype=np.int64)
    if not isinstance(labels, np.ndarray) or labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        found = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else f"a {type(labels).__name__}"
        raise DataError(f"{path}: {label_key!r} should be {data.shape[0]} integers (0 or more), found {found}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: {part} labels run from {labels.min()} to {labels.max()} but there are "
                        f"{num_classes} class names in {meta.name}; the files do not belong together")
    # Rows hold the red plane, then green, then blue, each 32 x 32 in row-major order.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _names(path: Path, key: str) -> list[str]:
    names = _field(load_pickle(path), key, path)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: {key!r} should be a list of class names")
    # A list may repeat one memoised name many times over: count what decoding would build.
    if sum(len(n) for n in names) > path.stat().st_size:
        raise DataError(f"{path}: {key!r} repeats its names beyond what the file holds; re-extract the "
                        "official python tarball")
    try:
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: a class name in {key!r} is not UTF-8 text ({err})") from None


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
        meta = folder / "batches.meta"
        names = _names(meta, "label_names")
        batches = [_images_and_labels(folder / f"data_batch_{i}", "labels", "train", meta, len(names))
                   for i in range(1, 6)]
        train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
        test = _images_and_labels(folder / "test_batch", "labels", "test", meta, len(names))
    else:
        meta = folder / "meta"
        names = _names(meta, "fine_label_names")
        train = _images_and_labels(folder / "train", "fine_labels", "train", meta, len(names))
        test = _images_and_labels(folder / "test", "fine_labels", "test", meta, len(names))
    return train, test, names
