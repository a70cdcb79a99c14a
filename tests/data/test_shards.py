"""Shards: what `vitkit shard` writes comes back byte for byte; every rank and worker of an
epoch reads its own samples exactly once, in an order fixed by (seed, epoch); damaged shards
are one-line DataErrors, from worker processes too; webdataset reads our shards and we read its."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest
import torch
from PIL import Image

from data_writers import write_class_folder, write_image, write_numbered_folder
from vitkit.data import load_data
from vitkit.data import shards as shards_module
from vitkit.data.shard_writer import index_shards, shard_data
from vitkit.data.shards import ShardBatches, load_batches, open_shards
from vitkit.errors import ConfigError, DataError


def _members(path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} of a tar file, read by tarfile alone."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            key, _, extension = info.name.partition(".")
            out.setdefault(key, {})[extension] = tar.extractfile(info).read()
    return out


def _numbers(batches) -> list[list[int]]:
    """Which numbered images (write_numbered_folder) each batch holds; checks their labels."""
    out = []
    for images, labels in batches:
        numbers = images[:, 0, 0, 0].tolist()
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert labels.tolist() == [n % 2 for n in numbers]
        out.append(numbers)
    return out


def _epoch(split, workers=0, **options) -> list[list[int]]:
    options = {"batch_size": 4, "image_size": 4, "channels": 1, "shuffle": True, "buffer_size": 8, **options}
    return _numbers(load_batches(ShardBatches(split, **options), workers))


@pytest.fixture
def numbered(tmp_path):
    """37 numbered images, all in the training split, in shards of 5."""
    root = write_numbered_folder(tmp_path / "numbered", 37)
    shard_data(root, tmp_path / "shards", shard_size=5, val_fraction=0, test_fraction=0, quiet=True)
    return open_shards(tmp_path / "shards").train


def test_every_image_comes_back_byte_for_byte_with_its_label(tmp_path):
    root = write_class_folder(tmp_path / "pets", {"cat": 10, "dog": 10, "eel": 5})
    write_image(root / "dog" / "big.jpg", (12, 9), "RGB", (200, 30, 10))
    index = shard_data(root, tmp_path / "shards", shard_size=4, quiet=True)

    files = Counter((path.read_bytes(), label) for label, name in enumerate(["cat", "dog", "eel"])
                    for path in (root / name).iterdir())
    stored = Counter()
    for name, split in index["splits"].items():
        assert [s["file"] for s in split["shards"]] == [f"{name}-{i:06d}.tar" for i in range(len(split["shards"]))]
        for shard in split["shards"]:
            path = tmp_path / "shards" / shard["file"]
            members = _members(path)
            assert len(members) == shard["samples"] <= 4 and path.stat().st_size == shard["bytes"]
            for key, parts in members.items():
                assert key.startswith(f"{name}-") and parts.keys() in ({"png", "cls"}, {"jpg", "cls"})
                image = parts.get("png", parts.get("jpg"))
                stored[(image, int(parts["cls"].decode("ascii")))] += 1
    assert stored == files

    in_memory = load_data(root, quiet=True)
    assert index["class_names"] == ["cat", "dog", "eel"] and index["channels"] == 3
    assert index["image_size"] == [6, 8]
    assert index["image_sizes"] == {"distinct": 2, "smallest": [6, 8], "largest": [9, 12]}
    assert index["split"] == {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2, "given": []}
    streamed = load_data(tmp_path / "shards")
    for name in ("train", "val", "test"):
        split, expected = index["splits"][name], in_memory.split(name)
        assert split["samples"] == len(expected) == sum(s["samples"] for s in split["shards"])
        assert split["class_counts"] == torch.bincount(expected.labels, minlength=3).tolist()
        # The same images in each split as load_data makes from the folder (in another order).
        got = streamed.split(name)
        assert sorted(zip(got.labels.tolist(), map(bytes, got.images.numpy()))) == \
            sorted(zip(expected.labels.tolist(), map(bytes, expected.images.numpy())))


def test_shards_are_written_in_a_seeded_mixed_order_and_bit_identically(tmp_path):
    root = write_numbered_folder(tmp_path / "numbered", 20)
    for out in ("a", "b"):
        shard_data(root, tmp_path / out, shard_size=10, val_fraction=0, test_fraction=0, quiet=True)
    first = (tmp_path / "a" / "train-000000.tar").read_bytes()
    assert first == (tmp_path / "b" / "train-000000.tar").read_bytes()
    labels = [int(parts["cls"]) for parts in _members(tmp_path / "a" / "train-000000.tar").values()]
    assert 0 < sum(labels) < 10  # both classes in the first shard, not one sorted class folder


def test_two_ranks_with_two_workers_each_see_every_sample_once_in_equal_batches(numbered):
    per_rank = [_epoch(numbered, workers=2, seed=3, epoch=1, rank=rank, world_size=2) for rank in range(2)]
    assert [len(batches) for batches in per_rank] == [5, 5]  # 37 // 2 = 18 images each, batches of 4
    assert [sum(map(len, batches)) for batches in per_rank] == [18, 18]
    seen = [n for batches in per_rank for batch in batches for n in batch]
    assert len(seen) == len(set(seen)) == 36 and set(seen) <= set(range(37))
    # The one image left out sits at the end of this epoch's stream; another epoch leaves out another.
    left_out = set(range(37)) - set(seen)
    other = {n for rank in range(2) for batch in _epoch(numbered, seed=3, epoch=2, rank=rank, world_size=2)
             for n in batch}
    assert set(range(37)) - other != left_out


def test_without_shuffling_ranks_split_everything_in_file_order(numbered):
    parts = [[n for batch in _epoch(numbered, shuffle=False, rank=rank, world_size=2) for n in batch]
             for rank in range(2)]
    assert [len(part) for part in parts] == [19, 18]
    assert sorted(parts[0] + parts[1]) == list(range(37))


def test_the_order_is_a_function_of_seed_and_epoch_only(numbered):
    first = _epoch(numbered, seed=0, epoch=0)
    flat = [n for batch in first for n in batch]
    assert sorted(flat) == list(range(37)) and flat != sorted(flat)
    assert _epoch(numbered, seed=0, epoch=0) == first
    assert _epoch(numbered, workers=2, seed=0, epoch=0) == first  # the batches do not depend on workers
    assert _epoch(numbered, seed=0, epoch=1) != first
    assert _epoch(numbered, seed=1, epoch=0) != first


def test_starting_after_k_batches_gives_the_tail_and_decodes_nothing_it_skips(numbered, monkeypatch):
    full = _epoch(numbered, seed=5, epoch=2)
    decoded = []
    original = shards_module.decode
    monkeypatch.setattr(shards_module, "decode",
                        lambda sample, *args: decoded.append(sample) or original(sample, *args))
    assert _epoch(numbered, seed=5, epoch=2, start_batch=6) == full[6:]
    assert len(decoded) == sum(map(len, full[6:])) == 13
    assert _epoch(numbered, workers=2, seed=5, epoch=2, start_batch=6) == full[6:]
    assert _epoch(numbered, seed=5, epoch=2, start_batch=len(full)) == []


def test_shards_with_nothing_wanted_are_not_opened(numbered, monkeypatch):
    opened = []
    original = shards_module.read_shard
    monkeypatch.setattr(shards_module, "read_shard",
                        lambda path, *args: opened.append(path.name) or original(path, *args))
    last = _epoch(numbered, shuffle=False, start_batch=9)
    assert opened == ["train-000007.tar"]
    assert last == _epoch(numbered, shuffle=False)[9:] and len(last[0]) == 1


def test_a_missing_or_truncated_shard_is_refused_when_opened(numbered):
    root = numbered.root
    data = (root / "train-000002.tar").read_bytes()
    (root / "train-000002.tar").write_bytes(data[:700])
    with pytest.raises(DataError, match=r"shard .*train-000002.tar is 700 bytes but dataset.json says \d+: "
                                        r"truncated or replaced; re-run `vitkit shard`"):
        open_shards(root)
    (root / "train-000002.tar").unlink()
    with pytest.raises(DataError, match=r"shard .*train-000002.tar is missing \(dataset.json lists it\)"):
        open_shards(root)


def _overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _member(path, index: int) -> tarfile.TarInfo:
    with tarfile.open(path) as tar:
        return tar.getmembers()[index]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_header_is_one_data_error_line_even_from_workers(numbered, workers):
    path = numbered.path(0)
    _overwrite(path, _member(path, 4).offset, b"\xff" * 512)  # the third sample's header
    with pytest.raises(DataError) as err:
        _epoch(numbered, workers=workers, shuffle=False)
    assert str(err.value) == (f"shard {path} ends after 2 samples but dataset.json lists more: truncated or damaged; "
                              "re-run `vitkit shard` to write the shards again")


def test_damaged_image_bytes_and_labels_are_named(numbered):
    path = numbered.path(0)
    image, label = _member(path, 0), _member(path, 3)
    _overwrite(path, image.offset_data, b"\x00" * image.size)
    with pytest.raises(DataError, match=rf"shard train-000000.tar: sample {image.name} cannot be decoded \(not a "
                                        r"readable image"):
        _epoch(numbered, shuffle=False)
    shard_data(numbered.root.parent / "numbered", numbered.root, shard_size=5, val_fraction=0, test_fraction=0,
               overwrite=True, quiet=True)
    _overwrite(path, label.offset_data, b"x")
    with pytest.raises(DataError, match=r"sample train-000000001 has label b'x', not a class index"):
        _epoch(numbered, shuffle=False)


def test_an_index_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json is not readable JSON"):
        open_shards(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "something else"}))
    with pytest.raises(DataError, match="not a dataset index written by `vitkit shard`: no \"format\""):
        load_data(tmp_path)


def test_an_occupied_out_folder_is_refused_unless_overwriting(tmp_path):
    root = write_numbered_folder(tmp_path / "numbered", 12)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty; pass --overwrite to replace the shards there"):
        shard_data(root, tmp_path / "out", quiet=True)
    shard_data(root, tmp_path / "out", shard_size=2, overwrite=True, quiet=True)
    shard_data(root, tmp_path / "out", shard_size=100, overwrite=True, quiet=True)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["dataset.json", "notes.txt", "test-000000.tar", "train-000000.tar", "val-000000.tar"]
    with pytest.raises(ConfigError, match="inside the image folder"):
        shard_data(root, root / "shards", quiet=True)


def test_bad_images_stop_sharding_or_are_skipped_and_counted(tmp_path):
    root = write_numbered_folder(tmp_path / "numbered", 12)
    (root / "c0" / "junk.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"1 unreadable image file\(s\) in .*: c0/junk.png .*--skip-bad-images"):
        shard_data(root, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    index = shard_data(root, tmp_path / "out", skip_bad_images=True, quiet=True)
    assert index["notes"] == ["skipped 1 unreadable image file(s): c0/junk.png (not a readable image: unknown format "
                              "or damaged header)"]
    assert sum(split["samples"] for split in index["splits"].values()) == 12


wds = pytest.importorskip("webdataset")


def test_webdataset_reads_our_shards(tmp_path):
    root = write_class_folder(tmp_path / "pets", {"cat": 6, "dog": 6}, suffix=".jpg")
    index = shard_data(root, tmp_path / "shards", shard_size=4, quiet=True)
    urls = [str(tmp_path / "shards" / s["file"]) for split in index["splits"].values() for s in split["shards"]]
    decoded = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(decoded) == 12
    assert all(s["cls"] in (0, 1) and s["jpg"].size == (8, 6) for s in decoded)
    raw = wds.WebDataset(urls, shardshuffle=False)
    files = Counter((path.read_bytes(), label) for label, name in enumerate(["cat", "dog"])
                    for path in (root / name).iterdir())
    assert Counter((s["jpg"], int(s["cls"])) for s in raw) == files


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_we_read_shards_webdataset_writes(tmp_path):
    for split, numbers in (("train", range(0, 11)), ("val", range(11, 14)), ("test", range(14, 17))):
        with wds.ShardWriter(str(tmp_path / f"{split}-%06d.tar"), maxcount=4, verbose=0) as sink:
            for n in numbers:
                sink.write({"__key__": f"sample{n:04d}", "png": _png(n), "cls": n % 2})
    index = index_shards(tmp_path, ["even", "odd"], quiet=True)
    assert [index["splits"][s]["samples"] for s in ("train", "val", "test")] == [11, 3, 3]
    assert [s["file"] for s in index["splits"]["train"]["shards"]] == [f"train-00000{i}.tar" for i in range(3)]
    assert index["channels"] == 1 and index["image_size"] == [4, 4]
    shards = open_shards(tmp_path)
    assert shards.class_names == ["even", "odd"]
    assert [n for batch in _epoch(shards.train, shuffle=False) for n in batch] == list(range(11))
    assert sorted(n for batch in _epoch(shards.test, workers=2) for n in batch) == [14, 15, 16]
