"""A run folder has one run, and a run resumes only onto itself: a second run into a folder in
use is refused naming the holder's pid; config.yaml names the data by its absolute place and
the checkpoint carries the data's fingerprint, so a resume onto other (or changed) data is
refused and a moved folder is accepted where it now is; a damaged checkpoint is refused by its
checksum; another thread count is noted. And results that are not results are not reported: a
run without a test split has no test accuracy (issue 17, items 6-8 and 11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from train_runs import tiny_config, train_killed_after_update
from vitkit.errors import CheckpointError, ConfigError
from vitkit.train import TrainConfig, Trainer, train
from vitkit.train.run import RunFolder

pytestmark = pytest.mark.usefixtures("no_plots")
SRC = str(Path(vitkit.__file__).resolve().parents[1])


def write_folder(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.integers(0, 60, (8, 8)) + 60 * c).astype(np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holders_pid(tiny_npz, tmp_path):
    out = tmp_path / "run"
    holder = RunFolder.open(str(out), resume=False)
    try:
        result = subprocess.run([sys.executable, "-m", "vitkit", "train", "--data", str(tiny_npz), "--out", str(out)],
                                env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2
        assert result.stderr == (f"vitkit train: error: {out} is in use by another vitkit run (pid {os.getpid()}); "
                                 "wait for it to end, or choose another --out\n")
        with pytest.raises(ConfigError, match=f"in use by another vitkit run \\(pid {os.getpid()}\\)"):
            train(tiny_config(tiny_npz, out), quiet=True)
    finally:
        holder.unlock()
    # Free again: the run goes ahead, and a resume locks it too while it runs.
    train(tiny_config(tiny_npz, out, epochs=1), quiet=True)
    trainer = Trainer(TrainConfig(out=str(out)), resume=True, quiet=True)
    with pytest.raises(ConfigError, match="in use by another vitkit run"):
        RunFolder.open(str(out), resume=True)
    trainer.run()
    RunFolder.open(str(out), resume=True).unlock()


def test_the_data_is_recorded_by_its_absolute_place_and_resumed_from_any_folder(tmp_path, monkeypatch):
    write_folder(tmp_path / "work" / "images")
    monkeypatch.chdir(tmp_path / "work")
    cfg = tiny_config(Path("images"), tmp_path / "run", epochs=2)
    train_killed_after_update(monkeypatch, cfg, 5)
    assert TrainConfig.from_yaml(tmp_path / "run" / "config.yaml").data.source == str(tmp_path / "work" / "images")
    # From another folder that has an "images" folder of its own, the run still finds its data.
    write_folder(tmp_path / "elsewhere" / "images", classes=2)
    monkeypatch.chdir(tmp_path / "elsewhere")
    summary = train(TrainConfig(out=str(tmp_path / "run")), resume=True, quiet=True)
    assert summary["epochs"] == 2 and summary["data"] == f"folder:{tmp_path / 'work' / 'images'}"


def test_a_resume_onto_changed_data_is_refused_and_a_moved_folder_is_followed(tmp_path, monkeypatch):
    images = write_folder(tmp_path / "images")
    run = tmp_path / "run"
    train_killed_after_update(monkeypatch, tiny_config(images, run, epochs=2), 5)
    last = (run / "checkpoints" / "last.safetensors").read_bytes()

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "class0" / "added.png")
    with pytest.raises(ConfigError, match=r"is not the data this run trained on: its files differ \(36 files then, "
                                          r"37 now\); put the data back"):
        train(TrainConfig(out=str(run)), resume=True, quiet=True)
    (images / "class0" / "added.png").unlink()

    moved = tmp_path / "moved"
    shutil.move(images, moved)
    with pytest.raises(ConfigError, match=f"the data this run trained on, {images}, is gone; if it moved, resume with "
                                          f"`vitkit train --resume --out {run} --data NEW_PLACE`"):
        train(TrainConfig(out=str(run)), resume=True, quiet=True)
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == last  # nothing written by the refusals
    summary = train(TrainConfig(out=str(run)), resume=True, quiet=True, moved_data=str(moved))
    assert summary["epochs"] == 2
    assert TrainConfig.from_yaml(run / "config.yaml").data.source == str(moved)


def test_a_checkpoint_with_a_flipped_bit_is_refused_by_its_checksum(tiny_npz, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_killed_after_update(monkeypatch, tiny_config(tiny_npz, run, epochs=2), 10)
    path = run / "checkpoints" / "last.safetensors"
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 100] ^= 0x04  # one bit of the first tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged: its tensors do not match the checksum written with them"):
        train(TrainConfig(out=str(run)), resume=True, quiet=True)


def test_resuming_with_another_thread_count_says_so(tiny_npz, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    train_killed_after_update(monkeypatch, tiny_config(tiny_npz, run, epochs=1), 4)
    capsys.readouterr()
    other = 1 if threads > 1 else 2
    torch.set_num_threads(other)
    try:
        Trainer(TrainConfig(out=str(run)), resume=True).run_dir.unlock()
    finally:
        torch.set_num_threads(threads)
    assert (f"note: this run trained with {threads} threads and resumes with {other}; it is bit-identical to an "
            "uninterrupted run only with the same number") in capsys.readouterr().err


def test_a_run_without_a_test_split_reports_no_test_accuracy(tmp_path, capsys):
    images = write_folder(tmp_path / "images", classes=5, per_class=2)  # 1 image per class for val, none for test
    summary = train(tiny_config(images, tmp_path / "run", epochs=1))
    assert summary["test_n"] == 0 and summary["test_acc"] is None and summary["test_top5"] is None
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["test_acc"] is None and "test_confusion" not in saved
    assert "note: the data has no test split, so the run has no test accuracy" in capsys.readouterr().err


def test_wrong_types_and_values_of_a_training_config_are_api_errors():
    with pytest.raises(TypeError, match="training option epochs must be"):
        TrainConfig(epochs="2")
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError):
        TrainConfig(data=5)
