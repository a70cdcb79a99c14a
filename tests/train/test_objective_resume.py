"""Every objective runs on the one engine, so what `vitkit train` guarantees holds for each:
killed with SIGKILL mid-epoch and mid-save, then resumed, a masked-patch-prediction, MAE,
distillation or adversarial run ends bit-identical to one never interrupted (the model, the
objective's own parameters, the optimiser, the EMA, best and final.safetensors and the summary),
and SIGTERM stops `vitkit pretrain` with a checkpoint and the command that continues it."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from test_interruptions import assert_killed, killable
from train_runs import CHECKPOINTS, progress, run_tensors, temporaries, tiny_flags

OBJECTIVES = {
    "mpp": ["pretrain", "--objective", "mpp"],
    "mae": ["pretrain", "--objective", "mae", "--decoder-width", "16", "--decoder-heads", "2"],
    "distill": ["train", "--distill", "soft"],
    "pgd": ["train", "--adversarial", "pgd", "--adv-steps", "2"],
}


def command(objective: str, data: Path, out: Path, teacher: Path) -> list:
    name, *extra = OBJECTIVES[objective]
    return [name, *tiny_flags(data, out), *extra, *(["--teacher", teacher] if objective == "distill" else []), "--quiet"]


def summary(run: Path) -> dict:
    values = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in values.items() if k not in ("train_seconds", "checkpoint")}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_killed_and_resumed_every_objective_ends_bit_identical(objective, tiny_npz, teacher, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "run"
    name = OBJECTIVES[objective][0]
    result = killable(*command(objective, tiny_npz, reference, teacher))
    assert result.returncode == 0, result.stderr

    # Mid-epoch after update 14 (the checkpoint of update 12 stays), then in the middle of the
    # save at the end of epoch 2 (the checkpoint of update 21 stays), then to the end.
    assert_killed(killable(*command(objective, tiny_npz, out, teacher), after_update=14, signal="SIGKILL"))
    assert progress(out / "checkpoints/last.safetensors")["update"] == 12
    resume = [name, "--resume", "--out", out, "--quiet"]
    assert_killed(killable(*resume, before_rename="last.safetensors:4"))
    assert progress(out / "checkpoints/last.safetensors")["update"] == 21
    result = killable(*resume)
    assert result.returncode == 0, result.stderr

    got, want = run_tensors(out), run_tensors(reference)
    for checkpoint in CHECKPOINTS:
        assert got[checkpoint].keys() == want[checkpoint].keys(), checkpoint
        for key, tensor in want[checkpoint].items():
            assert torch.equal(got[checkpoint][key], tensor), f"{checkpoint}: {key}"
    if name == "pretrain":
        # The objective's own parameters are checkpointed, and written beside the model at the end.
        assert any(key.startswith("train_state.objective.") for key in got["last"])
        own = "checkpoints/objective.safetensors"
        assert (out / own).read_bytes() == (reference / own).read_bytes()
    assert summary(out) == summary(reference)
    assert temporaries(out) == []


def test_sigterm_stops_pretraining_with_a_checkpoint_and_the_command_to_continue(tiny_npz, teacher, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints/last.safetensors"
    result = killable(*command("mae", tiny_npz, out, teacher), after_update=16, signal="SIGTERM")
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stderr == (f"vitkit pretrain: stopped by SIGTERM at epoch 2 step 10/21; checkpoint written to "
                             f"{last}; continue with `vitkit pretrain --resume --out {out}`\n")
    assert progress(last)["update"] == 16
