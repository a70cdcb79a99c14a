"""The `vitkit` command, run as a user would: through a subprocess."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitkit

SRC = str(Path(vitkit.__file__).resolve().parents[1])
TINY_FLAGS = ["--width", "16", "--depth", "1", "--num-heads", "2", "--mlp-dim", "32"]


def vitkit_cli(*args, cwd=None):
    # A strict UTF-8 stdout, as under a UTF-8 locale (a test machine's C locale would let Python
    # write what a user's terminal cannot take, e.g. a class name that is not UTF-8).
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


# Off a terminal each finished phase of a long job is one line (vitkit.progress), e.g.
# "checking images: 30 img in 0.0 s (2,518 img/s)": not part of an error.
PHASE_LINE = re.compile(r"^[\w ]+: [\d,]+(/[\d,]+)? \w+ in \d+\.\d s")


def assert_clean_error(result, *fragments):
    """Exit code 2, one line on stderr naming the problem (besides progress lines), no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not PHASE_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = vitkit_cli("train", "--out", out, "--epochs", "2", *TINY_FLAGS, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_help_for_every_command():
    from vitkit.cli.main import build_parser

    assert vitkit_cli("--help").returncode == 0
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "eval", "predict", "models"} <= set(commands)
    for command in commands:
        sub = vitkit_cli(command, "--help")
        assert sub.returncode == 0 and "usage: vitkit " + command in sub.stdout


def test_every_training_config_field_is_a_flag_of_train_or_pretrain():
    from vitkit.cli.train_cmd import LABEL_FIELDS, PRETRAIN_FIELDS
    from vitkit.data.spec import DataSpec
    from vitkit.train import TrainConfig

    text = vitkit_cli("train", "--help").stdout
    pretrain = vitkit_cli("pretrain", "--help").stdout
    for name in TrainConfig.__dataclass_fields__:
        if name in ("model_options", "augment", "data"):
            continue
        flag = "--" + name.replace("_", "-") + " "
        assert (flag in text) == (name not in PRETRAIN_FIELDS), name
        assert (flag in pretrain) == (name not in LABEL_FIELDS), name
    for name in DataSpec.__dataclass_fields__:
        flag = "--data " if name == "source" else "--" + name.replace("_", "-") + " "
        assert flag in text and flag in pretrain, name
    for flag in ("--patch-size", "--pool", "--posemb", "--posemb-where", "--drop-path", "--mixup", "--crop"):
        assert flag in text
    # A pre-trained encoder is headless: no class count, no label mixing.
    for flag in ("--num-classes ", "--mixup ", "--cutmix "):
        assert flag in text and flag not in pretrain, flag
    assert "--width " in pretrain and "--patch-size " in pretrain


def test_models_lists_presets_with_parameters_and_flops():
    result = vitkit_cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert rows["vit_b16"]["params"] == 86_567_656
    assert rows["vit_b16"]["gflops"] == pytest.approx(35.13, abs=0.01)
    # The GMACs the usual tables quote (17.6 for B/16), one per multiply-add: half the FLOPs.
    assert rows["vit_b16"]["gmacs"] == pytest.approx(17.56, abs=0.01)
    assert all(r["gmacs"] * 2 == pytest.approx(r["gflops"]) for r in rows.values())
    assert "vit_r50_b16" in rows
    text = vitkit_cli("models").stdout.splitlines()
    assert text[0].split()[:8] == ["model", "layers", "width", "heads", "params", "GFLOPs", "GMACs", "(image"]
    assert next(line for line in text if line.startswith("vit_b16 ")).split()[-2:] == ["35.13", "17.56"]
    assert text[-1].startswith("GFLOPs count a multiply-add as two FLOPs; GMACs count it once")


@pytest.mark.parametrize("args", [["models"], ["models", "--pretrained"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(args):
    # `vitkit models | head -1`: the pipe is closed before the command writes (its read end is
    # shut before the process starts), so every write meets EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run([sys.executable, "-m", "vitkit", *args], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=600)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141  # 128 + SIGPIPE, as a shell reports `head`'s other writers


def test_train_writes_a_run_and_eval_reproduces_its_test_accuracy(trained):
    out, summary = trained
    assert summary["epochs"] == 2 and Path(summary["checkpoint"]).is_file()
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    result = vitkit_cli("eval", summary["checkpoint"], "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["top1"] == summary["test_acc"] and metrics["n"] == 359
    assert sum(map(sum, metrics["confusion"])) == 359
    # Reported as the exact ratio of counts (float64), in --json and in summary.json alike.
    right = sum(metrics["confusion"][c][c] for c in range(10))
    assert summary["test_acc"] == right / 359
    assert json.loads((out / "summary.json").read_text())["test_acc"] == right / 359
    assert metrics["top5"] >= metrics["top1"]


def test_python_dash_m_and_the_console_script_agree(trained):
    _, summary = trained
    text = vitkit_cli("eval", summary["checkpoint"]).stdout
    assert text.startswith("test: top-1")


def test_predict_names_classes_of_image_files(trained, tmp_path):
    _, summary = trained
    from vitkit.data import load_data

    test = load_data("digits").test
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(test.images[i, 0].numpy()).save(path)
        paths.append(path)
    result = vitkit_cli("predict", summary["checkpoint"], *paths, "--topk", "3", "--json")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)["predictions"]
    assert len(predictions) == 3
    for p in predictions:
        assert len(p["top"]) == 3
        assert {t["class"] for t in p["top"]} <= {str(d) for d in range(10)}
        probs = [t["prob"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_predict_with_the_image_and_the_checkpoint_swapped_says_which_comes_first(tmp_path):
    model = vitkit.create_model("custom", image_size=8, patch_size=4, in_chans=1, num_classes=3, width=16,
                                depth=1, num_heads=2, mlp_dim=32)
    checkpoint = vitkit.save(model, tmp_path / "model.safetensors")
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 90).save(image)
    assert_clean_error(vitkit_cli("predict", image, checkpoint),
                       f"vitkit predict: error: {image} is a PNG image, not a checkpoint: the checkpoint comes "
                       "first, then the images (vitkit predict CHECKPOINT IMAGE [IMAGE ...])")
    assert vitkit_cli("predict", checkpoint, image).returncode == 0


def test_resume_of_a_finished_run_reports_the_same_result(trained):
    out, summary = trained
    result = vitkit_cli("train", "--out", out, "--resume", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_acc"] == summary["test_acc"]


def test_train_from_a_config_file_with_a_flag_override(trained, tmp_path):
    out, _ = trained
    result = vitkit_cli("train", "--config", out / "config.yaml", "--out", tmp_path / "again",
                        "--epochs", "1", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 1


def write_images(folder: Path, classes=("a", "b"), per_class=4, size=8):
    rng = np.random.default_rng(0)
    for cls in classes:
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")


def test_train_on_an_image_folder(tmp_path):
    write_images(tmp_path / "imgs", per_class=10)
    result = vitkit_cli("train", "--data", tmp_path / "imgs", "--out", tmp_path / "run", "--epochs", "1",
                        *TINY_FLAGS, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert vitkit.load(summary["checkpoint"]).config.class_names == ("a", "b")


def test_bad_inputs_give_one_clear_line_and_exit_code_2(trained, tmp_path):
    out, summary = trained
    assert_clean_error(vitkit_cli("train", "--data", tmp_path / "missing", "--out", tmp_path / "r1"), "missing")
    (tmp_path / "empty").mkdir()
    assert_clean_error(vitkit_cli("train", "--data", tmp_path / "empty", "--out", tmp_path / "r2"), "empty")
    assert_clean_error(vitkit_cli("train", "--pool", "avg", "--out", tmp_path / "r3"), "pool")
    assert_clean_error(vitkit_cli("train", "--lr", "-1", "--out", tmp_path / "r4"), "lr")
    assert_clean_error(vitkit_cli("train", "--num-classes", "7", "--out", tmp_path / "r5"), "--num-classes 7")
    assert_clean_error(vitkit_cli("train", "--out", out), "already holds a run")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: [unclosed\n")
    assert_clean_error(vitkit_cli("train", "--config", bad_yaml), "not valid YAML")
    bad_yaml.write_text("epoks: 3\n")
    assert_clean_error(vitkit_cli("train", "--config", bad_yaml), "unknown training option", "epoks")

    checkpoint = Path(summary["checkpoint"])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert_clean_error(vitkit_cli("eval", truncated), "truncated")
    assert_clean_error(vitkit_cli("eval", tmp_path / "nope.safetensors"), "does not exist")

    write_images(tmp_path / "three", classes=("x", "y", "z"), per_class=10)
    assert_clean_error(vitkit_cli("eval", checkpoint, "--data", tmp_path / "three"), "10 classes", "has 3")


def test_corrupt_images_are_listed_or_skipped_on_request(tmp_path):
    write_images(tmp_path / "imgs", per_class=10)
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ("train", "--data", tmp_path / "imgs", "--epochs", "1", *TINY_FLAGS, "--quiet")
    assert_clean_error(vitkit_cli(*args, "--out", tmp_path / "r1"), "broken.png")
    result = vitkit_cli(*args, "--out", tmp_path / "r2", "--skip-bad-images", "--json")
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = vitkit_cli("train", "--data", tmp_path / "missing", "--out", tmp_path / "r", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr
