"""A pickle that would run code, fed to every reader vitkit has: each refuses it with one
VitkitError line, and the marker file its payload would create never appears. The payload is
checked to work, so a reader that unpickled it would leave the marker behind."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

import vitkit
from vitkit.data import load_data, read_images
from vitkit.errors import CheckpointError, ConfigError, DataError, VitkitError
from vitkit.evaluate.features import cache_path, cached_features
from vitkit.train.config import TrainConfig
from vitkit.train.state import load_training_state

from .harness import reads_or_refuses
from .test_run_folder_fuzz import FEATURES, IMAGES, MODEL
from .valid_files import cifar_batch, hf_files, write_cifar10


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def payloads(marker) -> dict[str, bytes]:
    """The attack in each way a file can carry a pickle."""
    evil = RunsCode(marker)
    out = {f"pickle protocol {p}": pickle.dumps({"patch_embed.proj.weight": evil}, protocol=p) for p in (0, 2, 4, 5)}
    for name, zipped in (("torch zip", True), ("torch legacy", False)):
        buffer = io.BytesIO()
        torch.save({"state_dict": {"patch_embed.proj.weight": evil}}, buffer, _use_new_zipfile_serialization=zipped)
        out[name] = buffer.getvalue()
    return out


def test_the_payloads_do_run_code_when_unpickled(tmp_path):
    for name, data in payloads(tmp_path / "marker").items():
        if name.startswith("pickle"):
            pickle.loads(data)
        else:
            torch.load(io.BytesIO(data), weights_only=False)
        assert (tmp_path / "marker").exists(), name
        (tmp_path / "marker").unlink()


def refused(call, kind: type[VitkitError], marker, names) -> VitkitError:
    result = reads_or_refuses(call, names=names)
    assert isinstance(result, kind), result
    assert not marker.exists(), "the pickle ran code"
    return result


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
def test_torch_checkpoints(tmp_path, suffix):
    marker = tmp_path / "marker"
    for name, data in payloads(marker).items():
        path = tmp_path / f"evil{suffix}"
        path.write_bytes(data)
        error = refused(lambda: vitkit.load(path), CheckpointError, marker, path.name)
        assert "refused" in str(error) or "cannot read" in str(error), name


def test_hugging_face_pytorch_model_bin(tmp_path):
    marker = tmp_path / "marker"
    for data in payloads(marker).values():
        directory = tmp_path / "hf"
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_bytes(hf_files()["config.json"])
        (directory / "pytorch_model.bin").write_bytes(data)
        refused(lambda: vitkit.load(directory), CheckpointError, marker, "pytorch_model.bin")


@pytest.mark.parametrize("name", ["m.safetensors", "last.safetensors", "model.safetensors"])
def test_safetensors_names_never_unpickle(tmp_path, name):
    marker = tmp_path / "marker"
    for data in payloads(marker).values():
        (tmp_path / name).write_bytes(data)
        refused(lambda: vitkit.load(tmp_path / name), CheckpointError, marker, name)
        refused(lambda: load_training_state(tmp_path / name), CheckpointError, marker, name)


def _object_array_npz(marker, **arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, evil=np.array([RunsCode(marker)], dtype=object))
    return buffer.getvalue()


def test_npz_data_sets_and_google_checkpoints(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "d.npz").write_bytes(_object_array_npz(marker, x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2, int)))
    error = refused(lambda: load_data(str(tmp_path / "d.npz")), DataError, marker, "d.npz")
    assert "holds pickled objects, which vitkit does not load" in str(error)
    (tmp_path / "m.npz").write_bytes(_object_array_npz(marker, **{"embedding/kernel": np.zeros((4, 4, 3, 8))}))
    error = refused(lambda: vitkit.load(tmp_path / "m.npz"), CheckpointError, marker, "m.npz")
    assert "refused" in str(error)


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar_batches(tmp_path, name):
    marker = tmp_path / "marker"
    for protocol in (0, 2, 4, 5):
        batch = pickle.loads(cifar_batch())
        batch[b"data" if name != "batches.meta" else b"label_names"] = RunsCode(marker)
        root = write_cifar10(tmp_path / f"c{protocol}", {name: pickle.dumps(batch, protocol=protocol)})
        error = refused(lambda: load_data(str(root)), DataError, marker, name)
        assert "refused global posix.system" in str(error) or "refused global nt.system" in str(error)


def test_yaml_configs(tmp_path):
    marker = tmp_path / "marker"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system"):
        (tmp_path / "config.yaml").write_text(f"epochs: {tag} [\"touch '{marker}'\"]\n")
        error = refused(lambda: TrainConfig.from_yaml(tmp_path / "config.yaml"), ConfigError, marker, "config.yaml")
        assert "not valid YAML" in str(error)


def test_json_files(tmp_path):
    marker = tmp_path / "marker"
    for data in payloads(marker).values():
        directory = tmp_path / "hf"
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_bytes(data)
        (directory / "model.safetensors").write_bytes(hf_files()["model.safetensors"])
        refused(lambda: vitkit.load(directory), CheckpointError, marker, "config.json")


def test_image_files(tmp_path):
    marker = tmp_path / "marker"
    for data in payloads(marker).values():
        (tmp_path / "evil.png").write_bytes(data)
        refused(lambda: read_images([tmp_path / "evil.png"], 8, 3), DataError, marker, "evil.png")


def test_feature_cache_entries(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(b"checkpoint bytes")
    path = cache_path(checkpoint, "test", IMAGES, cache_dir=tmp_path / "cache")
    for data in payloads(marker).values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        features = reads_or_refuses(lambda: cached_features(checkpoint, MODEL, "test", IMAGES,
                                                            cache_dir=tmp_path / "cache", progress=False))
        assert torch.equal(features, FEATURES) and not marker.exists()


def test_index_json_naming_a_pickle_shard(tmp_path):
    marker = tmp_path / "marker"
    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "config.json").write_bytes(hf_files()["config.json"])
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "shard.bin"}}))
    (directory / "shard.bin").write_bytes(payloads(marker)["torch zip"])
    # Shards are read as safetensors only, so the pickle is never unpickled.
    refused(lambda: vitkit.load(directory), CheckpointError, marker, "shard.bin")
