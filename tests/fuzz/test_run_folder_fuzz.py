"""Files vitkit reads back from its own folders: an experiment's summary.json, fewshot scores and
experiment.json, and the feature cache of `vitkit fewshot` / `vitkit probe`. Damaged, they are
recomputed (caches) or refused with one ConfigError naming the file and what to delete."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

from vitkit.errors import ConfigError
from vitkit.evaluate.features import cache_path, cached_features, extract_features
from vitkit.experiments import Settings, get_experiment, run_experiment
from vitkit.experiments.runner import read_fewshot, read_summary

from .harness import damaged, reads_or_refuses
from .test_native_fuzz import JSON_VALUES
from .valid_files import scratch, tiny_model

SUMMARY = {"test_acc": 0.5, "val_acc": 0.75, "epochs": 2, "params": 1000, "train_seconds": 1.5,
           "checkpoint": "runs/x/checkpoints/best.safetensors", "test_n": 40}
FEWSHOT = {"shots": 5, "accuracy": 0.5, "draws": [0.5] * 5, "repeats": 5}


def read_bytes(reader, name: str, data: bytes, *args):
    with scratch() as folder:
        (folder / name).write_bytes(data)
        return reads_or_refuses(lambda: reader(folder / name, *args), names=name)


@given(damaged(json.dumps(SUMMARY).encode()) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_damaged_summaries(data):
    result = read_bytes(read_summary, "summary.json", data)
    if not isinstance(result, ConfigError):
        assert isinstance(result["test_acc"], (int, float)) and isinstance(result["checkpoint"], str)
    else:
        assert "delete the folder" in str(result)


@given(st.sampled_from(sorted(SUMMARY)), JSON_VALUES)
def test_summaries_with_any_value(key, value):
    read_bytes(read_summary, "summary.json", json.dumps({**SUMMARY, key: value}).encode())


@given(damaged(json.dumps(FEWSHOT).encode()) | st.sampled_from(sorted(FEWSHOT)).flatmap(
    lambda key: JSON_VALUES.map(lambda value: json.dumps({**FEWSHOT, key: value}).encode())))
def test_damaged_fewshot_scores_are_computed_again(data):
    result = read_bytes(read_fewshot, "fewshot5.json", data, 5)
    assert result is None or isinstance(result["accuracy"], (int, float, type(None)))


@pytest.mark.parametrize("text", ["{", "[1, 2]", "\xff", "[" * 100_000])
def test_regression_damaged_experiment_marker(tmp_path, text):
    # json.loads(...).get("experiment") raised JSONDecodeError / AttributeError / RecursionError.
    (tmp_path / "experiment.json").write_bytes(text.encode("latin1"))
    settings = Settings(data="digits", out=str(tmp_path), epochs=1, quiet=True)
    result = reads_or_refuses(lambda: run_experiment(get_experiment("posemb"), settings), names="experiment.json")
    assert isinstance(result, ConfigError) and "is damaged" in str(result)


def test_regression_damaged_summary():
    # json.loads of a damaged summary.json raised JSONDecodeError; a list, AttributeError.
    for data in (b'{"test_acc": 0.5', b"[]", json.dumps({**SUMMARY, "epochs": "two"}).encode()):
        result = read_bytes(read_summary, "summary.json", data)
        assert isinstance(result, ConfigError) and "summary.json is damaged" in str(result)


# ----------------------------------------------------------------------------- the feature cache

MODEL = tiny_model().eval()
IMAGES = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
FEATURES = extract_features(MODEL, IMAGES, progress=False)


def _cached_with(entry: bytes) -> torch.Tensor:
    with scratch() as folder:
        checkpoint = folder / "m.safetensors"
        checkpoint.write_bytes(b"a checkpoint's bytes, hashed for the cache key")
        path = cache_path(checkpoint, "test", IMAGES, cache_dir=folder / "cache")
        path.parent.mkdir(parents=True)
        path.write_bytes(entry)
        return reads_or_refuses(lambda: cached_features(checkpoint, MODEL, "test", IMAGES,
                                                        cache_dir=folder / "cache", progress=False))


@given(damaged(safetensors.torch.save({"features": FEATURES.contiguous()})))
def test_damaged_feature_cache_entries(entry):
    features = _cached_with(entry)
    assert features.dtype == torch.float32 and features.shape == FEATURES.shape


@given(st.sampled_from([(4, 16), (3, 16), (4, 15), (4,), (), (4, 16, 1)]),
       st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool]), st.sampled_from(["features", "x"]))
def test_feature_cache_entries_of_the_wrong_shape_or_dtype_are_recomputed(shape, dtype, name):
    entry = safetensors.torch.save({name: torch.zeros(shape, dtype=dtype)})
    features = _cached_with(entry)
    if (shape, dtype, name) != ((4, 16), torch.float32, "features"):
        assert torch.equal(features, FEATURES)


def test_regression_scalar_feature_cache_entry():
    # stored.shape[0] of a 0-d tensor: IndexError.
    assert torch.equal(_cached_with(safetensors.torch.save({"features": torch.zeros(())})), FEATURES)


def test_regression_damaged_fewshot_score_is_computed_again():
    # json.loads of a damaged fewshot5.json raised JSONDecodeError; a list, AttributeError.
    for data in (b'{"accuracy": 0.5', b"[]", b'{"repeats": 5}'):
        assert read_bytes(read_fewshot, "fewshot5.json", data, 5) is None
