"""Shard folders (`dataset.json` + tar shards, what `vitkit shard` writes) through `load_data` and
one streamed epoch (`ShardBatches`): a damaged index or shard, any value in the index, and
counts out of all proportion to the files give sane batches or one DataError line."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vitkit.data import load_data
from vitkit.data.shards import ShardBatches, load_batches, open_shards
from vitkit.errors import VitkitError

from .harness import byte_flips, damaged, json_paths, reads_or_refuses, refusal_under_address_cap
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


# ----------------------------------------------------------------------------- members the shard cannot back

_BLOCK = 512


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % _BLOCK)


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def gnu_sparse_member(name: str, stored: bytes, real_size: int) -> bytes:
    """A GNU sparse member (type "S", as `tar --sparse` writes): `stored` is its only data, at
    offset 0 of a file of `real_size` bytes whose rest is a hole the archive does not store."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(stored), 0o644
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:410] = tarfile.itn(0, 12, tarfile.GNU_FORMAT) + tarfile.itn(len(stored), 12, tarfile.GNU_FORMAT)
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)
    return _with_checksum(header) + _padded(stored)


def member(name: str, data: bytes, declared: int | None = None) -> bytes:
    """A plain member; `declared` overrides the size its header gives."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data) if declared is None else declared, 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT) + _padded(data)


def pax_member(name: str, data: bytes, declared_records: int) -> bytes:
    """A member behind a PAX extended header whose own size field says `declared_records` bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.pax_headers = len(data), 0o644, {"comment": "x"}
    headers = bytearray(info.tobuf(format=tarfile.PAX_FORMAT))
    headers[124:136] = tarfile.itn(declared_records, 12, tarfile.GNU_FORMAT)
    return _with_checksum(headers[:_BLOCK]) + bytes(headers[_BLOCK:]) + _padded(data)


def shard_of(*members: bytes) -> bytes:
    return b"".join(members) + bytes(2 * _BLOCK)


def one_shard_folder(folder, shard: bytes):
    """A shard folder whose train split is this one shard of one sample."""
    index = json.loads(json.dumps(INDEX))
    index["splits"] = {"train": {"shards": [{"file": "train-000000.tar", "samples": 1, "bytes": len(shard)}]}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(index))
    (folder / "train-000000.tar").write_bytes(shard)
    return folder


PNG = shard_folder()["train-000000.tar"][_BLOCK:_BLOCK + 8]  # the signature is enough to be read as one


@pytest.mark.parametrize("shard, expected", [
    # A 6 GiB PNG in a 3 kB shard: tarfile fills the holes with NULs when the member is read
    # (the MemoryError in `buf += NUL * length`; a 1.5 GB one peaked at 3.4 GB and trained).
    (shard_of(gnu_sparse_member("000000.png", PNG, 6 << 30), member("000000.cls", b"0")), "sparse"),
    # A PAX header whose records declare 6 GiB: tarfile reads them at once while listing the shard.
    (shard_of(pax_member("000000.png", PNG, 6 << 30), member("000000.cls", b"0")), "train-000000.tar"),
])
def test_regression_members_the_shard_cannot_back(tmp_path, shard, expected):
    root = one_shard_folder(tmp_path / "shards", shard)
    assert len(shard) <= 8 * _BLOCK
    refusal = refusal_under_address_cap(f"""
        from vitkit.data.shards import ShardBatches, load_batches, open_shards
        for call in (lambda: vitkit.data.load_data({str(root)!r}, quiet=True),
                     lambda: list(load_batches(ShardBatches(open_shards({str(root)!r}).train, batch_size=1,
                                                            image_size=8, channels=3)))):
            try:
                call()
            except VitkitError as err:
                print("REFUSED:", err)
            else:
                print("READ")
    """)
    assert refusal is not None and "train-000000.tar" in refusal and expected in refusal


def test_a_member_declaring_more_than_the_shard_holds_is_one_error(tmp_path):
    # tarfile stops at the end of the file before it yields such a member (this passed before
    # the sparse members were refused; it guards the way the shards are opened).
    shard = shard_of(member("000000.cls", b"0"), member("000000.png", PNG, declared=6 << 30)[:3 * _BLOCK])
    root = one_shard_folder(tmp_path / "shards", shard)
    refusal = refusal_under_address_cap(f"vitkit.data.load_data({str(root)!r}, quiet=True)")
    assert refusal is not None and "train-000000.tar is damaged" in refusal


def test_regression_index_shards_refuses_a_sparse_member(tmp_path):
    # `vitkit shard --index` (index_shards) reads every sample of shards another tool wrote.
    (tmp_path / "train-000000.tar").write_bytes(
        shard_of(gnu_sparse_member("000000.png", PNG, 6 << 30), member("000000.cls", b"0")))
    refusal = refusal_under_address_cap(f"""
        from vitkit.data.shard_writer import index_shards
        index_shards({str(tmp_path)!r}, quiet=True)
    """)
    assert refusal is not None and "train-000000.tar" in refusal and "sparse" in refusal


# ----------------------------------------------------------------------------- the pixel limit is the user's


def bomb_shard_folder(folder, index_changes: dict, side: int = 20000):
    """One sample, a 1-bit PNG of side x side black pixels (50 kB for 20000), in a folder whose
    dataset.json carries `index_changes`."""
    from .test_image_limits import bomb

    root = one_shard_folder(folder, shard_of(member("000000.cls", b"0"), member("000000.png", bomb(side))))
    index = json.loads((root / "dataset.json").read_text())
    index.update(index_changes)
    (root / "dataset.json").write_text(json.dumps(index))
    return root


def test_regression_a_shard_folder_cannot_turn_the_pixel_limit_off(tmp_path):
    # "max_image_pixels": 0 in dataset.json let a 50 kB PNG of 20000 x 20000 pixels decode
    # (400 MB as grey, the 389 kB one 2.6 GB) even under --max-image-pixels 1000.
    root = bomb_shard_folder(tmp_path / "shards", {"max_image_pixels": 0})
    assert (root / "train-000000.tar").stat().st_size < 100_000
    refusal = refusal_under_address_cap(f"""
        from vitkit.data.shards import ShardBatches, load_batches, open_shards
        split = open_shards({str(root)!r}, max_image_pixels=1000).train
        list(load_batches(ShardBatches(split, batch_size=1, image_size=8, channels=1)))
    """)
    assert refusal is not None and "000000.png cannot be decoded (over the limit of 1000 pixels" in refusal
    # Without a flag the environment's limit or the default applies, as to an image folder.
    refusal = refusal_under_address_cap(f"vitkit.data.load_data({str(root)!r}, quiet=True)")
    assert refusal is not None and "000000.png cannot be decoded (over the limit of 89478485 pixels" in refusal


@pytest.mark.parametrize("recorded, asked, applies", [
    (None, None, 89_478_485), (0, None, 89_478_485), (0, 1000, 1000), (1000, 0, 1000), (1000, 5000, 1000),
    (5000, 1000, 1000), (10**12, None, 89_478_485), (10**12, 0, 10**12),
])
def test_dataset_json_can_lower_the_pixel_limit_never_raise_it(tmp_path, recorded, asked, applies):
    root = one_shard_folder(tmp_path / "shards", shard_folder()["train-000000.tar"])
    index = {**json.loads((root / "dataset.json").read_text()), "max_image_pixels": recorded, "image_size": [10, 12]}
    (root / "dataset.json").write_text(json.dumps(index))
    assert open_shards(root, max_image_pixels=asked).train.max_image_pixels == applies


def test_a_recorded_limit_below_the_images_refuses_them(tmp_path):
    root = bomb_shard_folder(tmp_path / "shards", {"max_image_pixels": 99, "image_size": [8, 8]}, side=10)
    with pytest.raises(VitkitError, match="000000.png cannot be decoded .over the limit of 99 pixels"):
        load_data(str(root), max_image_pixels=0, quiet=True)


def test_regression_fewshot_on_a_shard_folder_asking_for_30000_squared_images(tmp_path):
    # "image_size": [30000, 30000] with "max_image_pixels": 0 made `vitkit fewshot` resize toward
    # 30000^2 (5.5 GB, a MemoryError traceback). Image sizes in dataset.json are held to the
    # user's limit.
    import vitkit

    from .valid_files import tiny_model

    root = bomb_shard_folder(tmp_path / "shards", {"max_image_pixels": 0, "image_size": [30000, 30000]}, side=10)
    vitkit.save(tiny_model(num_classes=2), tmp_path / "m.safetensors")
    refusal = refusal_under_address_cap(f"""
        import contextlib, io, json
        from vitkit.cli.main import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["fewshot", {str(tmp_path / "m.safetensors")!r}, "--data", {str(root)!r}, "--no-cache",
                         "--quiet"])
        print("REFUSED:", json.dumps([code, err.getvalue()]))
    """)
    code, error = json.loads(refusal)
    assert code == 2 and len(error.strip().splitlines()) == 1
    assert "dataset.json: image_size 30000x30000 is over the limit of 89478485 pixels; raise max_image_pixels" in error
