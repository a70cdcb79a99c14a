"""Google's .npz checkpoints (the original vit_jax layout and big_vision's) through `vitkit.load`:
damaged archives, arrays of any dtype, shape and value, and enormous declared arrays give a
sane model or one CheckpointError line naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import vitkit
from vitkit.errors import CheckpointError

from .harness import damaged, reads_or_refuses
from .test_native_fuzz import assert_sane_model
from .test_npz_data_fuzz import DTYPES, npz_of
from .valid_files import google_file, npy_bytes, scratch

pytestmark = pytest.mark.filterwarnings("ignore:.*strict=False skipped", "ignore:.*reading only the params")

LAYOUTS = ["original", "big_vision"]


def arrays_of(layout: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(google_file(layout))) as f:
        return {k: f[k] for k in f.files}


def npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_bytes(data: bytes, **options):
    with scratch() as folder:
        (folder / "m.npz").write_bytes(data)
        result = reads_or_refuses(lambda: vitkit.load(folder / "m.npz", **options), names="m.npz")
    if not isinstance(result, CheckpointError):
        assert_sane_model(result)
    return result


@given(st.sampled_from(LAYOUTS).flatmap(lambda layout: damaged(google_file(layout))))
def test_damaged_google_checkpoints(data):
    load_bytes(data)


@given(st.sampled_from(LAYOUTS), st.data(), st.booleans())
def test_google_arrays_of_any_dtype_shape_and_value(layout, draw, strict):
    arrays = arrays_of(layout)
    for _ in range(draw.draw(st.integers(1, 3))):
        name = draw.draw(st.sampled_from(sorted(arrays)))
        arrays[name] = draw.draw(st.one_of(
            hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, max_side=4)),
            hnp.arrays(np.float32, arrays[name].shape,
                       elements=st.floats(allow_nan=True, allow_infinity=True, width=32))))
    load_bytes(npz_bytes(arrays), strict=strict)


@given(st.sampled_from(LAYOUTS), st.data())
def test_google_checkpoints_with_arrays_missing_or_renamed(layout, draw):
    arrays = arrays_of(layout)
    for name in draw.draw(st.lists(st.sampled_from(sorted(arrays)), min_size=1, max_size=4, unique=True)):
        value = arrays.pop(name)
        if draw.draw(st.booleans()):
            arrays[draw.draw(st.sampled_from(["Transformer/encoderblock/x", "Transformer/encoderblock_7/y",
                                              "params/" + name, "embedding/kernel", name + "/extra"]))] = value
    load_bytes(npz_bytes(arrays), strict=draw.draw(st.booleans()))


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=4))
def test_npy_header_declaring_a_huge_kernel(shape):
    arrays = arrays_of("original")
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    members["embedding/kernel.npy"] = npy_bytes(np.zeros(4, np.float32)).replace(
        b"(4,)", ("(" + ", ".join(map(str, shape)) + ",)").encode())
    load_bytes(npz_of(members))


@pytest.mark.parametrize("name, value, expected", [
    # unstack_blocks indexed shape[0] of a scalar: IndexError.
    ("Transformer/encoderblock/LayerNorm_0/scale", np.float32(1), "Transformer/encoderblock/LayerNorm_0/scale"),
    # np.asarray(strings, float32): ValueError.
    ("head/bias", np.array(["a", "b", "c"]), "head/bias"),
    ("head/bias", np.array([1 + 2j, 0, 0], np.complex64), "head/bias"),
])
def test_regressions_google_arrays(name, value, expected):
    arrays = arrays_of("original")
    arrays[name] = value
    result = load_bytes(npz_bytes(arrays))
    assert isinstance(result, CheckpointError) and expected in str(result)


def test_regression_google_npy_header_declaring_gigabytes():
    # np.load allocated the declared (10**11,) float32 kernel before reading: MemoryError.
    arrays = arrays_of("original")
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    members["embedding/kernel.npy"] = npy_bytes(np.zeros(4, np.float32)).replace(b"(4,)", b"(100000000000,)")
    result = load_bytes(npz_of(members))
    assert isinstance(result, CheckpointError) and "declares a 100000000000 float32 array" in str(result)


def test_regression_no_attention_blocks_names_the_file():
    # Found by the deep profile: the error named no file.
    arrays = {k: v for k, v in arrays_of("original").items() if "MultiHeadDotProductAttention" not in k}
    result = load_bytes(npz_bytes(arrays))
    assert isinstance(result, CheckpointError) and "no attention blocks" in str(result)
