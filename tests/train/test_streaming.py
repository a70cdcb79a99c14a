"""Training on a shard folder: streamed batches behind the same `epoch_batches` contract as data
in memory, independent of the number of DataLoader workers, with an images/s progress bar."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitkit.data.shard_writer import shard_data
from vitkit.errors import ConfigError
from vitkit.train import TrainConfig, Trainer, train

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
    trainer._hold_train_images()
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
    trainer = Trainer(config(tmp_path, shards, val_fraction=0.3), quiet=True)
    assert trainer.cfg.val_fraction == 0.1 and np.isclose(trainer.cfg.test_fraction, 0.2)
