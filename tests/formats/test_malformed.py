"""Malformed input is refused with one CheckpointError naming the problem: truncated files,
files of no known layout, and pickles that try to run code (nothing runs)."""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.errors import CheckpointError

from .google_reference import make_params
from .timm_reference import make_state


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_npz(tmp_path):
    np.savez(tmp_path / "c.npz", **make_params("original"))
    with pytest.raises(CheckpointError, match="truncated"):
        vitkit.load(truncate(tmp_path / "c.npz"))


def test_truncated_safetensors(tmp_path):
    save_file(make_state(), str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="truncated"):
        vitkit.load(truncate(tmp_path / "m.safetensors"))


def test_truncated_native_file(tmp_path):
    model = vitkit.create_model(image_size=32, patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64)
    vitkit.save(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError):
        vitkit.load(truncate(tmp_path / "m.safetensors", 0.9))


def test_truncated_pth(tmp_path):
    torch.save(make_state(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="cannot read"):
        vitkit.load(truncate(tmp_path / "m.pth"))


def test_empty_and_garbage_files(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("empty.pth",):
        with pytest.raises(CheckpointError):
            vitkit.load(tmp_path / name)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt"])
def test_random_bytes_as_torch_pickle_are_refused(tmp_path, suffix):
    # Seeded: these seeds include bytes that stop torch's unpickler with IndexError,
    # KeyError and UnicodeDecodeError rather than UnpicklingError (a CI failure once).
    path = tmp_path / f"noise{suffix}"
    for seed in range(300):
        path.write_bytes(random.Random(seed).randbytes(256))
        with pytest.raises(CheckpointError):
            vitkit.load(path)


class RunsCode:
    """Unpickling this calls os.system: a checkpoint that tries to run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    for protocol in (2, 4):
        with open(tmp_path / f"evil{protocol}.pth", "wb") as f:
            pickle.dump({"patch_embed.proj.weight": RunsCode(marker)}, f, protocol=protocol)
    torch.save({"state_dict": RunsCode(marker)}, tmp_path / "evil_zip.pt")
    for name in ("evil2.pth", "evil4.pth", "evil_zip.pt"):
        with pytest.raises(CheckpointError, match="refused .* not plain tensors"):
            vitkit.load(tmp_path / name)
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path):
    arrays = make_params("original")
    arrays["head/kernel"] = np.array([{"not": "a tensor"}], dtype=object)
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(CheckpointError, match="refused"):
        vitkit.load(tmp_path / "c.npz")


def test_non_tensor_values_are_not_a_state_dict(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        vitkit.load(tmp_path / "m.pth")


def test_foreign_names_match_no_format(tmp_path):
    torch.save({"features.0.weight": torch.zeros(3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="match no format"):
        vitkit.load(tmp_path / "resnet.pth")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a ViT checkpoint"):
        vitkit.load(tmp_path / "other.npz")


def test_hf_weights_without_config_json(tmp_path):
    save_file({"vit.embeddings.patch_embeddings.projection.weight": torch.zeros(8, 3, 4, 4)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no config.json"):
        vitkit.load(tmp_path / "model.safetensors")


def test_missing_path_and_onnx_input(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        vitkit.load(tmp_path / "nope.npz")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(CheckpointError, match="export format"):
        vitkit.load(tmp_path / "m.onnx")


def test_native_round_trip_and_overrides(tmp_path):
    model = vitkit.create_model(image_size=32, patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64,
                                num_classes=3)
    vitkit.save(model, tmp_path / "m.safetensors")
    again = vitkit.load(tmp_path / "m.safetensors", num_classes=7)
    assert again.config.num_classes == 7 and again.head.weight.shape == (7, 32)
    with pytest.raises(CheckpointError, match="unknown model option"):
        vitkit.load(tmp_path / "m.safetensors", no_such_option=1)


@pytest.mark.parametrize("arguments, error, message", [
    # num_classes="5" reached reset_head: TypeError "'<' not supported between 'str' and 'int'".
    (dict(num_classes="5"), TypeError, "load option num_classes must be int, not '5'"),
    (dict(image_size="ab"), TypeError, "load option image_size must be"),
    (dict(patch_size=8.0), TypeError, "load option patch_size must be int"),
    (dict(num_classes=-1), ValueError, "cannot apply num_classes=-1 to .*num_classes must be >= 0"),
    (dict(image_size=36), ValueError, "cannot apply image_size=36 to .*not a multiple of the stride 8"),
])
def test_regression_load_arguments_of_the_wrong_type_or_value(tmp_path, arguments, error, message):
    from vitkit.errors import ConfigError

    vitkit.save(vitkit.create_model(image_size=32, patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64,
                                    num_classes=3), tmp_path / "m.safetensors")
    with pytest.raises(error, match=message) as refused:
        vitkit.load(tmp_path / "m.safetensors", **arguments)
    assert isinstance(refused.value, ConfigError)
    assert vitkit.load(tmp_path / "m.safetensors", num_classes=None, image_size=None).config.num_classes == 3


@pytest.mark.parametrize("suffix, kind", [(".png", "PNG"), (".jpg", "JPEG"), (".gif", "GIF"), (".bmp", "BMP"),
                                          (".tiff", "TIFF"), (".webp", "WEBP"), (".ppm", "PPM")])
def test_an_image_where_a_checkpoint_belongs_is_named_for_what_it_is(tmp_path, suffix, kind):
    from PIL import Image

    Image.new("RGB", (9, 7), (200, 30, 30)).save(tmp_path / f"photo{suffix}")
    for name in (f"photo{suffix}", "photo.pth"):  # by its bytes, whatever its name says
        if name != f"photo{suffix}":
            (tmp_path / name).write_bytes((tmp_path / f"photo{suffix}").read_bytes())
        with pytest.raises(CheckpointError) as err:
            vitkit.load(tmp_path / name)
        assert str(err.value) == (f"{tmp_path / name} is a {kind} image, not a checkpoint (.safetensors, .npz, "
                                  ".pth or a Hugging Face folder); was it given where the checkpoint goes?")


def test_two_letters_of_a_bitmap_alone_do_not_make_an_image(tmp_path):
    # "BM" then a size that is not the file's: not a BMP, so the torch reader says what it finds.
    (tmp_path / "odd.pth").write_bytes(b"BM" + b"\x00" * 30)
    with pytest.raises(CheckpointError) as err:
        vitkit.load(tmp_path / "odd.pth")
    assert "image" not in str(err.value) and "truncated or not a checkpoint" in str(err.value)
