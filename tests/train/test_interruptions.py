"""`vitkit train` processes killed with SIGKILL, stopped with SIGTERM and run out of disk
space, again and again, then continued with `--resume`: every run ends bit-identical to one
that was never interrupted (every tensor of last.safetensors and best.safetensors, and the test
accuracy). Deterministic interruption points come from killable_vitkit.py (test-only), the
timed ones from signals sent from outside as the run's files appear."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vitkit
from train_runs import assert_same_run, progress, temporaries, tiny_flags

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and file-size limits are POSIX")

SRC = str(Path(vitkit.__file__).resolve().parents[1])
KILLABLE = str(Path(__file__).with_name("killable_vitkit.py"))


def environment(**arm) -> dict:
    # One thread everywhere: the bit-identity holds between runs with the same thread count.
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "KILLABLE_NO_PLOTS": "1",
            **{f"KILLABLE_{k.upper()}": str(v) for k, v in arm.items()}}


def killable(*args, **arm) -> subprocess.CompletedProcess:
    """`vitkit ARGS` with one interruption armed (see killable_vitkit.py)."""
    return subprocess.run([sys.executable, KILLABLE, *map(str, args)], env=environment(**arm),
                          capture_output=True, text=True, timeout=300)


def start_vitkit(*args) -> subprocess.Popen:
    """The real `python -m vitkit ARGS`, nothing armed, plots included."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vitkit", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended first: {process.stderr.read()}"
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.005)


def resume_flags(out: Path) -> list:
    return ["train", "--resume", "--out", out, "--quiet"]


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = killable("train", *tiny_flags(tiny_npz, out), "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def assert_killed(result) -> None:
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_sigkill_at_many_points_then_resume_ends_bit_identical(tiny_npz, reference, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints/last.safetensors"

    # In the middle of writing the second checkpoint (update 6): the first (update 3) stays.
    # (Killed before its first checkpoint, a run starts afresh: test_resume.py.)
    assert_killed(killable("train", *tiny_flags(tiny_npz, out), "--quiet", before_rename="last.safetensors:2"))
    assert progress(last)["update"] == 3
    assert len(list((out / "checkpoints").glob(".last.safetensors.*.tmp"))) == 1

    # At the end of epoch 1, with the best checkpoint and the metrics written but not yet the
    # last checkpoint: the run continues from update 9 and redoes the end of epoch 1.
    assert_killed(killable(*resume_flags(out), before_rename="last.safetensors:3"))
    assert (out / "checkpoints/best.safetensors").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert progress(last)["update"] == 9

    # Mid-epoch, after update 26: the checkpoint of update 24 (epoch 3 step 4) is the one to use.
    assert_killed(killable(*resume_flags(out), after_update=26, signal="SIGKILL"))
    assert (progress(last)["update"], progress(last)["step"]) == (24, 4)

    # After the last epoch, while the summary is written.
    assert_killed(killable(*resume_flags(out), before_rename="summary.json:1"))
    assert not (out / "summary.json").exists()

    result = killable("train", "--resume", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "training had finished at the end of epoch 3; writing the summary" in result.stderr
    assert_same_run(out, reference)
    assert temporaries(out) == []


def test_sigterm_then_a_full_disk_then_resume_ends_bit_identical(tiny_npz, reference, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints/last.safetensors"

    result = killable("train", *tiny_flags(tiny_npz, out), "--quiet", after_update=16, signal="SIGTERM")
    assert result.returncode == 128 + signal.SIGTERM == 143
    assert result.stderr == (
        f"vitkit train: stopped by SIGTERM at epoch 2 step 10/21; checkpoint written to {last}; "
        f"continue with `vitkit train --resume --out {out}`\n")
    assert progress(last)["update"] == 16

    # No file may grow to half a checkpoint: the next save (update 18) fails with EFBIG.
    before = last.read_bytes()
    result = killable(*resume_flags(out), file_size_limit=len(before) // 2)
    assert result.returncode == 2
    assert result.stderr == (
        f"vitkit train: error: cannot write {last}: File too large; the previous checkpoint {last} (epoch 2 "
        f"step 10/21) is intact; raise the file-size limit (ulimit -f), then continue with "
        f"`vitkit train --resume --out {out}`\n")
    assert last.read_bytes() == before
    assert temporaries(out) == []

    result = killable(*resume_flags(out))
    assert result.returncode == 0, result.stderr
    assert_same_run(out, reference)


def test_signals_sent_from_outside_while_the_run_goes_on(tiny_npz, reference, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints/last.safetensors"

    # SIGTERM as soon as the first checkpoint appears: the run stops at its next update.
    run = start_vitkit("train", *tiny_flags(tiny_npz, out), "--quiet")
    wait_for(last.exists, run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 143, stderr
    p = progress(last)
    where = (f"epoch {p['epoch'] + 1} step {p['step']}/21" if p["step"] else f"the end of epoch {p['epoch']}")
    assert stderr == (f"vitkit train: stopped by SIGTERM at {where}; checkpoint written to {last}; "
                      f"continue with `vitkit train --resume --out {out}`\n")

    # SIGKILL a moment after the resumed run has finished an epoch.
    epochs_done = len(p["history"])
    run = start_vitkit(*resume_flags(out))
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > epochs_done, run)
    time.sleep(0.2)
    run.kill()
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL

    result = killable(*resume_flags(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_acc"] == json.loads((reference / "summary.json").read_text())["test_acc"]
    assert_same_run(out, reference)
    assert temporaries(out) == []
