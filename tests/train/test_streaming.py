"""Training on a shard folder: streamed batches behind the same `epoch_batches` contract as data
in memory, independent of the number of DataLoader workers, with an images/s progress bar."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitkit.data.shard_writer import shard_data
from vitkit.errors import ConfigError
from vitkit.data.spec import DataSpec
from vitkit.train import TrainConfig, Trainer, train
from test_interruptions import KILLABLE, environment
from train_runs import assert_same_run, progress, tiny_flags, write_tiny_npz

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 grey 4x4 PNGs whose pixels are their number, class number % 2, as shards of 6."""
    root = tmp_path_factory.mktemp("numbered")
    for n in range(40):
        (root / "images" / f"c{n % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), n * 5).save(root / "images" / f"c{n % 2}" / f"{n}.png")
    shard_data(root / "images", root / "shards", shard_size=6, quiet=True)
    return str(root / "shards")


def config(tmp_path, shards, name="run", **changes):
    return TrainConfig(**{"data": shards, "out": str(tmp_path / name), "epochs": 1, "batch_size": 5,
                          "model_options": dict(TINY), "workers": 0, **changes})


def test_streamed_epoch_batches_resume_mid_epoch_with_the_tail(tmp_path, shards):
    trainer = Trainer(config(tmp_path, shards), quiet=True)
    assert trainer.streaming and trainer.train_count == 28 and trainer.steps_per_epoch == 6
    full = list(trainer.epoch_batches(3))
    assert [labels.shape[0] for _, labels in full] == [5] * 5 + [3]
    images, labels = full[0]
    # Decoded at the model's input (4x4 images train at 8x8), uint8, labels from the .cls members.
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 8, 8)
    assert labels.tolist() == [int(v) // 5 % 2 for v in images[:, 0, 0, 0]]
    tail = list(trainer.epoch_batches(3, start_step=4))
    assert len(tail) == 2
    for (a, b), (c, d) in zip(tail, full[4:]):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert not torch.equal(next(iter(trainer.epoch_batches(4)))[0], images)


def test_in_memory_epoch_batches_resume_mid_epoch_with_the_tail(tmp_path):
    trainer = Trainer(TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=256, model_options=dict(TINY)),
                      quiet=True)
    images, labels = trainer.hold_train_images()
    assert images.dtype == torch.uint8 and images.shape == (len(trainer.data.train), 1, 16, 16)
    assert torch.equal(labels, trainer.data.train.labels)
    full = list(trainer.epoch_batches(2))
    tail = list(trainer.epoch_batches(2, start_step=3))
    assert len(full) == 5 and len(tail) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, full[3:]))


def test_a_streamed_run_does_not_depend_on_the_number_of_workers(tmp_path, shards):
    one = train(config(tmp_path, shards, "zero", epochs=2), quiet=True)
    two = train(config(tmp_path, shards, "two", epochs=2, workers=2), quiet=True)
    a, b = (load_file(str(tmp_path / name / "checkpoints/last.safetensors")) for name in ("zero", "two"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert one["test_acc"] == two["test_acc"] and one["test_n"] == 8 and one["data"] == f"shards:{shards}"


def test_the_progress_bar_counts_images_per_second(tmp_path, shards, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train(config(tmp_path, shards), quiet=False)
    err = capsys.readouterr().err
    assert "img/s" in err and "28/28" in err


def test_options_that_need_data_in_memory_are_refused(tmp_path, shards):
    with pytest.raises(ConfigError, match="train_fraction needs data read into memory"):
        Trainer(config(tmp_path, shards, train_fraction=0.5), quiet=True)
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        config(tmp_path, shards, workers=-1)


def test_the_split_recorded_by_vitkit_shard_is_the_one_the_run_records(tmp_path, shards):
    trainer = Trainer(config(tmp_path, shards, data=DataSpec(shards, val_fraction=0.3)), quiet=True)
    assert trainer.cfg.data.val_fraction == 0.1 and np.isclose(trainer.cfg.data.test_fraction, 0.2)


def killable_session(*args, **arm) -> subprocess.CompletedProcess:
    """killable_vitkit.py in a session of its own, so a signal to its group reaches no one else."""
    return subprocess.run([sys.executable, KILLABLE, *map(str, args)], env=environment(**arm), capture_output=True,
                          text=True, timeout=300, start_new_session=True)


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_sigterm_to_the_process_group_stops_a_streamed_run_that_resumes_bit_identical(tmp_path):
    shard_data(write_tiny_npz(tmp_path / "tiny.npz"), tmp_path / "shards", shard_size=20, quiet=True)
    reference, out = tmp_path / "reference", tmp_path / "run"
    flags = ["--workers", "2", "--quiet"]
    result = killable_session("train", *tiny_flags(tmp_path / "shards", reference), *flags)
    assert result.returncode == 0, result.stderr

    # The workers get the SIGTERM too; they leave stopping to the main process, which finishes
    # the update, writes its checkpoint mid-epoch and ends them.
    result = killable_session("train", *tiny_flags(tmp_path / "shards", out), *flags, after_update=16,
                              signal="SIGTERM", to_group=1)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.startswith("vitkit train: stopped by SIGTERM at epoch 2 step 10/")
    assert progress(out / "checkpoints/last.safetensors")["update"] == 16

    result = killable_session("train", "--resume", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_run(out, reference)
