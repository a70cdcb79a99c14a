"""An exported ONNX file says what to feed it: its input's name, scaling and size, its class
names and the vitkit config in metadata_props; the example in docs/formats.md, run as written,
gives `vitkit predict`'s probabilities."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.formats import convert

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def model_with_a_head(**options):
    torch.manual_seed(0)
    model = vitkit.create_model("custom", patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64, **options)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.5)  # the zero head would give equal probabilities
    return model


def exported(tmp_path, **options):
    model = model_with_a_head(**options)
    checkpoint = vitkit.save(model, tmp_path / "model.safetensors")
    convert(checkpoint, tmp_path / "model.onnx", "onnx")
    return model, checkpoint, tmp_path / "model.onnx"


def test_the_metadata_names_the_inputs_scaling_and_the_classes(tmp_path):
    model, _, path = exported(tmp_path, image_size=(16, 24), in_chans=3, num_classes=3,
                              class_names=("cat", "dog", "eel"), input_mean=(0.485, 0.456, 0.406),
                              input_std=(0.229, 0.224, 0.225))
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["normalized_pixels"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert set(props) == {"vitkit.input", "vitkit.class_names", "vitkit.config"}
    assert json.loads(props["vitkit.input"]) == {
        "name": "normalized_pixels", "dtype": "float32", "shape": ["batch", 3, 16, 24], "layout": "NCHW",
        "height": 16, "width": 24, "channel_order": "RGB", "pil_mode": "RGB",
        "resize": {"library": "Pillow", "method": "bicubic", "to": [16, 24],
                   "how": "Image.resize((width, height), Image.Resampling.BICUBIC) on the 8-bit image"},
        "value_range": [0.0, 1.0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "formula": "normalized_pixels = (pixel / 255 - mean) / std per channel (one mean or std value: every channel)"}
    assert json.loads(props["vitkit.class_names"]) == ["cat", "dog", "eel"]
    assert vitkit.models.ModelConfig.from_json(props["vitkit.config"]) == model.config
    assert "Input normalized_pixels: float32 (batch, 3, 16, 24) RGB" in proto.doc_string
    # onnxruntime hands the same values to a user.
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == props


def test_a_model_without_class_names_lists_the_indices(tmp_path):
    _, _, path = exported(tmp_path, image_size=8, in_chans=1, num_classes=4)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["vitkit.class_names"]) == ["0", "1", "2", "3"]
    spec = json.loads(props["vitkit.input"])
    assert (spec["channel_order"], spec["pil_mode"], spec["mean"], spec["std"]) == ("grey", "L", [0.5], [0.5])


def documented_example() -> str:
    section = DOCS.read_text().split("## ONNX: what to feed the exported file", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("options", [
    dict(image_size=16, in_chans=3, num_classes=5, class_names=("a", "b", "c", "d", "e"),
         input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225)),
    dict(image_size=(8, 12), in_chans=1, num_classes=3)])
def test_the_documented_example_gives_the_probabilities_of_vitkit_predict(tmp_path, monkeypatch, capsys, options):
    _, checkpoint, _ = exported(tmp_path, **options)
    # An image of another size and mode than the model's: the resize and the conversion matter.
    noise = np.random.default_rng(0).integers(0, 256, (21, 13, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "image.png")

    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(documented_example(), str(DOCS), "exec"), namespace)
    documented = dict(zip(namespace["classes"], namespace["probs"].tolist()))

    capsys.readouterr()
    assert main(["predict", str(checkpoint), "image.png", "--topk", str(options["num_classes"]), "--json"]) == 0
    predicted = {t["class"]: t["prob"] for t in json.loads(capsys.readouterr().out)["predictions"][0]["top"]}
    assert set(documented) == set(predicted)
    assert max(abs(documented[k] - predicted[k]) for k in predicted) <= 1e-5
    assert max(predicted.values()) - min(predicted.values()) > 0.05  # not the trivial uniform answer
    # Fed [0, 1] pixels instead of normalised ones, the same file answers differently.
    spec = namespace["spec"]
    raw = namespace["session"].run(None, {spec["name"]: namespace["x"] * np.float32(spec["std"])[:, None, None]
                                          + np.float32(spec["mean"])[:, None, None]})[0][0]
    assert np.abs(np.exp(raw) / np.exp(raw).sum() - namespace["probs"]).max() > 1e-3
