"""Never losing work, in-process: a run interrupted anywhere resumes from its last checkpoint
(mid-epoch with --checkpoint-every) and ends bit-identical to one that never stopped; a failed
save keeps the previous checkpoint and says how to continue. Real processes killed with
SIGKILL and SIGTERM: test_interruptions.py."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch
from safetensors import SafetensorError

import vitkit
from train_runs import (UPDATES, Killed, assert_same_run, progress, temporaries, tiny_config,
                        train_killed_after_update)
from vitkit.errors import CheckpointError, SaveError, StoppedBySignal
from vitkit.train import TrainConfig, Trainer, train
from vitkit.train.run import RunFolder


pytestmark = pytest.mark.usefixtures("no_plots")


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory):
    """The run that never stopped."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_config(tiny_npz, out), quiet=True)
    return out


def resume(out, **kwargs) -> dict:
    return train(TrainConfig(out=str(out)), resume=True, quiet=True, **kwargs)


# (update killed after, update of the checkpoint left): before the first checkpoint, right
# after one, the last update of epoch 1 (killed before its epoch-end checkpoint), the first of
# epoch 2, one in epoch 3, and the very last update.
@pytest.mark.parametrize("k, saved", [(2, None), (4, 3), (11, 9), (13, 12), (26, 24), (UPDATES, 30)])
def test_a_run_interrupted_after_any_update_resumes_bit_identical(tiny_npz, reference, tmp_path, monkeypatch,
                                                                  k, saved):
    out = tmp_path / "run"
    train_killed_after_update(monkeypatch, tiny_config(tiny_npz, out), k)
    last = out / "checkpoints/last.safetensors"
    assert (progress(last)["update"] if last.exists() else None) == saved
    resume(out)
    assert_same_run(out, reference)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert temporaries(out) == []


def test_a_mid_epoch_checkpoint_holds_the_step_the_sums_and_the_rng(tiny_npz, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_killed_after_update(monkeypatch, tiny_config(tiny_npz, out), 14)
    # Epoch 1 has 11 updates; update 12 ends the first two-step group of epoch 2.
    p = progress(out / "checkpoints/last.safetensors")
    assert (p["epoch"], p["step"], p["update"]) == (1, 2, 12)
    assert p["epoch_sums"]["images"] == 2 * 4 and p["epoch_sums"]["loss"] > 0
    assert [h["epoch"] for h in p["history"]] == [1]
    from vitkit.train.state import load_training_state

    rng, meta = load_training_state(out / "checkpoints/last.safetensors")["rng"]
    assert rng["rng.torch"].dtype == torch.uint8 and "numpy" in meta and "python" in meta


def test_the_progress_bar_resumes_at_the_image_reached(tiny_npz, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_killed_after_update(monkeypatch, tiny_config(tiny_npz, out), 14)
    bars = []
    import vitkit.train.loop as loop

    class RecordingBar(loop.Progress):
        def __init__(self, total, *args, **kwargs):
            super().__init__(total, *args, **kwargs)
            bars.append((kwargs["initial"], total))

    monkeypatch.setattr(loop, "Progress", RecordingBar)
    Trainer(TrainConfig(out=str(out)), resume=True, quiet=True).run()
    # The bar counts images (it shows images/s): 84 an epoch, batches of 4, two steps done.
    assert bars == [(84 + 2 * 4, 3 * 84)]


def test_a_run_killed_before_its_first_checkpoint_starts_afresh_with_a_note(tiny_npz, reference, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "run"
    train_killed_after_update(monkeypatch, tiny_config(tiny_npz, out), 2)
    assert not (out / "checkpoints/last.safetensors").exists()
    capsys.readouterr()
    resume(out)
    assert "has no checkpoint yet (the run stopped before its first save); starting it afresh " \
           "from its config.yaml" in capsys.readouterr().err
    assert_same_run(out, reference)


def test_a_run_killed_after_its_last_epoch_writes_only_the_summary(tiny_npz, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def die(*args):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "write_summary", die)
        with pytest.raises(Killed):
            train(tiny_config(tiny_npz, out), quiet=True)
    assert not (out / "summary.json").exists()
    before = (out / "checkpoints/last.safetensors").read_bytes()
    monkeypatch.setattr(Trainer, "train_epoch", lambda *args: pytest.fail("trained again"))
    resume(out)
    assert (out / "checkpoints/last.safetensors").read_bytes() == before
    assert_same_run(out, reference)


def test_a_finished_run_without_its_last_checkpoint_is_not_restarted(tiny_npz, reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "checkpoints/last.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        resume(out)


# SIGTERM is a scheduler's preemption notice; SIGINT (Ctrl-C) does the same.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_stops_with_a_resumable_message(tiny_npz, reference, tmp_path, monkeypatch,
                                                                         signum):
    out = tmp_path / "run"
    original = Trainer._update

    def update_then_signal(self, *args):
        applied = original(self, *args)
        if self.progress["update"] == 16:
            os.kill(os.getpid(), signum)
        return applied

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_update", update_then_signal)
        with pytest.raises(StoppedBySignal) as stopped:
            train(tiny_config(tiny_npz, out), quiet=True)
    assert stopped.value.signal_number == signum
    assert str(stopped.value) == (
        f"stopped by {signum.name} at epoch 2 step 10/21; checkpoint written to {out}/checkpoints/last.safetensors; "
        f"continue with `vitkit train --resume --out {out}`")
    assert progress(out / "checkpoints/last.safetensors")["update"] == 16  # not a multiple of 3
    # The handlers are the process's own again.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    resume(out)
    assert_same_run(out, reference)


def _fail_the_nth_save(monkeypatch, n: int, failure: Exception, seen: dict) -> None:
    """safetensors' save_file writes half the file, then fails like a full disk, on its n-th
    call for last.safetensors; `seen` gets the checkpoint's bytes from just before."""
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = {"last": 0}

    def save_file(tensors, filename, metadata=None):
        if ".last.safetensors." in filename:
            calls["last"] += 1
            if calls["last"] == n:
                seen["before"] = (seen["path"]).read_bytes()
                real_save(tensors, filename, metadata=metadata)
                with open(filename, "r+b") as f:
                    f.truncate(os.path.getsize(filename) // 2)
                raise failure
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    # How safetensors itself reports it.
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
], ids=["OSError", "SafetensorError"])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_npz, reference, tmp_path, monkeypatch, failure):
    out = tmp_path / "run"
    last = out / "checkpoints/last.safetensors"
    seen = {"path": last}
    with monkeypatch.context() as patch:
        _fail_the_nth_save(patch, 3, failure, seen)
        with pytest.raises(SaveError) as error:
            train(tiny_config(tiny_npz, out), quiet=True)
    # Saves at updates 3 and 6 went through; the one at update 9 failed.
    assert str(error.value) == (
        f"cannot write {last}: No space left on device; the previous checkpoint {last} (epoch 1 step 12/21) "
        f"is intact; free some space, then continue with `vitkit train --resume --out {out}`")
    assert last.read_bytes() == seen["before"]
    assert progress(last)["update"] == 6 and vitkit.load(last).config.width == 16
    assert temporaries(out) == []
    resume(out)
    assert_same_run(out, reference)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not stop root from writing")
def test_an_unwritable_checkpoint_folder_stops_the_run_with_the_reason(tiny_npz, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = Trainer._update

    def update_then_lock(self, *args):
        applied = original(self, *args)
        if self.progress["update"] == 5:
            (out / "checkpoints").chmod(0o555)
        return applied

    monkeypatch.setattr(Trainer, "_update", update_then_lock)
    try:
        with pytest.raises(SaveError, match="Permission denied; the previous checkpoint .* "
                                            r"\(epoch 1 step 6/21\) is intact; make the folder writable"):
            train(tiny_config(tiny_npz, out), quiet=True)
    finally:
        (out / "checkpoints").chmod(0o755)
    assert progress(out / "checkpoints/last.safetensors")["update"] == 3


def test_stale_temporaries_of_a_killed_save_are_removed_on_resume(tiny_npz, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_killed_after_update(monkeypatch, tiny_config(tiny_npz, out), 4)
    stale = [out / "checkpoints/.last.safetensors.abc123_x.tmp", out / ".metrics.jsonl.k9x2m1q0.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    (out / "notes.tmp").write_text("the user's")
    Trainer(TrainConfig(out=str(out)), resume=True, quiet=True)
    assert temporaries(out) == ["notes.tmp"]
