"""Shard folders (`dataset.json` + tar shards, what `vitkit shard` writes) through `load_data` and
one streamed epoch (`ShardBatches`): a damaged index or shard, any value in the index, and
counts out of all proportion to the files give sane batches or one DataError line."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vitkit.data import load_data
from vitkit.data.shards import ShardBatches, load_batches, open_shards
from vitkit.errors import VitkitError

from .harness import byte_flips, damaged, json_paths, reads_or_refuses
from .test_native_fuzz import JSON_VALUES
from .test_npz_data_fuzz import assert_sane_splits
from .valid_files import scratch, shard_folder

INDEX = json.loads(shard_folder()["dataset.json"])


def read_folder(files: dict[str, bytes], names: str | None = None):
    """load_data on the folder, then one streamed epoch of its training split."""
    with scratch() as folder:
        for name, data in files.items():
            (folder / name).write_bytes(data)

        def both():
            splits = load_data(str(folder), quiet=True)
            batches = list(load_batches(ShardBatches(open_shards(folder).train, batch_size=4, image_size=8,
                                                     channels=3), 0))
            return splits, batches
        result = reads_or_refuses(both, names=names)
    if not isinstance(result, VitkitError):
        splits, batches = result
        assert_sane_splits(splits)
        for images, labels in batches:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 8, 8)
            assert labels.dtype == torch.int64 and int(labels.max()) < len(splits.class_names)
    return result


@given(damaged(shard_folder()["dataset.json"]) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_damaged_index(data):
    read_folder({**shard_folder(), "dataset.json": data}, "dataset.json")


@given(st.sampled_from([p for p in json_paths(INDEX) if p]), JSON_VALUES | st.integers(2**20, 2**62))
def test_index_with_any_value_anywhere(path, value):
    index = json.loads(json.dumps(INDEX))
    target = index
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    read_folder({**shard_folder(), "dataset.json": json.dumps(index).encode()}, "dataset.json")


@given(st.sampled_from(["train-000000.tar", "train-000001.tar", "train-000002.tar"]), st.data())
def test_damaged_shards_of_the_same_size(name, draw):
    # The index records each shard's size, so a truncated shard is caught by its size; flips are not.
    data = draw.draw(byte_flips(shard_folder()[name], most=16))
    read_folder({**shard_folder(), name: data}, name)


@pytest.mark.parametrize("change, expected", [
    # The sample count planned arrays of that size before any shard was opened: MemoryError.
    (lambda index: index["splits"]["train"]["shards"][0].update(samples=10**12), "claims 1000000000000 samples"),
    (lambda index: index.update(max_image_pixels="lots"), "max_image_pixels"),
])
def test_regressions_index(change, expected):
    index = json.loads(json.dumps(INDEX))
    change(index)
    result = read_folder({**shard_folder(), "dataset.json": json.dumps(index).encode()}, "dataset.json")
    assert isinstance(result, VitkitError) and expected in str(result)


@pytest.mark.parametrize("text", [b"[" * 100_000, b'{"format": "vitkit-shards", "version": ' + b"1" * 5000 + b"}"])
def test_regression_index_json_python_cannot_read(text):
    # json.loads raised RecursionError, or ValueError for a 5000-digit number: neither was caught.
    result = read_folder({**shard_folder(), "dataset.json": text}, "dataset.json")
    assert isinstance(result, VitkitError) and "is not readable JSON" in str(result)


def test_regression_index_image_size_beyond_the_pixel_limit():
    # Found by the fuzzer: image_size [4428478, 10] resized six 12x10 images to 760 MiB.
    index = {**INDEX, "image_size": [4428478, 10]}
    result = read_folder({**shard_folder(), "dataset.json": json.dumps(index).encode()}, "dataset.json")
    assert isinstance(result, VitkitError)
    assert "image_size 4428478x10 is over the limit of 1048576 pixels" in str(result)
