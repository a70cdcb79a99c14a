"""Class names as the disk gives them: a class folder whose name is not UTF-8 (Python keeps its
bytes as lone surrogates) or holds a line break. Text and plots show them escaped on one line
(`vitkit.errors.printable`); JSON and checkpoints keep them exactly; nothing crashes."""

import json
import os

import pytest
from PIL import Image

import vitkit
from vitkit.data import load_data
from vitkit.errors import printable
from vitkit.models.config import ModelConfig

from test_cli import vitkit_cli

LATIN1 = os.fsdecode(b"caf\xe9")         # a folder named in Latin-1: 'caf\udce9'
TWO_LINES = "two\nlines"
PLAIN = "plain"


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """Three classes of 6 small PNGs, one named in Latin-1, one with a line break; a tiny
    model trained on nothing, carrying the names; one of the images."""
    root = tmp_path_factory.mktemp("odd")
    for number, name in enumerate((LATIN1, TWO_LINES, PLAIN)):
        folder = root / "data" / name
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (40 * number, 20 * i, 100)).save(folder / f"{i}.png")
    names = load_data(str(root / "data"), quiet=True).class_names
    assert sorted(names) == sorted([LATIN1, TWO_LINES, PLAIN])
    model = vitkit.create_model(image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                                num_classes=3, class_names=tuple(names))
    vitkit.save(model, root / "m.safetensors")
    return root


def test_printable_names():
    assert printable(LATIN1) == "caf\\xe9" and printable(TWO_LINES) == "two\\nlines" and printable(PLAIN) == PLAIN


def test_regression_predict_prints_each_image_on_one_line(odd_folder):
    # A name with a line break split an image's line in two; a Latin-1 one raised
    # UnicodeEncodeError on a UTF-8 terminal.
    image = odd_folder / "data" / PLAIN / "0.png"
    done = vitkit_cli("predict", odd_folder / "m.safetensors", image, image, "--topk", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{image}: ") for line in lines)
    assert "caf\\xe9 " in lines[0] and "two\\nlines " in lines[0] and "plain " in lines[0]


def test_predict_json_keeps_the_exact_names(odd_folder):
    done = vitkit_cli("predict", odd_folder / "m.safetensors", odd_folder / "data" / PLAIN / "0.png", "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    shown = {t["class"] for t in json.loads(done.stdout)["predictions"][0]["top"]}
    assert shown == {LATIN1, TWO_LINES, PLAIN}


def test_regression_eval_prints_the_confusion_matrix_one_row_a_line(odd_folder):
    done = vitkit_cli("eval", odd_folder / "m.safetensors", "--data", odd_folder / "data", "--split", "train",
                      "--quiet")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[-3:]
    assert sorted(row.split()[0] for row in rows) == sorted(["caf\\xe9", "two\\nlines", "plain"])
    done = vitkit_cli("eval", odd_folder / "m.safetensors", "--data", odd_folder / "data", "--split", "train",
                      "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["class_names"]) == sorted([LATIN1, TWO_LINES, PLAIN])


def test_regression_the_confusion_plot_draws_any_name(tmp_path):
    # matplotlib cannot draw a lone surrogate: TypeError at the end of training, no result line.
    from vitkit.train.plots import plot_confusion

    plot_confusion([[2, 0, 1], [0, 3, 0], [1, 0, 2]], [LATIN1, TWO_LINES, PLAIN], tmp_path / "c.png", "confusion")
    assert Image.open(tmp_path / "c.png").size[0] > 100


def test_regression_rollout_captions_draw_any_name(odd_folder, tmp_path):
    from vitkit.analysis.report import analyze

    data = load_data(str(odd_folder / "data"), val_fraction=0, test_fraction=0, quiet=True)
    model = vitkit.load(odd_folder / "m.safetensors")
    result = analyze(model, data.train.images[:6], tmp_path / "a", labels=data.train.labels[:6],
                     class_names=data.class_names)
    assert "rollout.png" in result["files"] and set(result["rollout"]["labels"]) <= {LATIN1, TWO_LINES, PLAIN}


def test_checkpoints_keep_the_exact_names(odd_folder, tmp_path):
    cfg = vitkit.load(odd_folder / "m.safetensors").config
    assert set(cfg.class_names) == {LATIN1, TWO_LINES, PLAIN}
    assert ModelConfig.from_json(cfg.to_json()) == cfg and cfg.to_json().isascii()
    vitkit.save(vitkit.load(odd_folder / "m.safetensors"), tmp_path / "again.safetensors")
    assert vitkit.load(tmp_path / "again.safetensors").config.class_names == cfg.class_names


@pytest.mark.slow
def test_regression_training_on_such_folders_ends_with_its_result_line(odd_folder, tmp_path):
    done = vitkit_cli("train", "--data", odd_folder / "data", "--out", tmp_path / "run", "--epochs", "1",
                      "--width", "16", "--depth", "1", "--num-heads", "2", "--mlp-dim", "32", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and (tmp_path / "run" / "plots" / "confusion.png").is_file()
