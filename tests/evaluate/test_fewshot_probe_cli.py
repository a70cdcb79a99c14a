"""`vitkit fewshot` and `vitkit probe` through the command line, on a tiny model and the digits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vitkit
from vitkit.cli.main import main

SRC = str(Path(vitkit.__file__).resolve().parents[1])


def _vitkit(*args, cache):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "VITKIT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = vitkit.create_model("custom", image_size=8, patch_size=2, in_chans=1, num_classes=10, width=32,
                                depth=2, num_heads=2, mlp_dim=64)
    return vitkit.save(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_fewshot_json_and_the_cache_it_leaves(checkpoint, tmp_path, capsys):
    cache = tmp_path / "cache"
    run = _vitkit("fewshot", checkpoint, "--shots", "1,3", "--repeats", "2", "--json", cache=cache)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result["shots"]) == {"1", "3"}
    for r in result["shots"].values():
        assert len(r["accuracies"]) == 2 and 0.0 <= r["mean"] <= 1.0 and r["std"] >= 0
    assert result["num_classes"] == 10 and result["feature_dim"] == 32
    cached = sorted(p.name.split("-")[0] for p in cache.rglob("*.safetensors"))
    assert cached == ["test", "train"]
    written = {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")}
    capsys.readouterr()
    args = ["fewshot", str(checkpoint), "--shots", "1,3", "--repeats", "2", "--json", "--quiet", "--cache-dir", str(cache)]
    assert main(args) == 0
    again = capsys.readouterr()
    assert json.loads(again.out) == result
    assert again.err == ""  # --quiet: no progress bars
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")} == written  # reused, not rewritten


def test_probe_json(checkpoint, tmp_path):
    run = _vitkit("probe", checkpoint, "--json", "--max-iter", "20", "--quiet", cache=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert 0.0 <= result["test_accuracy"] <= 1.0 and 0.0 <= result["val_accuracy"] <= 1.0
    assert result["num_train"] + result["num_val"] + result["num_test"] == 1797
    assert result["val_accuracy"] == max(result["val_accuracy_per_weight_decay"].values())


def test_user_errors_exit_2_with_one_line(checkpoint, tmp_path, capsys):
    assert main(["fewshot", str(checkpoint), "--shots", "1,x"]) == 2
    assert main(["probe", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["fewshot", str(checkpoint), "--shots", "500", "--cache-dir", str(tmp_path), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "--shots" in lines[0] and "does not exist" in lines[1] and "fewer than 500 shots" in lines[2]
