"""vitkit's own .safetensors model files and training checkpoints, damaged every way: each call
of `vitkit.load` / `load_training_state` gives a sane model (state) or one CheckpointError line."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors.torch import save_file
from hypothesis import given
from hypothesis import strategies as st

import vitkit
from vitkit.errors import CheckpointError
from vitkit.train.state import check_fits_optimizer, load_training_state

from .harness import damaged, json_paths, reads_or_refuses, refusal_under_address_cap
from .valid_files import TINY, native_file, safetensors_bytes, scratch, tiny_model, training_checkpoint

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
          "C64", "U64", "X9"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def assert_sane_model(model) -> None:
    assert isinstance(model, vitkit.VisionTransformer)
    for name, tensor in model.state_dict().items():
        assert tensor.numel() < 10**6, name
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name


def load_bytes(data: bytes, name: str = "m.safetensors", **options):
    with scratch() as folder:
        (folder / name).write_bytes(data)
        result = reads_or_refuses(lambda: vitkit.load(folder / name, **options), names=name)
    if not isinstance(result, CheckpointError):
        assert_sane_model(result)
    return result


@given(damaged(native_file()))
def test_damaged_native_files(data):
    load_bytes(data)


def _config_dict() -> dict:
    return json.loads(tiny_model().config.to_json())


@given(st.sampled_from(sorted(_config_dict())), JSON_VALUES, st.booleans())
def test_native_config_with_any_value(key, value, strict):
    config = {**_config_dict(), key: value}
    model = tiny_model()
    with scratch() as folder:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(folder / "m.safetensors"),
                  metadata={"vitkit_config": json.dumps(config), "format": "vitkit"})
        data = (folder / "m.safetensors").read_bytes()
    load_bytes(data, strict=strict)


def _native_header() -> tuple[dict, bytes]:
    data = native_file()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]), data[8 + size:]


@given(st.data())
def test_native_header_entries_with_wrong_dtypes_shapes_and_offsets(draw):
    header, payload = _native_header()
    names = sorted(k for k in header if k != "__metadata__")
    for name in draw.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        entry = dict(header[name])
        field = draw.draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop"]))
        if field == "drop":
            del header[name]
            continue
        if field == "dtype":
            entry["dtype"] = draw.draw(st.sampled_from(DTYPES))
        elif field == "shape":
            entry["shape"] = draw.draw(st.lists(st.integers(0, 2**62) | st.integers(-3, 40), max_size=5))
        else:
            entry["data_offsets"] = draw.draw(st.lists(st.integers(-1, 2**62) | st.integers(0, len(payload)),
                                                       min_size=0, max_size=3))
        header[name] = entry
    load_bytes(safetensors_bytes(header, payload))


@given(st.sampled_from(["nan", "inf", "-inf"]), st.integers(0, 20))
def test_native_weights_with_non_finite_values(value, which):
    model = tiny_model()
    name = sorted(model.state_dict())[which % len(model.state_dict())]
    with torch.no_grad():
        model.state_dict()[name].view(-1)[0] = float(value)
    with scratch() as folder:
        vitkit.save(model, folder / "m.safetensors")
        result = reads_or_refuses(lambda: vitkit.load(folder / "m.safetensors"), names="m.safetensors")
    assert isinstance(result, CheckpointError)
    assert name in str(result) and "NaN or infinite" in str(result)


@given(st.integers(1, 2**64 - 1))
def test_safetensors_header_length_claiming_anything(length):
    data = native_file()
    load_bytes(struct.pack("<Q", length) + data[8:])


@given(st.integers(2**31, 2**60))
def test_tensor_shape_claiming_terabytes(elements):
    header, payload = _native_header()
    header["head.weight"] = {**header["head.weight"], "shape": [elements, TINY["width"]]}
    result = load_bytes(safetensors_bytes(header, payload))
    assert isinstance(result, CheckpointError)


def test_a_config_describing_a_huge_model_is_refused_before_it_is_built():
    # Regression: depth=10**9 in the header hung building the model; a width of 10**6 would
    # have allocated it.
    for change in ({"depth": 10**9}, {"width": 10**6, "num_heads": 1}, {"width": 10**400}):
        config = {**_config_dict(), **change}
        tensors = {k: v.contiguous() for k, v in tiny_model().state_dict().items()}
        with scratch() as folder:
            save_file(tensors, str(folder / "m.safetensors"),
                      metadata={"vitkit_config": json.dumps(config), "format": "vitkit"})
            for strict in (True, False):
                result = reads_or_refuses(lambda: vitkit.load(folder / "m.safetensors", strict=strict),
                                          names="m.safetensors")
                assert isinstance(result, CheckpointError), change
                assert "config" in str(result)


@pytest.mark.parametrize("options", [
    dict(posemb="sincos2d"), dict(posemb="relative", image_size=(24, 32), distill_token=True),
    dict(posemb="learned2d", posemb_where="every_layer", depth=2), dict(pool="map", posemb="sincos2d"),
    dict(stem="resnet", resnet_layers=(1, 1), resnet_width=32, patch_size=1, image_size=32, pool="gap"),
    dict(posemb="sincos2d", posemb_where="every_layer_shared", representation_size=12),
])
def test_implied_sizes_count_every_tensor_the_model_holds(options):
    # The oracle is the model itself, built for real: its parameters and stored buffers, then the
    # buffers a checkpoint leaves out (the sine-cosine table, the relative index of each block).
    from vitkit.formats.names import implied_sizes

    model = tiny_model(**options)
    stored = model.state_dict()
    built = [b for name, b in model.named_buffers() if name not in stored]
    assert implied_sizes(model.config) == (sum(t.numel() for t in stored.values()), sum(b.numel() for b in built))
    assert options.get("posemb") in ("none", "learned1d", "learned2d", None) or built


def _native_with_config(folder, change: dict, **options):
    """A tiny model's weights under a header whose config has `change` applied."""
    model = tiny_model(**options)
    config = {**json.loads(model.config.to_json()), **change}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "m.safetensors"),
              metadata={"vitkit_config": json.dumps(config), "format": "vitkit"})
    return folder / "m.safetensors"


@pytest.mark.parametrize("options, change, built", [
    # 2048^2 patches of a fixed width-16 table: the 10 kB file loaded after 18 s at 5.4 GB.
    (dict(posemb="sincos2d"), {"image_size": [16384, 16384]}, "67,108,864"),
    # A T x T relative index per block for T = 16,384 tokens: 2 GiB of int64.
    (dict(posemb="relative", pool="gap"), {"image_size": [1024, 1024]}, "268,435,456"),
])
def test_regression_a_tiny_file_cannot_describe_tables_of_any_size(tmp_path, options, change, built):
    path = _native_with_config(tmp_path, change, **options)
    assert path.stat().st_size < 30_000
    refusal = refusal_under_address_cap(f"vitkit.load({str(path)!r})")
    assert refusal == (f"{path}: its config describes a model that builds {built} values of position tables for "
                       f"{change['image_size'][0]}x{change['image_size'][1]} inputs but the file holds "
                       f"{sum(t.numel() for t in tiny_model(**options).state_dict().values()):,} values; "
                       "the config does not belong to these weights")


@pytest.mark.parametrize("asked", ["num_classes=10**9", "image_size=10**6", "image_size=(32, 10**6), patch_size=16",
                                   "mlp_dim=10**9"])
def test_regression_load_arguments_asking_for_a_model_the_file_cannot_back(tmp_path, asked):
    # load(num_classes=10**9) allocated a 10^9-row head, load(image_size=10**6) resampled the
    # position table to (10^6 / patch)^2 rows (the 256 GB and 16 TB; this width-16,
    # patch-8 model's 68 GB and 1 TB); refused before anything is built.
    vitkit.save(tiny_model(), tmp_path / "m.safetensors")
    refusal = refusal_under_address_cap(f"""
        try:
            vitkit.load({str(tmp_path / "m.safetensors")!r}, {asked})
        except ValueError as err:
            assert isinstance(err, VitkitError)
            raise
    """)
    assert refusal is not None and "asks for a model" in refusal and "ask for less" in refusal


@pytest.mark.parametrize("header, expected", [
    (b"[" * 100_000, "unreadable safetensors header"),              # RecursionError in json
    (json.dumps({"__metadata__": 5}).encode(), "metadata"),           # TypeError in `in`
    (json.dumps({"__metadata__": {"vitkit_config": "[" * 100_000}}).encode(), "config"),
    (json.dumps({"__metadata__": {"vitkit_config": json.dumps({**TINY, "width": "wide"})}}).encode(),
     "config"),                                                       # ValueError from int()
    (json.dumps({"__metadata__": {"vitkit_config": json.dumps({**TINY, "image_size": "ab"})}}).encode(),
     "config"),
])
def test_regressions_native_headers(header, expected):
    with scratch() as folder:
        (folder / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
        result = reads_or_refuses(lambda: vitkit.load(folder / "m.safetensors"), names="m.safetensors")
    assert isinstance(result, CheckpointError) and expected in str(result)


# ----------------------------------------------------------------------------- training checkpoints

def assert_sane_training_state(state: dict) -> None:
    assert set(state) == {"model", "objective", "optimizer", "ema", "rng", "progress"}
    assert all(isinstance(v, torch.Tensor) for v in state["objective"].values())
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    assert isinstance(state["optimizer"]["param_groups"], list)
    assert isinstance(state["progress"], dict) and isinstance(state["progress"]["epoch"], int)
    tensors, meta = state["rng"]
    assert tensors["rng.torch"].dtype == torch.uint8


def load_state_bytes(data: bytes):
    with scratch() as folder:
        (folder / "last.safetensors").write_bytes(data)
        result = reads_or_refuses(lambda: load_training_state(folder / "last.safetensors"),
                                  names="last.safetensors")
    if not isinstance(result, CheckpointError):
        assert_sane_training_state(result)
    return result


@given(damaged(training_checkpoint()))
def test_damaged_training_checkpoints(data):
    load_state_bytes(data)


def _training_header() -> tuple[dict, bytes]:
    data = training_checkpoint()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]), data[8 + size:]


@given(st.data())
def test_training_state_json_with_any_value_anywhere(draw):
    header, payload = _training_header()
    state = json.loads(header["__metadata__"]["train_state"])
    paths = [p for p in json_paths(state) if p]
    path = draw.draw(st.sampled_from(paths))
    target = state
    for step in path[:-1]:
        target = target[step]
    if draw.draw(st.booleans()):
        target[path[-1]] = draw.draw(JSON_VALUES)
    elif isinstance(target, dict):
        del target[path[-1]]
    else:
        target.pop(path[-1])
    header["__metadata__"]["train_state"] = json.dumps(state)
    load_state_bytes(safetensors_bytes(header, payload))


@given(st.text(max_size=30) | JSON_VALUES.map(json.dumps))
def test_training_state_header_that_is_not_the_expected_json(text):
    header, payload = _training_header()
    header["__metadata__"]["train_state"] = text
    load_state_bytes(safetensors_bytes(header, payload))


@given(st.sampled_from(["train_state.optim", "train_state.optim.x", "train_state.optim.-1.step",
                        "train_state.optim.99999999999999999999.step", "train_state.rng.torch",
                        "train_state.rng.numpy", "train_state.ema.nope"]),
       st.sampled_from(["F32", "U8", "I64"]), st.lists(st.integers(0, 3), max_size=2))
def test_training_state_tensors_under_odd_names(name, dtype, shape):
    header, payload = _training_header()
    header = {k: v for k, v in header.items() if k != name}
    size = {"F32": 4, "U8": 1, "I64": 8}[dtype] * math.prod(shape)
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(payload), len(payload) + size]}
    load_state_bytes(safetensors_bytes(header, payload + bytes(size)))


def test_regressions_training_state():
    header, payload = _training_header()
    for text, expected in (("{not json", "training state"), ("{}", "training state")):
        header["__metadata__"]["train_state"] = text
        result = load_state_bytes(safetensors_bytes(header, payload))
        assert isinstance(result, CheckpointError) and expected in str(result)


def test_optimiser_state_that_does_not_fit_the_run_is_refused_before_resuming():
    # torch's load_state_dict takes moment tensors of any shape; the first step then failed.
    with scratch() as folder:
        (folder / "last.safetensors").write_bytes(training_checkpoint())
        state = load_training_state(folder / "last.safetensors")
    optimizer = torch.optim.AdamW(tiny_model().parameters(), lr=1e-3)
    check_fits_optimizer(state, optimizer, "last.safetensors")
    kept = state["optimizer"]["state"][0]["exp_avg"]
    state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"optimiser slot exp_avg of parameter 0 has shape \(5,\)"):
        check_fits_optimizer(state, optimizer, "last.safetensors")
    state["optimizer"]["state"][0]["exp_avg"] = kept
    state["optimizer"]["state"][99] = {}
    with pytest.raises(CheckpointError, match="names parameter 99"):
        check_fits_optimizer(state, optimizer, "last.safetensors")
