"""Distributed training: `torchrun --nproc_per_node 2 -m vitkit train` (DDP, and FSDP2 with
--fsdp) trains what one process trains with the same global batch, only rank 0 writes, and a
checkpoint written by N processes resumes with M.

The launched runs use gloo on the CPU. The weights match one process within FLOAT_TOLERANCE,
not bitwise: each rank averages its part of the batch and the ranks' gradients are then
averaged, so the sums are taken in another order than in one process, and float addition is not
associative. SGD keeps those last-bit differences at their size; Adam's division by the root of
tiny second moments would magnify them (as in test_train's accumulation test).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitkit.cli.main import build_parser, main
from vitkit.cli.train_cmd import build_config
from vitkit.errors import ConfigError
from vitkit.formats.native import read_header
from vitkit.train import TrainConfig, Trainer, train
from vitkit.train.distributed import Distributed, rank_seed

WORKER_HOOKS = Path(__file__).parent / "torchrun_worker"
SRC = Path(__file__).parents[2] / "src"
FLOAT_TOLERANCE = 1e-5
LAUNCH_TIMEOUT_S = 300

# 74 images: 50 train (= 7 * 7 + 1), 8 validation, 16 test. A global batch of 7 splits 4 + 3
# between two ranks, and the last batch of each epoch, one image, leaves rank 1 with none.
IMAGES = 74
TRAIN_IMAGES = 50
FLAGS = ["--epochs", "2", "--batch-size", "7", "--accum-steps", "2", "--optimizer", "sgd", "--lr", "0.1",
         "--grad-clip", "0.5", "--width", "16", "--depth", "2", "--num-heads", "2", "--mlp-dim", "32",
         "--image-size", "8", "--rotate", "0", "--scale", "0", "--translate", "0", "--mixup", "0",
         "--crop", "none", "--no-flip", "--quiet", "--json"]


def write_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.arange(IMAGES) % 4
    images = rng.integers(0, 256, (IMAGES, 8, 8), dtype=np.uint8)
    images[:, :2] = (labels * 60)[:, None, None]  # a stripe that tells the classes apart
    np.savez(path, x=images, y=labels)
    return path


def cli_config(data: Path, out: Path, *flags: str) -> TrainConfig:
    """The TrainConfig the command line would build from these flags."""
    args = build_parser().parse_args(["train", "--data", str(data), "--out", str(out), *FLAGS, *flags])
    return build_config(args)


def torchrun(tmp_path: Path, *args: str, processes: int = 2, env: dict | None = None,
             check: bool = True, program: tuple[str, ...] = ("-m", "vitkit", "train")
             ) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N -m vitkit train ARGS` (or another `program`),
    with a free port chosen by torchrun and the worker hooks on the path. A launch that succeeds
    must also have ended its process group: no worker may reach interpreter shutdown with gloo's
    threads still running (they can abort the process there, SIGABRT, after the run has
    succeeded)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", *program, *args]
    threads = Path(tempfile.mkdtemp(prefix="threads-", dir=tmp_path))
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "VITKIT_TEST_THREADS": str(threads),
                "PYTHONPATH": os.pathsep.join([str(WORKER_HOOKS), str(SRC)]), **(env or {})}
    result = subprocess.run(command, cwd=tmp_path, env=full_env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_S)
    if check:
        assert result.returncode == 0, f"stdout: {result.stdout[-1000:]}\nstderr: {result.stderr[-4000:]}"
    if result.returncode == 0:
        for rank in range(processes):
            at_exit = json.loads((threads / f"rank{rank}.json").read_text())
            assert not [name for name in at_exit or [] if "gloo" in name], (rank, at_exit)
    return result


def last_state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def assert_close_states(a: dict, b: dict) -> None:
    """Same tensor names (model, optimiser state, RNG), floats within FLOAT_TOLERANCE."""
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("train_state.rng."):
            continue
        if a[key].dtype.is_floating_point:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=FLOAT_TOLERANCE, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def watch(folder: Path, log: Path) -> dict:
    """Environment for `torchrun` that has each worker log what it does to files in `folder`."""
    log.mkdir()
    return {"VITKIT_TEST_WATCH": str(folder), "VITKIT_TEST_LOG": str(log)}


def file_access(log: Path) -> tuple[list[str], list[str]]:
    """What ranks 0 and 1 did to files in the watched folder (opened for reading or writing,
    temporary files, renames, new folders, deletions)."""
    return tuple(json.loads((log / f"rank{rank}.json").read_text()) for rank in (0, 1))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    """The same epochs with the same numbers: counts and rates exactly, losses (sums taken in
    another order) within 1e-6; times aside."""
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x.keys() - {"seconds"}:
            if key.endswith("loss"):
                assert x[key] == pytest.approx(y[key], abs=1e-6), key
            else:
                assert x[key] == y[key], key


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "stripes.npz")


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    """The reference: the same flags, trained in this process."""
    out = tmp_path_factory.mktemp("single") / "run"
    train(cli_config(data, out), quiet=True)
    return out


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_train_what_one_process_trains_and_only_rank_0_writes(
        tmp_path, data, one_process, sharding):
    out = tmp_path / "run"
    result = torchrun(tmp_path, "--data", str(data), "--out", str(out), *FLAGS,
                      *(["--fsdp"] if sharding == "fsdp" else []), env=watch(tmp_path, tmp_path / "log"))

    # The same steps on the same global batches give the same weights and optimiser state.
    assert_close_states(last_state(out), last_state(one_process))
    assert_same_history(history(out), history(one_process))
    # One summary printed, by rank 0; the run folder holds what one process writes.
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2
    assert files_under(out) == files_under(one_process)
    rank0, rank1 = file_access(tmp_path / "log")
    assert {"os.rename", "write"} <= {event.split()[0] for event in rank0}
    assert any(e.endswith("last.safetensors") for e in rank0) and any(e.endswith("summary.json") for e in rank0)
    assert rank1 == []


# Each objective's flags; pre-training has no labels, so no Mixup flag.
PRETRAIN_FLAGS = FLAGS[:FLAGS.index("--mixup")] + FLAGS[FLAGS.index("--mixup") + 2:]
OBJECTIVES = {
    "mpp": ("pretrain", ["--objective", "mpp"]),
    "mae": ("pretrain", ["--objective", "mae", "--decoder-width", "16", "--decoder-heads", "2"]),
    "distill-soft": ("train", ["--distill", "soft"]),
    "distill-hard": ("train", ["--distill", "hard"]),
    "pgd": ("train", ["--adversarial", "pgd", "--adv-steps", "2", "--adv-eps", "0.1"]),
}


def objective_flags(objective: str, teacher: Path) -> tuple[str, list[str]]:
    command, extra = OBJECTIVES[objective]
    flags = PRETRAIN_FLAGS if command == "pretrain" else FLAGS
    return command, [*flags, *extra, *(["--teacher", str(teacher)] if objective.startswith("distill") else [])]


@pytest.mark.parametrize("objective, sharding", [(objective, sharding) for objective in OBJECTIVES
                                                 for sharding in ("ddp", "fsdp")
                                                 if (objective, sharding) != ("pgd", "fsdp")])
def test_two_processes_train_every_objective_as_one_process_does(tmp_path, data, teacher, objective, sharding):
    """Every objective's draws (masks, corruption, the attack's random start) depend on the image
    and step alone, and its loss is a mean over images, so a global batch split over processes
    trains as one process does (adversarial training with DDP only: see Distributed.check)."""
    command, flags = objective_flags(objective, teacher)
    single, out = tmp_path / "single", tmp_path / "run"
    assert main([command, "--data", str(data), "--out", str(single), *flags]) == 0
    torchrun(tmp_path, "--data", str(data), "--out", str(out), *flags, *(["--fsdp"] if sharding == "fsdp" else []),
             program=("-m", "vitkit", command))
    assert_close_states(last_state(out), last_state(single))
    assert_same_history(history(out), history(single))
    assert files_under(out) == files_under(single)


def test_two_processes_train_with_muon_what_one_process_trains(tmp_path, data):
    # Muon orthogonalises each whole matrix after DDP has averaged the gradients, so every rank
    # takes the step one process takes.
    muon = ("--optimizer", "muon", "--lr", "0.01")
    single = tmp_path / "single"
    train(cli_config(data, single, *muon), quiet=True)
    out = tmp_path / "run"
    torchrun(tmp_path, "--data", str(data), "--out", str(out), *FLAGS, *muon)

    def without_key_biases(state):
        # The key part of the qkv bias has a zero gradient in exact arithmetic (softmax ignores a
        # constant added to every key), so what reaches AdamW there is rounding noise, which
        # differs with the order of DDP's sums, and AdamW scales it to full steps. Plain AdamW
        # shows the same difference (3e-4 here); everything else must agree.
        for key, value in state.items():
            if key.endswith("attn.qkv.bias"):
                width = value.numel() // 3
                state[key] = torch.cat([value[:width], value[2 * width:]])
        return state

    ddp, one = without_key_biases(last_state(out)), without_key_biases(last_state(single))
    assert sum(".momentum_buffer" in key for key in ddp) == 2 * 4  # Muon's matrices, 2 blocks
    assert_close_states(ddp, one)
    assert_same_history(history(out), history(single))


def test_a_checkpoint_resumes_with_another_number_of_processes(tmp_path, data, monkeypatch):
    """1 process -> 2 with FSDP -> 2 with DDP -> 1, one epoch each, ends where one process
    that never stopped ends."""
    straight = tmp_path / "straight"
    train(cli_config(data, straight, "--epochs", "4"), quiet=True)

    run = tmp_path / "run"
    end_epoch = Trainer._end_epoch

    def stop_after_one(self, epoch, stats):
        end_epoch(self, epoch, stats)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        train(cli_config(data, run, "--epochs", "4"), quiet=True)
    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch)

    for epoch, sharding in ((2, ["--fsdp"]), (3, [])):
        log = tmp_path / f"log{epoch}"
        result = torchrun(tmp_path, "--resume", "--out", str(run), "--quiet", *sharding, check=False,
                          env={"VITKIT_TEST_STOP_AFTER_EPOCH": str(epoch), **watch(tmp_path, log)})
        assert result.returncode != 0 and "interrupted" in result.stderr
        assert [h["epoch"] for h in history(run)] == list(range(1, epoch + 1))
        # Rank 0 read the config and checkpoint and sent them on: rank 1 opened no file here.
        rank0, rank1 = file_access(log)
        assert any(e == f"read {run / 'config.yaml'}" for e in rank0) and rank1 == []

    summary = train(TrainConfig(out=str(run)), resume=True, quiet=True)
    assert summary["epochs"] == 4 and "processes" not in summary
    assert_close_states(last_state(run), last_state(straight))
    assert_same_history(history(run), history(straight))


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_update_and_one_process_continues(
        tmp_path, data, one_process):
    """Only rank 1 gets the signal (its machine is preempted); the ranks agree to stop after
    that update, rank 0 writes a mid-epoch checkpoint, and one process finishes the run."""
    run = tmp_path / "run"
    result = torchrun(tmp_path, "--data", str(data), "--out", str(run), *FLAGS, check=False,
                      env={"VITKIT_TEST_SIGTERM_AT_UPDATE": "2"})
    assert result.returncode != 0
    for rank in (0, 1):
        assert f"vitkit train (rank {rank}): stopped by SIGTERM at epoch 1 step 4/8;" in result.stderr
    saved = json.loads(read_header(run / "checkpoints" / "last.safetensors")["train_state"])["progress"]
    assert (saved["epoch"], saved["step"], saved["update"]) == (0, 4, 2)

    train(TrainConfig(out=str(run)), resume=True, quiet=True)
    assert_close_states(last_state(run), last_state(one_process))
    assert_same_history(history(run), history(one_process))


def poison_third_loss(monkeypatch) -> None:
    """In this process, as VITKIT_TEST_NAN_AT_STEP=3 does on rank 1: the third loss is NaN."""
    import vitkit.objectives.supervised as supervised

    real_loss, calls = supervised.soft_cross_entropy, [0]

    def loss(logits, targets):
        calls[0] += 1
        return real_loss(logits, targets) * (float("nan") if calls[0] == 3 else 1.0)

    monkeypatch.setattr(supervised, "soft_cross_entropy", loss)


def test_a_nan_loss_on_one_rank_is_skipped_by_every_rank(tmp_path, data, monkeypatch):
    reference = tmp_path / "one"
    poison_third_loss(monkeypatch)
    train(cli_config(data, reference, "--skip-nonfinite"), quiet=True)
    run = tmp_path / "run"
    result = torchrun(tmp_path, "--data", str(data), "--out", str(run), *FLAGS, "--skip-nonfinite",
                      env={"VITKIT_TEST_NAN_AT_STEP": "3"})
    summary = json.loads(result.stdout)
    assert summary["skipped_updates"] == 1
    assert_close_states(last_state(run), last_state(reference))
    assert_same_history(history(run), history(reference))


def test_a_nan_loss_on_one_rank_stops_every_rank(tmp_path, data):
    run = tmp_path / "run"
    result = torchrun(tmp_path, "--data", str(data), "--out", str(run), *FLAGS, check=False,
                      env={"VITKIT_TEST_NAN_AT_STEP": "3"})
    assert result.returncode != 0
    for rank in (0, 1):
        assert (f"vitkit train: error (rank {rank}): the training loss became nan at epoch 1 step 3/8; "
                "stopped without saving; no checkpoint was written yet") in result.stderr
    assert not (run / "checkpoints" / "last.safetensors").exists()


KEEPS_THE_EXCEPTION = """
import sys, traceback
from vitkit.train import TrainConfig, Trainer, train

def fail(self, epoch, bar):
    raise RuntimeError("a failure inside the run")

Trainer.train_epoch = fail
config = TrainConfig(data=sys.argv[1], out=sys.argv[2], epochs=1, batch_size=7, image_size=8,
                     model_options=dict(width=16, depth=1, num_heads=2, mlp_dim=32))
try:
    train(config, quiet=True)
except RuntimeError as error:
    kept = error  # held until the interpreter shuts down, past the workers' exit hooks
print("".join(traceback.format_exception(kept)))
"""


def test_a_failed_run_ends_its_process_group_even_while_the_caller_keeps_the_exception(tmp_path, data):
    script = tmp_path / "keeps_the_exception.py"
    script.write_text(KEEPS_THE_EXCEPTION)
    # The launch succeeds (the script catches the error), so torchrun() checks the threads at exit.
    result = torchrun(tmp_path, str(data), str(tmp_path / "run"), processes=1, program=(str(script),))
    assert "in fail" in result.stdout and "a failure inside the run" in result.stdout


def test_streamed_from_shards_each_rank_takes_its_share_of_the_global_batch(tmp_path, data, one_process):
    """Shards stream each rank its own part of the epoch (docs/streaming.md), so the batches are
    not one process's; what must hold is the schedule: the same global batch, steps and updates."""
    shards = tmp_path / "shards"
    assert main(["shard", str(data), "--out", str(shards), "--shard-size", "20", "--quiet"]) == 0
    run = tmp_path / "run"
    flags = [f for f in FLAGS if f != "--no-flip"]  # shard folders carry no augmentation defaults to undo
    batch = flags.index("--batch-size") + 1
    flags[batch] = "8"  # streamed, the global batch divides by the world size
    result = torchrun(tmp_path, "--data", str(shards), "--out", str(run), *flags, "--workers", "0",
                      env=watch(run, tmp_path / "log"))
    assert json.loads(result.stdout)["processes"] == 2
    saved = json.loads(read_header(run / "checkpoints" / "last.safetensors")["train_state"])["progress"]
    # 50 training images: 25 a rank, batches of 4 a rank: 7 steps an epoch, 4 updates of 2 steps.
    assert (saved["epoch"], saved["update"]) == (2, 8)
    assert files_under(run) == files_under(one_process)
    assert file_access(tmp_path / "log")[1] == []  # rank 1 read its shards, and nothing of the run


def test_each_rank_takes_a_contiguous_part_of_every_global_batch():
    batch = torch.arange(10, 17)
    parts = [Distributed(rank, 3, rank, active=True).shard(batch) for rank in range(3)]
    assert [p.tolist() for p in parts] == [[10, 11, 12], [13, 14], [15, 16]]
    # A last batch smaller than the world leaves the last ranks empty.
    assert [Distributed(r, 3, r, active=True).shard(batch[:1]).numel() for r in range(3)] == [1, 0, 0]
    assert torch.equal(Distributed().shard(batch), batch)


def test_each_rank_has_its_own_random_stream_whatever_the_world_size():
    seeds = {rank_seed(0, rank, update) for rank in range(1, 5) for update in (0, 100)}
    assert len(seeds) == 8
    assert rank_seed(0, 1, 100) == rank_seed(0, 1, 100) != rank_seed(1, 1, 100)


@pytest.mark.parametrize("changes, message", [
    (dict(fsdp=True, ema=0.99), "--ema"),
    (dict(batch_size=1), "smaller than the 2 processes"),
    (dict(fsdp=True, adversarial="pgd"), "use DDP"),
    (dict(fsdp=True, adversarial="fgsm"), "use DDP"),
    (dict(fsdp=True, skip_nonfinite=True, accum_steps=2), "needs --accum-steps 1"),
])
def test_what_cannot_work_across_processes_is_refused_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        Distributed(0, 2, 0, active=True).check(TrainConfig(**changes))
    assert "\n" not in str(error.value)


def test_a_streamed_global_batch_must_divide_by_the_world_size():
    with pytest.raises(ConfigError, match="must divide by the 2 processes"):
        Distributed(0, 2, 0, active=True).check(TrainConfig(batch_size=7), streaming=True)
    Distributed(0, 2, 0, active=True).check(TrainConfig(batch_size=7))


def test_fsdp_without_torchrun_is_refused_before_a_run_folder_is_made(tmp_path):
    with pytest.raises(ConfigError, match="--fsdp shards the model across processes started by torchrun"):
        train(TrainConfig(out=str(tmp_path / "run"), fsdp=True), quiet=True)
    assert not (tmp_path / "run").exists()


def test_under_torchrun_each_process_takes_its_local_gpu():
    with pytest.raises(ConfigError, match="cuda:LOCAL_RANK"):
        Distributed(1, 2, 1, active=True).device("cuda:1")
    assert Distributed(1, 2, 1, active=True).device("cpu") == torch.device("cpu")
