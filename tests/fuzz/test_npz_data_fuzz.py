""".npz data sets (x, y, class_names) through `vitkit.data.load_data`: damaged archives, arrays of
every dtype and shape, and headers declaring enormous arrays give sane splits or one DataError."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vitkit.data import load_data
from vitkit.errors import DataError

from .harness import damaged, reads_or_refuses
from .valid_files import npy_bytes, npz_dataset, scratch

DTYPES = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=4), hnp.unicode_string_dtypes(max_len=4))


def assert_sane_splits(splits) -> None:
    for part in (splits.train, splits.val, splits.test):
        assert part.images.dtype == torch.uint8 and part.images.ndim == 4
        assert part.labels.dtype == torch.int64 and len(part.labels) == len(part.images)
        if len(part.labels):
            assert 0 <= int(part.labels.min()) and int(part.labels.max()) < len(splits.class_names)
    assert len(splits.class_names) <= 1_000_000


def load_bytes(data: bytes):
    with scratch() as folder:
        (folder / "d.npz").write_bytes(data)
        result = reads_or_refuses(lambda: load_data(str(folder / "d.npz"), val_fraction=0, test_fraction=0,
                                                    quiet=True), names="d.npz")
    if not isinstance(result, DataError):
        assert_sane_splits(result)
    return result


def npz_of(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@given(damaged(npz_dataset()))
def test_damaged_npz_datasets(data):
    load_bytes(data)


@given(st.sampled_from(["x", "y", "class_names"]),
       hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, max_side=5)))
def test_npz_members_of_any_dtype_and_shape(key, array):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8), "y": np.array([0, 1, 0, 1, 0, 1]),
              "class_names": np.array(["cat", "dog"]), key: array}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    load_bytes(buffer.getvalue())


@given(st.integers(-2**63, 2**63 - 1), st.booleans())
def test_npz_labels_of_any_value(label, with_names):
    arrays = {"x": np.zeros((3, 4, 4), np.uint8), "y": np.array([0, 1, label], dtype=np.int64)}
    if with_names:
        arrays["class_names"] = np.array(["a", "b"])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    load_bytes(buffer.getvalue())


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=4), st.sampled_from(["|u1", "<i8", "<f4"]),
       st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_npy_headers_declaring_huge_arrays(shape, dtype, compression):
    real = npy_bytes(np.zeros(4, np.uint8))
    header = real.replace(b"'descr': '|u1'", f"'descr': '{dtype}'".encode()).replace(
        b"(4,)", ("(" + ", ".join(map(str, shape)) + ",)").encode())
    data = npz_of({"x.npy": header, "y.npy": npy_bytes(np.array([0]))}, compression)
    load_bytes(data)


@given(st.integers(2**20, 2**62))
def test_zip_entries_declaring_a_huge_size(declared):
    data = bytearray(npz_of({"x.npy": npy_bytes(np.zeros((2, 4, 4), np.uint8)),
                             "y.npy": npy_bytes(np.array([0, 1]))}))
    # The size fields of the first local header (offset 22) and of its central-directory entry.
    central = data.rfind(b"PK\x01\x02")
    data[22:26] = (declared % 2**32).to_bytes(4, "little")
    data[central + 24:central + 28] = (declared % 2**32).to_bytes(4, "little")
    load_bytes(bytes(data))


def test_regression_npy_header_declaring_93_gib():
    # np.load allocated the declared shape before reading: MemoryError, a crash.
    header = npy_bytes(np.zeros(4, np.uint8)).replace(b"(4,)", b"(100000000000,)")
    result = load_bytes(npz_of({"x.npy": header, "y.npy": npy_bytes(np.array([0]))}))
    assert isinstance(result, DataError) and "declares a 100000000000 uint8 array" in str(result)


def test_regression_member_without_npy_suffix():
    # np.load handed back the raw bytes of a member named "x": AttributeError on .dtype.
    result = load_bytes(npz_of({"x": b"abc", "y.npy": npy_bytes(np.array([0]))}))
    assert isinstance(result, DataError) and "has no x array" in str(result)


def test_regression_damaged_data_is_not_called_pickled():
    # Any ValueError used to be reported as "holds pickled objects".
    header = npy_bytes(np.zeros(4, np.uint8)).replace(b"(4,)", b"(100000,)")
    result = load_bytes(npz_of({"x.npy": header, "y.npy": npy_bytes(np.array([0]))}))
    assert isinstance(result, DataError) and "pickled" not in str(result)


def test_regression_a_huge_label_without_class_names():
    # y = [0, 1, 12400325] without class_names made twelve million class names (MemoryError
    # under the cap; a 2**40 label would never finish).
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 12400325]))
    result = load_bytes(buffer.getvalue())
    assert isinstance(result, DataError) and "labels run up to 12400325 for only 3 images" in str(result)


def test_regression_npy_header_numpy_cannot_tokenize():
    # Found by the deep profile: numpy's header parser fell back to tokenize, which raised
    # TokenError (neither ValueError nor anything np.load users expect).
    header = b"{'descr': '|u1', 'fortran_order'{ False, 'shape': (4,), }"
    padded = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + bytes(4)
    result = load_bytes(npz_of({"x.npy": data, "y.npy": npy_bytes(np.array([0]))}))
    assert isinstance(result, DataError) and "is not a readable .npz file" in str(result)
