"""`vitkit shard` then `vitkit train` and `vitkit eval` on the shards, run as a user would."""

import json

import numpy as np
import yaml
from PIL import Image

from test_cli import TINY_FLAGS, assert_clean_error, vitkit_cli


def write_colour_folder(root, per_class=12):
    """Three classes of noisy 8x8 PNGs, each class a colour."""
    rng = np.random.default_rng(0)
    for name, colour in (("red", (200, 40, 40)), ("green", (40, 200, 40)), ("blue", (40, 40, 200))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_shard_then_train_streams_and_eval_of_the_best_checkpoint_agrees(tmp_path):
    folder, shards, run = write_colour_folder(tmp_path / "colours"), tmp_path / "shards", tmp_path / "run"
    result = vitkit_cli("shard", folder, "--out", shards, "--shard-size", "5", "--json")
    assert result.returncode == 0, result.stderr
    index = json.loads(result.stdout)
    assert [index["splits"][s]["samples"] for s in ("train", "val", "test")] == [27, 3, 6]
    assert len(index["splits"]["train"]["shards"]) == 6

    result = vitkit_cli("train", "--data", shards, "--out", run, "--epochs", "2", *TINY_FLAGS, "--workers", "2",
                        "--select", "best", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["data"] == f"shards:{shards}" and summary["epochs"] == 2 and summary["test_n"] == 6
    assert summary["checkpoint"] == str(run / "checkpoints" / "best.safetensors")
    config = yaml.safe_load((run / "config.yaml").read_text())
    # Picked from dataset.json without reading an image: 8x8 inputs are trained upsampled to 16x16.
    assert config["workers"] == 2 and config["model_options"]["image_size"] == [16, 16]

    result = vitkit_cli("eval", summary["checkpoint"], "--data", shards, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    on_disk = json.loads((run / "summary.json").read_text())
    assert metrics["top1"] == on_disk["test_acc"] and metrics["n"] == 6
    assert sum(map(sum, metrics["confusion"])) == 6


def test_shard_errors_are_one_line(tmp_path):
    folder = write_colour_folder(tmp_path / "colours", per_class=4)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x.txt").write_text("taken")
    assert_clean_error(vitkit_cli("shard", folder, "--out", tmp_path / "used"),
                       "vitkit shard: error: --out", "is not empty; pass --overwrite")
    (folder / "red" / "bad.png").write_bytes(b"not a png")
    assert_clean_error(vitkit_cli("shard", folder, "--out", tmp_path / "new"),
                       "1 unreadable image file(s)", "bad.png", "(--skip-bad-images)")
    result = vitkit_cli("shard", folder, "--out", tmp_path / "new", "--skip-bad-images")
    assert result.returncode == 0 and "warning: skipped 1 unreadable image file(s): red/bad.png" in result.stderr
    assert "12 images of 3 classes" in result.stdout and "vitkit train --data" in result.stdout

    # A shard damaged after it was written stops training with one line, from a worker process.
    shard = tmp_path / "new" / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[512:1024] = b"\x00" * 512  # the first image's bytes
    shard.write_bytes(bytes(data))
    assert_clean_error(vitkit_cli("train", "--data", tmp_path / "new", "--out", tmp_path / "run", "--epochs", "1",
                                  *TINY_FLAGS, "--workers", "2", "--quiet"),
                       "vitkit train: error: shard train-000000.tar: sample train-000000000.", "cannot be decoded")
