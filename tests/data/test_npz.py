"""Arrays in an .npz file: x (N, H, W[, C]) uint8, y (N,) integers, optional class_names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitkit.data import load_data
from vitkit.errors import DataError


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_with_channels_last_and_class_names(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    spec = _write(tmp_path / "set.npz", x=x, y=y.astype(np.int32), class_names=np.array(["a", "b", "c", "d"]))
    splits = load_data(spec, val_fraction=0.25, test_fraction=0.25)
    assert splits.class_names == ["a", "b", "c", "d"] and splits.source == f"npz:{spec}"
    assert splits.train.images.shape[1:] == (3, 6, 5) and splits.train.labels.dtype == torch.int64
    everything = torch.cat([splits.train.images, splits.val.images, splits.test.images])
    assert sorted(map(bytes, everything.permute(0, 2, 3, 1).numpy())) == sorted(map(bytes, x))


def test_npz_grey_without_names_counts_classes_from_labels(tmp_path):
    spec = _write(tmp_path / "g.npz", x=np.zeros((12, 4, 4), np.uint8), y=np.arange(12) % 3)
    splits = load_data(spec, val_fraction=0, test_fraction=0)
    assert splits.class_names == ["0", "1", "2"] and splits.channels == 1


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 4, 4), np.uint8)}, "has no y array"),
    ({"x": np.zeros((4, 4, 4), np.float32), "y": np.zeros(4, int)}, "x is float32; it must be uint8"),
    ({"x": np.zeros((4, 4), np.uint8), "y": np.zeros(4, int)}, r"x has shape \(4, 4\)"),
    ({"x": np.zeros((4, 4, 4, 2), np.uint8), "y": np.zeros(4, int)}, "C 1 or 3"),
    ({"x": np.zeros((4, 4, 4), np.uint8), "y": np.zeros(3, int)}, "it must be 4 integer labels"),
    ({"x": np.zeros((4, 4, 4), np.uint8), "y": np.zeros(4, float)}, "it must be 4 integer labels"),
    ({"x": np.zeros((4, 4, 4), np.uint8), "y": np.array([0, 1, 2, -1])}, "labels run from -1 to 2"),
    ({"x": np.zeros((4, 4, 4), np.uint8), "y": np.array([0, 1, 2, 3]), "class_names": np.array(["a", "b"])},
     "labels run from 0 to 3 but there are 2 classes"),
    ({"x": np.zeros((4, 4, 4), np.uint8), "y": np.zeros(4, int), "class_names": np.array([["a"]])},
     "class_names is <U1 \\(1, 1\\)"),
])
def test_bad_npz_contents_are_named(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_data(_write(tmp_path / "bad.npz", **arrays))


def test_npz_with_pickled_objects_is_not_unpickled(tmp_path):
    spec = _write(tmp_path / "obj.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, int),
                  class_names=np.array(["a", None], dtype=object))
    with pytest.raises(DataError, match="holds pickled objects, which vitkit does not load"):
        load_data(spec)


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="is not a readable .npz file"):
        load_data(str(tmp_path / "junk.npz"))
