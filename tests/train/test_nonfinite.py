"""A NaN or infinite loss stops the run with one line naming the epoch and step, and never
reaches a checkpoint; --skip-nonfinite skips such updates, counts them, and still stops when
they keep coming. Losses are made non-finite by injection at chosen steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import vitkit.objectives.supervised as supervised
import vitkit.train.loop as loop
from train_runs import STEPS_PER_EPOCH, progress, tiny_config
from vitkit.cli.main import main
from vitkit.errors import TrainingDiverged
from vitkit.train import Trainer


pytestmark = pytest.mark.usefixtures("no_plots")


def poison_losses(monkeypatch, bad_steps, value=math.nan) -> None:
    """The loss of the given training steps (1-based, counted over the run) becomes `value`."""
    real = supervised.soft_cross_entropy
    calls = {"n": 0}

    def loss(logits, targets):
        calls["n"] += 1
        result = real(logits, targets)
        return result * value if calls["n"] in bad_steps else result

    monkeypatch.setattr(supervised, "soft_cross_entropy", loss)


def all_finite(path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point())


# Per-step check (the CPU's way) and the GPU's way: recorded on the device, raised at the next
# checkpoint or epoch end. Both name the first bad step and save nothing after it.
@pytest.mark.parametrize("each_step", [True, False], ids=["checked-each-step", "checked-at-saves"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_loss_stops_the_run_naming_its_epoch_and_step(tiny_npz, tmp_path, monkeypatch, each_step, value):
    # Step 30 is epoch 2 step 9, in the update that would be 16 (two steps each): the last
    # checkpoint before it is update 15 (epoch 2 step 8), the next one would have been update 18.
    poison_losses(monkeypatch, {STEPS_PER_EPOCH + 9, STEPS_PER_EPOCH + 11}, value)
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_npz, out), quiet=True)
    trainer.nonfinite.each_step = each_step
    with pytest.raises(TrainingDiverged) as error:
        trainer.run()
    last = out / "checkpoints/last.safetensors"
    assert str(error.value) == (
        f"the training loss became {value} at epoch 2 step 9/21; stopped without saving; the previous "
        f"checkpoint {last} (epoch 2 step 8/21) is intact; lower --lr, set --grad-clip, or pass "
        "--skip-nonfinite to skip such steps")
    assert progress(last)["update"] == 15 and all_finite(last)
    assert all_finite(out / "checkpoints/best.safetensors")


def test_the_cli_prints_the_non_finite_loss_as_one_line_and_exits_2(tiny_npz, tmp_path, monkeypatch, capsys):
    poison_losses(monkeypatch, {2})
    out = tmp_path / "run"
    config = tiny_config(tiny_npz, out)
    flags = ["train", "--data", str(tiny_npz), "--out", str(out), "--quiet", "--epochs", "1",
             "--batch-size", "4", "--checkpoint-every", "3"]
    flags += [f"--{k.replace('_', '-')}={v}" for k, v in config.model_options.items()]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert err == ("vitkit train: error: the training loss became nan at epoch 1 step 2/21; stopped without "
                   "saving; no checkpoint was written yet (--resume starts the run afresh); lower --lr, set "
                   "--grad-clip, or pass --skip-nonfinite to skip such steps\n")
    assert not (out / "checkpoints/last.safetensors").exists()


def test_skip_nonfinite_skips_the_update_leaves_the_weights_and_counts_it(tiny_npz, tmp_path, monkeypatch, capsys):
    # Steps 5 and 30: the third update of epoch 1 and the fifth of epoch 2 (two steps each).
    poison_losses(monkeypatch, {5, STEPS_PER_EPOCH + 9})
    unchanged = []
    real_update = Trainer._update

    def update(self, epoch, usable=True):
        before = [p.detach().clone() for p in self.model.parameters()]
        ema = {k: v.clone() for k, v in self.ema.shadow.items()}
        applied = real_update(self, epoch, usable)
        if not applied:
            unchanged.append(all(torch.equal(a, p) for a, p in zip(before, self.model.parameters()))
                             and all(torch.equal(ema[k], v) for k, v in self.ema.shadow.items()))
        return applied

    monkeypatch.setattr(Trainer, "_update", update)
    out = tmp_path / "run"
    summary = loop.train(tiny_config(tiny_npz, out, skip_nonfinite=True))
    assert unchanged == [True, True]
    epoch_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.endswith("s  skipped 1 update") for line in epoch_lines] == [True, True, False]
    assert summary["skipped_updates"] == 2 and summary["epochs"] == 3
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["skipped_updates"] for h in history] == [1, 1, 0]
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert progress(out / "checkpoints/last.safetensors")["skipped_updates"] == 2
    assert all_finite(out / "checkpoints/last.safetensors")


def test_skip_nonfinite_skips_an_update_whose_clipped_gradient_norm_is_not_finite(tiny_npz, tmp_path, monkeypatch):
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip(params, max_norm, **kwargs):
        calls["n"] += 1
        norm = real_clip(params, max_norm, **kwargs)
        return norm * math.inf if calls["n"] == 7 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    summary = loop.train(tiny_config(tiny_npz, tmp_path / "run", skip_nonfinite=True, grad_clip=1.0), quiet=True)
    assert summary["skipped_updates"] == 1


def test_skip_nonfinite_still_stops_after_ten_bad_updates_in_a_row(tiny_npz, tmp_path, monkeypatch):
    # From step 24 (epoch 2 step 3, in update 13) on, every loss is NaN: updates 13..22 are
    # skipped, and the tenth in a row, at epoch 2 step 20, stops the run.
    poison_losses(monkeypatch, set(range(STEPS_PER_EPOCH + 3, 200)))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        loop.train(tiny_config(tiny_npz, out, skip_nonfinite=True), quiet=True)
    last = out / "checkpoints/last.safetensors"
    assert str(error.value) == (
        f"10 updates in a row had a non-finite loss or gradient norm (the last at epoch 2 step 21/21); "
        f"the run has diverged; the previous checkpoint {last} (epoch 2 step 20/21) is intact; lower --lr or "
        "check the data")
    p = progress(last)
    assert (p["update"], p["skipped_updates"], p["skipped_in_a_row"]) == (21, 9, 9)
    assert loop.MAX_SKIPPED_IN_A_ROW == 10


def test_weights_that_became_non_finite_are_never_saved(tiny_npz, tmp_path, monkeypatch):
    real_update = Trainer._update

    def update(self, *args):
        applied = real_update(self, *args)
        if self.progress["update"] == 6:
            with torch.no_grad():
                self.model.head.bias[0] = math.inf
        return applied

    monkeypatch.setattr(Trainer, "_update", update)
    out = tmp_path / "run"
    last = out / "checkpoints/last.safetensors"
    with pytest.raises(TrainingDiverged, match=r"the weights became NaN or infinite by epoch 1 step 12/21 "
                                               r"\(update 6\); stopped without saving; the previous checkpoint "
                                               r".*last.safetensors \(epoch 1 step 6/21\) is intact"):
        loop.train(tiny_config(tiny_npz, out), quiet=True)
    assert progress(last)["update"] == 3 and all_finite(last)
