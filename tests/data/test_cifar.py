"""CIFAR-10/100 python batches: read in the official layout, and never by running code."""

from __future__ import annotations

import builtins
import os
import pickle

import numpy as np
import pytest
import torch

from data_writers import write_cifar10, write_cifar100
from vitkit.data import load_data
from vitkit.errors import DataError


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_batches_become_images_in_plane_order(tmp_path, protocol):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=20, protocol=protocol)
    splits = load_data(str(folder), val_fraction=0.1)
    assert splits.source == f"cifar10:{folder}"
    assert splits.class_names[:3] == ["airplane", "automobile", "bird"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    assert torch.bincount(splits.val.labels).tolist() == [1] * 10
    with open(folder / "test_batch", "rb") as f:
        test_batch = pickle.load(f, encoding="bytes")
    first = test_batch[b"data"][0]
    assert torch.equal(splits.test.images[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))
    assert splits.test.labels.tolist() == test_batch[b"labels"]


def test_cifar_written_by_numpy_1_is_read(tmp_path):
    folder = write_cifar10(tmp_path / "c", per_batch=10, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert len(load_data(str(folder)).test) == 10


def test_cifar100_uses_fine_labels_and_names(tmp_path):
    folder = write_cifar100(tmp_path / "cifar-100-python")
    splits = load_data(str(folder), val_fraction=0.5, image_size=16)
    assert splits.source.startswith("cifar100:")
    assert splits.num_classes == 100 and splits.class_names[7] == "fine7"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 100, 100)
    assert splits.test.labels.max() == 99 and splits.train.images.shape[1:] == (3, 16, 16)


class _TouchesMarker:
    """Unpickling this calls `function(marker, ...)`: code a data file should never run."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("make_payload", [
    lambda marker: _TouchesMarker(os.system, f"touch {marker}"),
    lambda marker: _TouchesMarker(builtins.open, str(marker), "w"),
    lambda marker: _TouchesMarker(np.save, str(marker), np.zeros(1)),
])
def test_a_pickle_naming_any_other_global_is_refused_and_not_run(tmp_path, make_payload):
    folder = write_cifar10(tmp_path / "c", per_batch=10)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": make_payload(marker), b"labels": [0] * 10}, f)
    with pytest.raises(DataError, match=r"data_batch_3 is not a plain CIFAR batch \(refused global"):
        load_data(str(folder))
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


def test_truncated_and_wrong_shaped_batches_are_refused(tmp_path):
    folder = write_cifar10(tmp_path / "c", per_batch=10)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:100])
    with pytest.raises(DataError, match="test_batch is not a readable CIFAR batch"):
        load_data(str(folder))
    folder = write_cifar10(tmp_path / "d", per_batch=10)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10}, f)
    with pytest.raises(DataError, match=r"'data' should be uint8 \(N, 3072\)"):
        load_data(str(folder))


def test_labels_beyond_the_class_names_are_refused(tmp_path):
    folder = write_cifar10(tmp_path / "c", per_batch=10)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(DataError, match="test labels run from 0 to 10 but there are 10 class names"):
        load_data(str(folder))


def test_the_name_cifar10_explains_that_nothing_is_downloaded():
    with pytest.raises(DataError, match="extract the official python tarball"):
        load_data("cifar10")


def test_the_folder_the_tarball_was_extracted_into_also_works(tmp_path):
    folder = write_cifar100(tmp_path / "downloads" / "cifar-100-python", n_train=100, n_test=100)
    splits = load_data(str(tmp_path / "downloads"))
    assert splits.source == f"cifar100:{folder}" and len(splits.test) == 100
