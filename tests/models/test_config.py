"""ModelConfig's preprocessing fields (how a release resizes its images): validated together,
kept through vitkit's checkpoint JSON, and absent (None) in files written before they existed."""

import json

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import vitkit
from vitkit.errors import ConfigError
from vitkit.models.config import ModelConfig

SMALL = dict(image_size=16, patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64, num_classes=3)
RELEASED = dict(interpolation="bicubic", crop_pct=0.875, crop_mode="center")


def test_preprocessing_round_trips_through_a_checkpoint(tmp_path):
    model = vitkit.create_model("custom", **SMALL, **RELEASED)
    vitkit.save(model, tmp_path / "m.safetensors")
    cfg = vitkit.load(tmp_path / "m.safetensors").config
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == ("bicubic", 0.875, "center")
    assert cfg == model.config


def test_files_written_before_the_fields_existed_still_load(tmp_path):
    model = vitkit.create_model("custom", **SMALL)
    vitkit.save(model, tmp_path / "new.safetensors")
    with safe_open(str(tmp_path / "new.safetensors"), "pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    old = json.loads(header["vitkit_config"])
    for key in RELEASED:
        del old[key]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**header, "vitkit_config": json.dumps(old)})
    cfg = vitkit.load(tmp_path / "old.safetensors").config
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == (None, None, None)
    assert cfg == model.config


@pytest.mark.parametrize("options, message", [
    (dict(interpolation="bicubic"), "set together or not at all"),
    (dict(RELEASED, interpolation="lanczos"), "interpolation='lanczos' is not one of"),
    (dict(RELEASED, crop_mode="border"), "crop_mode='border' is not one of center, squash"),
    (dict(RELEASED, crop_pct=1.5), r"crop_pct must be in \(0, 1\]"),
])
def test_preprocessing_is_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**SMALL, **options)
