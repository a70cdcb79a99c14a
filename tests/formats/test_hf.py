"""Hugging Face transformers ViT directories load with HF's own numerics (config.json), and
vitkit models exported to HF load with `from_pretrained` and give the same logits."""

import json

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.errors import CheckpointError
from vitkit.formats import convert

from .conftest import rel_diff

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def tiny_config(**overrides):
    opts = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                image_size=32, patch_size=8, num_labels=5)
    opts.update(overrides)
    return transformers.ViTConfig(**opts)


def hf_logits(model, images):
    with torch.no_grad():
        return model(pixel_values=images).logits


@pytest.fixture
def hf_classifier(tmp_path):
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(tiny_config()).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def test_classifier_matches_transformers(hf_classifier, images):
    hf_model, path = hf_classifier
    model = vitkit.load(path)
    assert model.config.norm_eps == 1e-12 and model.config.act == "gelu"
    assert (model.config.width, model.config.depth, model.config.num_heads) == (32, 2, 4)
    with torch.no_grad():
        assert rel_diff(model(images), hf_logits(hf_model, images)) <= TOL


def test_tanh_gelu_eps_and_labels_come_from_config_json(tmp_path, images):
    torch.manual_seed(1)
    cfg = tiny_config(hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                      id2label={i: f"class{i}" for i in range(5)}, label2id={f"class{i}": i for i in range(5)})
    hf_model = transformers.ViTForImageClassification(cfg).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    model = vitkit.load(tmp_path / "hf")
    assert model.config.act == "gelu_tanh" and model.config.norm_eps == 1e-6
    assert model.config.class_names == tuple(f"class{i}" for i in range(5))
    with torch.no_grad():
        assert rel_diff(model(images), hf_logits(hf_model, images)) <= TOL


def test_vit_model_pooler_is_the_pre_logits_layer(tmp_path, images):
    torch.manual_seed(2)
    hf_model = transformers.ViTModel(tiny_config()).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    model = vitkit.load(tmp_path / "hf")
    assert model.config.num_classes == 0 and model.config.representation_size == 32
    with torch.no_grad():
        assert rel_diff(model(images), hf_model(pixel_values=images).pooler_output) <= TOL


def test_pytorch_model_bin_is_read_with_weights_only(hf_classifier, images):
    hf_model, path = hf_classifier
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(tensors, path / "pytorch_model.bin")
    model = vitkit.load(path)
    with torch.no_grad():
        assert rel_diff(model(images), hf_logits(hf_model, images)) <= TOL


def test_preprocessor_config_sets_the_input_normalisation(hf_classifier):
    _, path = hf_classifier
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    model = vitkit.load(path)
    assert model.config.input_mean == (0.485, 0.456, 0.406)


def test_foreign_model_type_is_refused(hf_classifier):
    _, path = hf_classifier
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "deit"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type='deit'"):
        vitkit.load(path)


def test_wrong_config_is_reported_by_tensor_name(hf_classifier):
    _, path = hf_classifier
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="intermediate.dense.weight: file \\(64, 32\\) vs expected \\(48, 32\\)"):
        vitkit.load(path)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, images, act):
    torch.manual_seed(3)
    model = vitkit.create_model(image_size=32, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64,
                                num_classes=5, act=act, class_names=[f"c{i}" for i in range(5)]).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    src = tmp_path / "m.safetensors"
    vitkit.save(model, src)
    report = convert(src, tmp_path / "hf", "hf")
    assert report["max_rel_diff"] <= TOL
    hf_model = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert rel_diff(hf_logits(hf_model, images), model(images)) <= TOL
    assert hf_model.config.id2label[3] == "c3"


def test_hf_round_trip_through_vitkit(hf_classifier, tmp_path, images):
    hf_model, path = hf_classifier
    convert(path, tmp_path / "again", "hf")
    again = transformers.ViTForImageClassification.from_pretrained(tmp_path / "again").eval()
    assert rel_diff(hf_logits(again, images), hf_logits(hf_model, images)) <= TOL


def test_export_refuses_what_hf_cannot_express(tmp_path):
    model = vitkit.create_model(image_size=32, patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64,
                                num_classes=5, pool="gap")
    src = tmp_path / "m.safetensors"
    vitkit.save(model, src)
    with pytest.raises(CheckpointError, match="class token"):
        convert(src, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("processor, expected", [
    # ViTImageProcessor: squash to size, Pillow BILINEAR unless resample says otherwise.
    ({"size": {"height": 32, "width": 32}}, ("bilinear", 1.0, "squash")),
    ({"size": 32, "resample": 3}, ("bicubic", 1.0, "squash")),
    # DeiT's processor: 256 then the central 224 (crop_pct 0.875).
    ({"size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
      "resample": 3}, ("bicubic", 0.875, "squash")),
    ({"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": 224}, ("bilinear", 0.875, "center")),
    ({"do_resize": False}, (None, None, None)),
])
def test_preprocessor_config_sets_the_resize_and_crop(hf_classifier, processor, expected):
    _, path = hf_classifier
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    cfg = vitkit.load(path).config
    assert (cfg.interpolation, cfg.crop_pct, cfg.crop_mode) == expected


def test_unknown_resample_filter_warns_and_resizes_bilinearly(hf_classifier):
    _, path = hf_classifier
    (path / "preprocessor_config.json").write_text(json.dumps({"size": 32, "resample": 1}))
    with pytest.warns(UserWarning, match="resample=1 is a Pillow filter vitkit does not have"):
        assert vitkit.load(path).config.interpolation == "bilinear"


@pytest.mark.parametrize("processor, message", [
    ({"size": {"width": 32}}, "size needs height and width, or shortest_edge"),
    ({"size": -3}, "size must hold positive integers"),
    ({"size": 32, "do_center_crop": True, "crop_size": 64}, "crop_size 64 is larger than size 32"),
])
def test_unreadable_preprocessor_sizes_are_named(hf_classifier, processor, message):
    _, path = hf_classifier
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(CheckpointError, match=message):
        vitkit.load(path)


def test_export_keeps_the_resize_filter(tmp_path):
    model = vitkit.create_model("custom", image_size=32, patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64,
                                num_classes=3, interpolation="bicubic", crop_pct=1.0, crop_mode="squash")
    vitkit.save(model, tmp_path / "m.safetensors")
    convert(tmp_path / "m.safetensors", tmp_path / "hf", "hf")
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["resample"] == 3
    assert vitkit.load(tmp_path / "hf").config.interpolation == "bicubic"
