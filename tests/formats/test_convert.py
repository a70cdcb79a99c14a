"""`vitkit convert` and `vitkit.formats.convert`: every target round-trips with the measured
relative logit difference within 1e-5, files are written atomically, the CLI speaks JSON and
exits 2 on a bad checkpoint."""

import json

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli.main import main
from vitkit.formats import convert
from vitkit.formats.google_npz import read_npz

from .conftest import rel_diff
from .google_reference import forward, make_params

TOL = 1e-5


@pytest.fixture
def google_npz(tmp_path):
    params = make_params("original", rep=24, seed=5)
    np.savez(tmp_path / "src.npz", **params)
    return tmp_path / "src.npz", params


@pytest.mark.parametrize("to, name", [("vitkit", "out.safetensors"), ("npz", "out.npz"),
                                      ("timm", "out.safetensors")])
def test_every_target_round_trips(google_npz, tmp_path, to, name):
    src, _ = google_npz
    report = convert(src, tmp_path / name, to)
    assert report["from"] == "npz:original" and report["to"] == to
    assert report["max_rel_diff"] <= TOL
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_npz_export_has_the_official_names_and_loads_back(google_npz, tmp_path, images):
    src, params = google_npz
    convert(src, tmp_path / "out.npz", "npz")
    written = read_npz(tmp_path / "out.npz")
    assert set(written) == set(params)
    for key in params:
        np.testing.assert_array_equal(written[key], params[key], err_msg=key)
    model = vitkit.load(tmp_path / "out.npz")
    assert rel_diff(model(images), forward(params, images.permute(0, 2, 3, 1).numpy())) <= TOL


def test_map_models_export_in_the_big_vision_layout(tmp_path):
    params = make_params("big_vision", pool="map", seed=6)
    np.savez(tmp_path / "src.npz", **params)
    report = convert(tmp_path / "src.npz", tmp_path / "out.npz", "npz")
    assert report["layout"] == "big_vision" and report["max_rel_diff"] <= TOL
    assert set(read_npz(tmp_path / "out.npz")) == set(params)


def test_onnx_has_a_dynamic_batch(google_npz, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    src, _ = google_npz
    report = convert(src, tmp_path / "m.onnx", "onnx")
    assert report["max_rel_diff"] <= TOL and report["checked_with"] == "onnxruntime"
    model = vitkit.load(src)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"normalized_pixels": x.numpy()})[0]
    with torch.no_grad():
        assert rel_diff(out, model(x)) <= TOL


def test_the_convert_function_stays_a_function_after_its_module_is_imported(google_npz, tmp_path):
    # Importing vitkit.formats.convert (as `vitkit convert` does, and as the function itself did on
    # its first call) bound the module over the function: a second call raised "'module' object
    # is not callable".
    import vitkit.cli.convert_cmd  # noqa: F401
    import vitkit.formats

    src, _ = google_npz
    for name in ("a.safetensors", "b.safetensors"):
        assert vitkit.formats.convert(src, tmp_path / name, "vitkit")["max_rel_diff"] <= TOL
    assert callable(vitkit.formats.convert) and vitkit.formats.convert.__module__ == "vitkit.formats"


def test_cli_prints_one_json_object(google_npz, tmp_path, capsys):
    src, _ = google_npz
    assert main(["convert", str(src), str(tmp_path / "m.safetensors"), "--to", "vitkit", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_rel_diff"] <= TOL and report["to"] == "vitkit"


def test_cli_resizes_while_converting(google_npz, tmp_path, capsys):
    src, _ = google_npz
    code = main(["convert", str(src), str(tmp_path / "m.safetensors"), "--to", "vitkit",
                 "--image-size", "48", "64", "--json"])
    assert code == 0
    assert vitkit.load(tmp_path / "m.safetensors").config.image_size == (48, 64)


def test_cli_exits_2_with_one_line_on_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    code = main(["convert", str(tmp_path / "bad.npz"), str(tmp_path / "out.npz"), "--to", "npz"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("vitkit convert: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.npz").exists()


def test_exact_gelu_model_exported_to_npz_is_flagged(tmp_path):
    model = vitkit.create_model(image_size=32, patch_size=8, width=32, depth=1, num_heads=4, mlp_dim=64,
                                num_classes=3)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    vitkit.save(model, tmp_path / "m.safetensors")
    report = convert(tmp_path / "m.safetensors", tmp_path / "m.npz", "npz")
    assert report["max_rel_diff"] <= TOL
    assert any("tanh GELU" in note for note in report["notes"])


def test_onnx_without_the_exporter_packages_names_the_extra(google_npz, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "onnxscript" else find_spec(name, *a, **k))
    src, _ = google_npz
    assert main(["convert", str(src), str(tmp_path / "m.onnx"), "--to", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "onnxscript" in err and "pip install 'vitkit[onnx]'" in err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.tmp"))
