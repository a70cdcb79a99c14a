"""The picker fits the data and the clock: images are sized by the detail they hold (an upscaled
copy of the digits trains like the digits), the picked epochs fit a time budget at the speed
measured on the run's first steps, and a run whose validation loss has long stopped falling
stops, says so, and keeps its best epoch.

The speed is a measurement, so the tests give the Trainer a fixed one: what they check is the
arithmetic and the plumbing, the same on any CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import load_data
from vitkit.train import TrainConfig, Trainer, train
import vitkit.train.loop as loop
from vitkit.train.auto import DETAIL_LOSS_LIMIT, detail_loss, detail_size, fit_epochs, plateau_patience, resolve
from vitkit.train.budget import epoch_seconds

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=16)


def digits_at(side: int, method) -> torch.Tensor:
    digits = load_data("digits").train.images[:, 0].numpy()
    resized = np.stack([np.asarray(Image.fromarray(d).resize((side, side), method)) for d in digits])
    return torch.from_numpy(resized)[:, None]


@pytest.mark.parametrize("side", [16, 32, 64])
@pytest.mark.parametrize("method", [Image.NEAREST, Image.BILINEAR, Image.BICUBIC, Image.LANCZOS])
def test_upscaled_digits_are_sized_by_the_detail_of_the_8x8_originals(side, method):
    size, lost = detail_size(digits_at(side, method), (side, side))
    assert size == (8, 8) and lost < DETAIL_LOSS_LIMIT


def test_images_with_detail_at_their_own_size_keep_it():
    originals = load_data("digits").train.images
    assert detail_size(originals, (8, 8)) == ((8, 8), 0.0)  # nothing below 8 pixels is tried
    torch.manual_seed(0)
    noise = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    assert detail_size(noise, (32, 32)) == ((32, 32), 0.0)
    assert detail_loss(noise, 2) > 0.5  # white noise: half its variance and more sits above half the rate


def test_a_32x32_copy_of_the_digits_gets_the_model_and_input_of_the_digits(tmp_path):
    digits = load_data("digits")
    np.savez(tmp_path / "d32.npz", x=digits_at(32, Image.BICUBIC)[:, 0].numpy(), y=digits.train.labels.numpy())
    np.savez(tmp_path / "d8.npz", x=digits.train.images[:, 0].numpy(), y=digits.train.labels.numpy())
    big, small = load_data(tmp_path / "d32.npz"), load_data(tmp_path / "d8.npz")
    (_, model_big, notes), (_, model_small, _) = resolve(TrainConfig(), big), resolve(TrainConfig(), small)
    assert model_big.image_size == model_small.image_size == (16, 16)
    assert model_big.patch_size == model_small.patch_size == 4
    assert any(note.startswith("images: 32x32 with the detail of 8x8") for note in notes)


def test_rgb_images_with_equal_channels_train_as_grey_images(tmp_path):
    digits = load_data("digits")
    rgb = np.repeat(digits_at(32, Image.BILINEAR)[:, 0].numpy()[..., None], 3, axis=-1)
    np.savez(tmp_path / "rgb.npz", x=rgb, y=digits.train.labels.numpy())
    cfg, model, notes = resolve(TrainConfig(), load_data(tmp_path / "rgb.npz"))
    assert model.in_chans == 1 and model.image_size == (16, 16)
    assert cfg.augment["flip"] is False and cfg.augment["rotate"] == 15.0  # grey images' augmentation
    assert any(note.startswith("images: RGB with three equal channels, that is grey") for note in notes)
    rgb[:5, 0, 0, 1] += 1  # one pixel of colour in five images: colour images
    np.savez(tmp_path / "colour.npz", x=rgb, y=digits.train.labels.numpy())
    _, model, _ = resolve(TrainConfig(), load_data(tmp_path / "colour.npz"))
    assert model.in_chans == 3


def test_a_plateau_in_the_last_quarter_of_a_run_does_not_stop_it(tmp_path, monkeypatch):
    losses = iter([0.5] + [0.9] * 40)  # never lower after epoch 1
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_loss": next(losses), "val_acc": 0.5})
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=8, batch_size=512, plateau_stop=7, model_options=dict(TINY))
    summary = train(cfg, quiet=True)
    assert summary["epochs"] == 8 and "stopped_on_plateau" not in summary and summary["select"] == "last"


def test_epochs_are_cut_to_fit_the_budget_and_kept_when_they_fit():
    assert fit_epochs(100, 0.5, 60)[0] == 100  # 50 s
    assert fit_epochs(100, 0.7, 60)[0] == 100  # 70 s: within the 25% slack
    epochs, note = fit_epochs(300, 2.0, 60)
    assert epochs == 30 and "300 epochs would take about 10.0 min" in note and "30 fit the 60 s budget" in note
    assert fit_epochs(300, 100.0, 60)[0] == 5  # never fewer than 5
    assert fit_epochs(300, 2.0, 0)[0] == 300  # no budget


def test_the_trainer_fits_the_picked_epochs_to_the_measured_speed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "epoch_seconds", lambda *args: 3.0)
    trainer = Trainer(TrainConfig(out=str(tmp_path / "run"), model_options=dict(TINY)))
    assert (trainer.cfg.epochs, trainer.cfg.warmup_epochs) == (20, 1.0)  # 60 s / 3 s; warm-up for 20
    assert "auto: time: 100 epochs would take about 5.0 min" in capsys.readouterr().err
    saved = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.epochs == 20 and saved.plateau_stop == 0  # 20 epochs: too short to stop on a plateau
    # Epochs given, or no budget: nothing is measured or changed.
    monkeypatch.setattr(loop, "epoch_seconds", lambda *args: pytest.fail("measured"))
    assert Trainer(TrainConfig(out=str(tmp_path / "given"), epochs=100, model_options=dict(TINY)),
                   quiet=True).cfg.epochs == 100
    assert Trainer(TrainConfig(out=str(tmp_path / "free"), time_budget=0, model_options=dict(TINY)),
                   quiet=True).cfg.epochs == 100


def test_the_step_timing_leaves_the_runs_weights_and_random_streams_alone(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=256, time_budget=0, model_options=dict(TINY))
    timed = Trainer(cfg.replace(out=str(tmp_path / "a")), quiet=True)
    images, labels = next(iter(timed.epoch_batches(0)))
    seconds = epoch_seconds(timed.step_module, timed.cfg, timed._input, images, labels, True, 5, 179)
    assert seconds > 0
    a = timed.run()
    b = Trainer(cfg.replace(out=str(tmp_path / "b")), quiet=True).run()
    assert a["test_acc"] == b["test_acc"] and a["final_train_loss"] == b["final_train_loss"]


def test_plateau_patience_is_half_the_run():
    cfg = TrainConfig()
    assert [plateau_patience(cfg, e) for e in (20, 39, 40, 100, 300)] == [0, 0, 20, 50, 150]
    assert plateau_patience(cfg.replace(plateau_stop=7), 300) == 7


def test_a_run_whose_validation_loss_stopped_falling_stops_and_keeps_its_best_epoch(tmp_path, monkeypatch, capsys):
    # Validation losses that fall until epoch 3, then never again: with a patience of 4 the run
    # stops after epoch 7 (of 30) and its result is the best validation epoch's model.
    losses = iter([0.9, 0.8, 0.7, 0.75, 0.8, 0.85, 0.9] + [1.0] * 30)
    accuracy = iter([0.5, 0.6, 0.8, 0.7, 0.7, 0.7, 0.7] + [0.1] * 30)
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_loss": next(losses), "val_acc": next(accuracy)})
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=30, batch_size=512, plateau_stop=4, model_options=dict(TINY))
    summary = train(cfg)
    assert summary["epochs"] == 7 and summary["select"] == "best" and summary["best_epoch"] == 3
    assert summary["stopped_on_plateau"] == {"epoch": 7, "lowest_val_loss_epoch": 3}
    assert summary["checkpoint"].endswith("best.safetensors")
    assert ("stopping after epoch 7 of 30: the validation loss last fell at epoch 3 (4 epochs ago); the result is "
            "the best validation epoch's model (epoch 3)") in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["select"] == "best"
