"""CIFAR-10/100 python folders through `vitkit.data.load_data`: damaged batches, batches holding
wrong things, pickles declaring huge lengths or arrays, and lists that repeat one object a
million times give sane splits or one DataError line naming the file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vitkit.data import load_data
from vitkit.errors import DataError

from .harness import damaged, pickles_declaring_sizes, reads_or_refuses, refusal_under_address_cap
from .test_npz_data_fuzz import DTYPES, assert_sane_splits
from .valid_files import CIFAR_LABEL_NAMES, cifar_batch, scratch, write_cifar10

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct

FILES = ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]


def load_with(name: str, data: bytes):
    with scratch() as folder:
        root = write_cifar10(folder / "cifar-10-batches-py", {name: data})
        result = reads_or_refuses(lambda: load_data(str(root), val_fraction=0, test_fraction=0, quiet=True),
                                  names=name)
    if not isinstance(result, DataError):
        assert_sane_splits(result)
        assert result.train.images.shape[1:] == (3, 32, 32)
    return result


class Reduces:
    """Pickles as a call of `function(*args)`: how a batch names numpy's constructors."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@given(st.sampled_from(FILES), st.data())
def test_damaged_batches(name, draw):
    valid = cifar_batch(seed=1) if name != "batches.meta" else pickle.dumps(
        {b"label_names": CIFAR_LABEL_NAMES}, protocol=2)
    load_with(name, draw.draw(damaged(valid)))


@given(st.sampled_from([b"data", b"labels", b"batch_label", "data"]),
       st.one_of(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
                 st.lists(st.integers(-2**70, 2**70) | st.binary(max_size=3) | st.none(), max_size=5),
                 st.integers(), st.binary(max_size=8), st.text(max_size=8), st.none()),
       st.sampled_from([0, 2, 4, 5]))
def test_batches_holding_wrong_values(key, value, protocol):
    batch = pickle.loads(cifar_batch(seed=1))
    batch[key] = value
    load_with("data_batch_2", pickle.dumps(batch, protocol=protocol))


@given(st.one_of(st.lists(st.binary(max_size=12) | st.text(max_size=12), max_size=12), st.integers(),
                 st.binary(max_size=12), st.lists(st.integers(), max_size=3),
                 st.just([b"\xff\xfe"] * 10)))
def test_meta_holding_wrong_names(names):
    load_with("batches.meta", pickle.dumps({b"label_names": names}, protocol=2))


@given(pickles_declaring_sizes(), st.sampled_from(FILES))
def test_pickles_declaring_huge_lengths(data, name):
    result = load_with(name, data)
    assert isinstance(result, DataError)


@given(st.integers(2**24, 2**44), st.sampled_from(["ndarray", "reconstruct"]))
def test_pickles_asking_for_a_huge_array(elements, how):
    shape = (elements // 3072 + 1, 3072)
    array = Reduces(np.ndarray, shape, "u1") if how == "ndarray" else \
        Reduces(_reconstruct, np.ndarray, shape, b"B")
    batch = pickle.loads(cifar_batch(seed=1))
    batch[b"data"] = array
    result = load_with("data_batch_3", pickle.dumps(batch, protocol=2))
    assert isinstance(result, DataError) and "bytes in a" in str(result)


@given(st.integers(1, 20_000), st.integers(1, 4096))
def test_lists_repeating_one_object(times, length):
    repeated = [b"x" * length] * times
    batch = pickle.loads(cifar_batch(seed=1))
    batch[b"labels"] = repeated
    load_with("data_batch_4", pickle.dumps(batch, protocol=2))
    meta = pickle.dumps({b"label_names": repeated}, protocol=2)
    load_with("batches.meta", meta)


@pytest.mark.parametrize("name, obj, expected", [
    # np.ndarray((3_000_000, 3072)) passed every check and was concatenated: 9 GiB and more.
    ("data_batch_1", {b"data": Reduces(np.ndarray, (3_000_000, 3072), "u1"), b"labels": [0]},
     "bytes in a"),
    # A thousand references to one 100 kB name decoded to 100 MB of class names.
    ("batches.meta", {b"label_names": [b"n" * 100_000] * 1000}, "repeats its names"),
    # Names that are not text: str(10**5000) raised ValueError, b"\xff".decode() UnicodeDecodeError.
    ("batches.meta", {b"label_names": [b"\xff"] * 10}, "not UTF-8 text"),
    ("batches.meta", {b"label_names": 7}, "should be a list of class names"),
    # np.asarray of ragged lists: ValueError.
    ("data_batch_1", {b"data": [[1, 2], [3]], b"labels": [0, 1]}, "'data' should be uint8 (N, 3072)"),
    # codecs.encode with any codec the pickle named: LookupError, or punycode's quadratic time.
    ("data_batch_1", {b"data": Reduces(__import__("codecs").encode, "x" * 10, "punycode")}, "codec"),
])
def test_regressions_cifar(name, obj, expected):
    result = load_with(name, pickle.dumps(obj, protocol=2))
    assert isinstance(result, DataError) and expected in str(result)


def test_regression_memo_index_declaring_a_huge_table():
    # LONG_BINPUT 2**31 - 1 made the C unpickler grow its memo table to 16 GiB.
    data = b"\x80\x02N" + b"r" + (2**31 - 1).to_bytes(4, "little") + b"."
    result = load_with("data_batch_1", data)
    assert isinstance(result, DataError) and "memo index" in str(result)


class SharedBytesArray:
    """Pickles as numpy does an array, `_reconstruct` then `__setstate__` with the raw bytes, but
    every instance hands over the same bytes object, which the pickler memoises: written once,
    read back for each array."""

    def __init__(self, raw: bytes, dtype: str):
        self.raw, self.dtype = raw, dtype

    def __reduce__(self):
        return (_reconstruct, (np.ndarray, (0,), b"b"),
                (1, (len(self.raw) // 4,), np.dtype(self.dtype), False, self.raw))


class SharedTextBytes:
    """Pickles as Python 3 writes bytes under protocol 2, `_codecs.encode(text, "latin1")`, every
    instance with the same (memoised) text: one string in the file, new bytes for each call."""

    def __init__(self, text: str):
        self.text = text

    def __reduce__(self):
        return __import__("codecs").encode, (self.text, "latin1")


@pytest.mark.parametrize("kind", ["big-endian arrays", "native arrays", "latin-1 bytes"])
def test_regression_one_memoised_byte_string_read_back_for_thousands_of_values(tmp_path, kind):
    # A 1 MB byte string memoised once and reused for 2000 arrays: numpy copies it into each
    # big-endian array (to native order), so a 1.3 MB data_batch_1 took 2 GB (the 269 KB
    # file 803 MB, a 2 MB one 6 GB); _codecs.encode makes new bytes of one memoised text at each
    # call. The unpickler's budget is twice the file's size in total, not per value; native
    # arrays, which numpy could build on the shared bytes, are held to it as well.
    raw = bytes(1 << 20)
    text = raw.decode("latin1")
    make = {"big-endian arrays": lambda: SharedBytesArray(raw, ">u4"),
            "native arrays": lambda: SharedBytesArray(raw, "<u4"),
            "latin-1 bytes": lambda: SharedTextBytes(text)}[kind]
    batch = pickle.loads(cifar_batch(seed=1))
    batch[b"filenames"] = [make() for _ in range(2000)]
    data = pickle.dumps(batch, protocol=2)
    assert len(data) < 1.5 * len(raw)  # for 2000 values of a megabyte each
    root = write_cifar10(tmp_path / "cifar-10-batches-py", {"data_batch_1": data})
    refusal = refusal_under_address_cap(f"vitkit.data.load_data({str(root)!r}, quiet=True)")
    assert refusal is not None and "data_batch_1" in refusal and "in a" in refusal and "-byte file" in refusal


def test_a_genuine_batch_of_arrays_is_read_within_its_budget(tmp_path):
    # The budget counts each array's bytes once; numpy's own pickles of several arrays (of every
    # byte order) stay within the file.
    batch = pickle.loads(cifar_batch(seed=1))
    batch[b"extra"] = [np.arange(300, dtype=">u4"), np.arange(300, dtype="<f8"), np.ones((3, 4), dtype=">i2")]
    for protocol in (2, 4, 5):
        root = write_cifar10(tmp_path / f"p{protocol}", {"data_batch_1": pickle.dumps(batch, protocol=protocol)})
        splits = load_data(str(root), val_fraction=0, test_fraction=0, quiet=True)
        assert len(splits.train) == 20 and splits.train.images.shape[1:] == (3, 32, 32)
