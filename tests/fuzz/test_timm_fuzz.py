"""timm state dicts as .pth/.pt (torch zip and legacy pickles, read with weights_only=True) and
.safetensors, damaged and with wrong contents: `vitkit.load` gives a sane model or one
CheckpointError line naming the file."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

import vitkit
from vitkit.errors import CheckpointError

from .harness import damaged, pickles_declaring_sizes, reads_or_refuses, tensor_edits
from .test_native_fuzz import assert_sane_model
from .valid_files import scratch, timm_file

pytestmark = pytest.mark.filterwarnings("ignore:.*strict=False skipped")

TIMM_STATE = safetensors.torch.load(timm_file(".safetensors"))
NAMES = sorted(TIMM_STATE)


def legacy_pickle(tensors: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def load_bytes(data: bytes, name: str, **options):
    with scratch() as folder:
        (folder / name).write_bytes(data)
        result = reads_or_refuses(lambda: vitkit.load(folder / name, num_heads=2, **options), names=name)
    if not isinstance(result, CheckpointError):
        assert_sane_model(result)
    return result


@given(damaged(timm_file(".pth")), st.sampled_from(["m.pth", "m.pt", "pytorch_model.bin"]))
def test_damaged_torch_zip_files(data, name):
    load_bytes(data, name)


@given(damaged(legacy_pickle(TIMM_STATE)))
def test_damaged_legacy_torch_pickles(data):
    load_bytes(data, "m.pth")


@given(damaged(timm_file(".safetensors")))
def test_damaged_timm_safetensors(data):
    load_bytes(data, "m.safetensors")


@given(tensor_edits(NAMES), st.sampled_from(["m.pth", "m.safetensors"]), st.booleans())
def test_timm_state_dicts_with_wrong_contents(edit, name, strict):
    tensors = {k: v.contiguous() for k, v in edit(TIMM_STATE).items()}
    buffer = io.BytesIO()
    if name.endswith(".pth"):
        torch.save(tensors, buffer)
        data = buffer.getvalue()
    else:
        data = safetensors.torch.save(tensors)
    result = load_bytes(data, name, strict=strict)
    if strict and not isinstance(result, CheckpointError):
        loaded = result.state_dict()
        assert all(torch.isfinite(v).all() for v in loaded.values() if v.is_floating_point())


@given(st.sampled_from([[], [1, 2], "weights", 3, {"a": 1}, {"state_dict": [1]}, {"model": {"x": "y"}},
                        {1: torch.zeros(1)}, {"patch_embed.proj.weight": torch.zeros(2, 3, 4, 4),
                                              "blocks.0.norm1.weight": 5}]))
def test_torch_files_holding_other_objects(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    load_bytes(buffer.getvalue(), "m.pth")


class _Skimmer(pickle.Unpickler):
    """Walks over a pickle without building anything it names."""

    def find_class(self, module, name):
        return lambda *args, **kwargs: None

    def persistent_load(self, saved_id):
        return None


def _legacy_storage_size_offset(data: bytes) -> int:
    """Where the legacy format's first storage declares its number of elements: after the
    magic number, protocol, system info, the object and the storage-key pickles."""
    stream = io.BytesIO(data)
    for _ in range(5):
        _Skimmer(stream).load()
    return stream.tell()


@given(st.integers(2**31, 2**62))
def test_legacy_storage_declaring_a_huge_size(elements):
    data = legacy_pickle({"patch_embed.proj.weight": torch.zeros(4)})
    at = _legacy_storage_size_offset(data)
    assert struct.unpack("<q", data[at:at + 8]) == (4,)
    hostile = data[:at] + struct.pack("<q", elements) + data[at + 8:]
    result = load_bytes(hostile, "m.pth")
    assert isinstance(result, CheckpointError)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_regression_non_finite_timm_weights_are_refused(suffix):
    tensors = dict(TIMM_STATE)
    tensors["blocks.0.attn.qkv.weight"] = tensors["blocks.0.attn.qkv.weight"].clone()
    tensors["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    data = buffer.getvalue() if suffix == ".pth" else safetensors.torch.save(tensors)
    result = load_bytes(data, f"m{suffix}")
    assert isinstance(result, CheckpointError) and "NaN or infinite" in str(result)
    assert "blocks.0.attn.qkv.weight" in str(result)


@given(pickles_declaring_sizes())
def test_torch_pickles_declaring_huge_lengths(data):
    result = load_bytes(data, "m.pth")
    assert isinstance(result, CheckpointError)


def test_regression_legacy_pickle_declaring_a_4_gib_string():
    # torch's weights-only unpickler allocated the declared length of a BINUNICODE before
    # reading it: MemoryError under the cap, a 4 GiB allocation without one.
    data = b"\x80\x02X" + struct.pack("<I", 2**32 - 16) + b"abc"
    result = load_bytes(data, "m.pth")
    assert isinstance(result, CheckpointError)
    assert "a damaged pickle (expected 4294967280 bytes in a unicodestring4, but only 3 remain)" in str(result)


def test_regression_legacy_storage_declaring_8_gib():
    # The pickle's persistent id and the storage header both say 2**31 elements: torch
    # allocated 8 GiB before finding the data missing.
    data = legacy_pickle({"patch_embed.proj.weight": torch.zeros(12345)})
    at = _legacy_storage_size_offset(data)
    elements = b"J" + struct.pack("<i", 2**31 - 1)
    hostile = data[:at].replace(b"M90", elements) + struct.pack("<q", 2**31 - 1) + data[at + 8:]
    result = load_bytes(hostile, "m.pth")
    assert isinstance(result, CheckpointError) and "storages declare 2,147,483,647 elements" in str(result)


def test_legacy_files_with_shared_storages_still_load():
    shared = torch.randn(3, 16)
    tensors = {**TIMM_STATE, "head.weight": shared, "head.bias": shared[:, 0]}
    assert isinstance(load_bytes(legacy_pickle(tensors), "m.pth"), vitkit.VisionTransformer)


def test_regression_skipped_tensors_are_named_once():
    # A tensor timm's table skipped was missing again for apply_state, and listed twice.
    tensors = {k: v for k, v in TIMM_STATE.items() if k != "head.bias"}
    with scratch() as folder:
        (folder / "m.safetensors").write_bytes(safetensors.torch.save(tensors))
        with pytest.warns(UserWarning, match=r"skipped 1 tensor\(s\): head.bias$"):
            vitkit.load(folder / "m.safetensors", num_heads=2, strict=False)


def test_regression_legacy_pickle_of_an_unknown_protocol_then_4_gib():
    # Found by the deep profile: the magic-number pickle said protocol 6, which Python's
    # unpickler refuses but torch's reads past; the check gave up there, and torch then
    # allocated the 4 GiB string the next pickle declares.
    data = b"\x80\x06N." + b"\x80\x02X" + struct.pack("<I", 2**32 - 16) + b"abc"
    result = load_bytes(data, "m.pth")
    assert isinstance(result, CheckpointError) and "a damaged pickle (expected 4294967280 bytes" in str(result)


def test_regression_legacy_storage_keys_naming_no_storage():
    # Found by the deep profile: torch's legacy loader asserts each listed key was loaded
    # (AssertionError, not an error type it documents).
    data = legacy_pickle({"patch_embed.proj.weight": torch.zeros(4)})
    stream = io.BytesIO(data)
    for _ in range(4):
        _Skimmer(stream).load()
    keys_start = stream.tell()
    _Skimmer(stream).load()
    hostile = data[:keys_start] + pickle.dumps(["no such storage"], protocol=2) + data[stream.tell():]
    result = load_bytes(hostile, "m.pth")
    assert isinstance(result, CheckpointError) and "no such storage" in str(result)


def test_regression_zip_whose_member_name_is_not_utf8():
    # Found by the deep profile: the .npz probe opened any zip and zipfile raised
    # UnicodeDecodeError for a name flagged UTF-8 that is not.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("\u00e9.npy", b"x")
    data = buffer.getvalue().replace("\u00e9".encode(), b"\x80\x80")
    result = load_bytes(data, "m.pth")
    assert isinstance(result, CheckpointError)
