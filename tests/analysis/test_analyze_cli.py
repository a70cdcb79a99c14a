"""`vitkit analyze` through the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.data import load_data

SRC = str(Path(vitkit.__file__).resolve().parents[1])
PICTURES = ["filters.png", "posemb_similarity.png", "attention_distance.png", "rollout.png"]


def _vitkit(*args):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def _checkpoint(tmp_path):
    model = vitkit.create_model("custom", image_size=8, patch_size=2, in_chans=1, num_classes=10, width=32,
                                depth=2, num_heads=2, mlp_dim=64)
    return vitkit.save(model, tmp_path / "tiny.safetensors")


def test_analyze_on_the_bundled_digits(tmp_path):
    out = tmp_path / "analysis"
    run = _vitkit("analyze", _checkpoint(tmp_path), "--out", out, "--num-images", "40", "--json", "--quiet")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["files"] == PICTURES and summary["notes"] == []
    stored = json.loads((out / "analysis.json").read_text())
    assert stored["num_images"] == 40
    mad = stored["mean_attention_distance"]
    assert [len(layer) for layer in mad] == [2, 2] and all(isinstance(v, float) for layer in mad for v in layer)
    # The eight rollout examples are eight of the ten digits, not the first eight test images.
    test_labels = load_data("digits").test.labels[:40]
    shown = stored["rollout"]["images"]
    assert stored["rollout"]["labels"] == [str(int(test_labels[i])) for i in shown]
    assert len(set(stored["rollout"]["labels"])) == 8
    assert all((out / name).stat().st_size > 1000 for name in PICTURES)


def test_analyze_image_files_of_any_size(tmp_path):
    paths = []
    for i, size in enumerate((20, 33)):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    run = _vitkit("analyze", _checkpoint(tmp_path), "--out", tmp_path / "a", "--images", *paths, "--quiet")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["num_images"] == 2


def test_user_errors_exit_2(tmp_path, capsys):
    ckpt = str(_checkpoint(tmp_path))
    image = tmp_path / "img.png"
    image.write_bytes(b"not an image")
    assert main(["analyze", ckpt, "--out", str(tmp_path / "a"), "--images", str(image), "--data", "digits"]) == 2
    assert main(["analyze", ckpt, "--out", str(tmp_path / "a"), "--images", str(image)]) == 2
    assert main(["analyze", ckpt, "--out", str(tmp_path / "a"), "--num-images", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "not both" in lines[0] and "unreadable image" in lines[1] and "img.png" in lines[1] and "--num-images" in lines[2]
