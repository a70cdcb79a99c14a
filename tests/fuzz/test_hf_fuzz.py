"""Hugging Face ViT directories (config.json, preprocessor_config.json and model.safetensors,
a sharded index or pytorch_model.bin) through `vitkit.load`: garbage and hostile JSON, wrong
weights, damaged weight files give a sane model or one CheckpointError line."""

from __future__ import annotations

import io
import json

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

import vitkit
from vitkit.errors import CheckpointError

from .harness import damaged, reads_or_refuses, tensor_edits
from .test_native_fuzz import JSON_VALUES, assert_sane_model
from .valid_files import hf_files, scratch

pytestmark = pytest.mark.filterwarnings("ignore:.*strict=False skipped")

CONFIG = json.loads(hf_files()["config.json"])
PREPROCESSOR = json.loads(hf_files()["preprocessor_config.json"])
WEIGHTS = safetensors.torch.load(hf_files()["model.safetensors"])
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.integers(0, 64), st.floats(allow_nan=True))


def load_dir(files: dict[str, bytes], **options):
    with scratch() as folder:
        directory = folder / "vit-hf"
        directory.mkdir()
        for name, data in files.items():
            (directory / name).write_bytes(data)
        result = reads_or_refuses(lambda: vitkit.load(directory, **options), names=directory)
    if not isinstance(result, CheckpointError):
        assert_sane_model(result)
    return result


def with_json(name: str, obj) -> dict[str, bytes]:
    return {**hf_files(), name: json.dumps(obj).encode()}


@given(st.sampled_from(sorted(CONFIG)), JSON_VALUES | NUMBERS, st.booleans())
def test_config_json_with_any_value(key, value, strict):
    load_dir(with_json("config.json", {**CONFIG, key: value}), strict=strict)


@given(st.lists(st.sampled_from(sorted(CONFIG)), min_size=1, max_size=6, unique=True))
def test_config_json_with_keys_missing(keys):
    load_dir(with_json("config.json", {k: v for k, v in CONFIG.items() if k not in keys}))


@given(st.sampled_from(["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                        "image_size", "patch_size", "num_channels"]),
       st.integers(2**24, 2**62), st.booleans())
def test_config_json_declaring_a_huge_model(key, value, strict):
    result = load_dir(with_json("config.json", {**CONFIG, key: value}), strict=strict)
    assert isinstance(result, CheckpointError)


@given(damaged(hf_files()["config.json"]) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_garbage_config_json(data):
    load_dir({**hf_files(), "config.json": data})


@given(st.sampled_from(sorted(PREPROCESSOR)), JSON_VALUES | NUMBERS)
def test_preprocessor_config_with_any_value(key, value):
    load_dir(with_json("preprocessor_config.json", {**PREPROCESSOR, key: value}))


@given(damaged(hf_files()["preprocessor_config.json"]))
def test_garbage_preprocessor_config(data):
    load_dir({**hf_files(), "preprocessor_config.json": data})


@given(damaged(hf_files()["model.safetensors"]))
def test_damaged_model_safetensors(data):
    load_dir({**hf_files(), "model.safetensors": data})


@given(tensor_edits(sorted(WEIGHTS)), st.booleans(), st.booleans())
def test_weights_with_wrong_contents(edit, as_bin, strict):
    tensors = {k: v.contiguous() for k, v in edit(WEIGHTS).items()}
    files = {k: v for k, v in hf_files().items() if k != "model.safetensors"}
    if as_bin:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        files["pytorch_model.bin"] = buffer.getvalue()
    else:
        files["model.safetensors"] = safetensors.torch.save(tensors)
    load_dir(files, strict=strict)


@given(JSON_VALUES | st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3).map(
    lambda m: {"weight_map": m}))
def test_sharded_index_with_any_content(index):
    files = {k: v for k, v in hf_files().items() if k != "model.safetensors"}
    files["model-00001.safetensors"] = hf_files()["model.safetensors"]
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    load_dir(files)


@pytest.mark.parametrize("change, expected", [
    ({"hidden_size": [1]}, "hidden_size"),                  # int(list): TypeError
    ({"hidden_size": "wide"}, "hidden_size"),               # int("wide"): ValueError
    ({"num_hidden_layers": 10**8}, "num_hidden_layers"),    # built 10**8 blocks: a hang
    ({"hidden_size": 10**6, "num_attention_heads": 1}, "config"),  # strict=False allocated it
    ({"id2label": [1, 2]}, "id2label"),                     # list.get: AttributeError
    ({"layer_norm_eps": "tiny"}, "layer_norm_eps"),         # float("tiny"): ValueError
])
def test_regressions_config_json(change, expected):
    result = load_dir(with_json("config.json", {**CONFIG, **change}), strict=False)
    assert isinstance(result, CheckpointError) and expected in str(result)


def test_regression_config_json_nested_too_deep():
    # json.loads raised RecursionError.
    result = load_dir({**hf_files(), "config.json": b"[" * 100_000})
    assert isinstance(result, CheckpointError) and "config.json" in str(result)


def test_regression_preprocessor_mean_that_is_not_numbers():
    # tuple("abc") then float("a"): ValueError.
    result = load_dir(with_json("preprocessor_config.json", {**PREPROCESSOR, "image_mean": "abc"}))
    assert isinstance(result, CheckpointError) and "image_mean" in str(result)


def test_regression_index_naming_shards_that_are_not_strings():
    # sorted({1, "a"}): TypeError; Path(1): TypeError.
    files = {k: v for k, v in hf_files().items() if k != "model.safetensors"}
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {"a": 1, "b": "x.safetensors"}}).encode()
    result = load_dir(files)
    assert isinstance(result, CheckpointError) and "weight_map" in str(result)
