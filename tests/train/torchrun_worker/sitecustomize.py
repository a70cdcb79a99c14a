"""Imported at start-up by the processes the distributed tests launch (this folder goes first on
their PYTHONPATH), so that they run the real `torchrun ... -m vitkit train` command while:

- VITKIT_TEST_WATCH=DIR and VITKIT_TEST_LOG=LOGDIR: each worker records everything it does to
  files under DIR (files opened for reading or writing, temporary files, renames, new folders,
  deletions) and on exit events the list to LOGDIR/rank<RANK>.json;
- VITKIT_TEST_STOP_AFTER_EPOCH=K: the run stops (KeyboardInterrupt, as if interrupted) once
  every rank has finished epoch K and rank 0 has written its checkpoint;
- VITKIT_TEST_SIGTERM_AT_UPDATE=K: rank 1 alone sends itself SIGTERM during its K-th optimiser
  update (as if only its machine were being preempted);
- VITKIT_TEST_NAN_AT_STEP=K: rank 1 alone gets a NaN loss at its K-th loss computation;
- VITKIT_TEST_THREADS=DIR: each worker writes the names of its threads, as the last thing
  before the interpreter shuts down, to DIR/rank<RANK>.json (null without /proc).

Only torchrun's workers (RANK set) are touched; torchrun's own agent process is left alone.
"""

import atexit
import json
import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.rename": (0, 1), "os.mkdir": (0,), "os.remove": (0,),  # os.replace raises os.rename
               "os.rmdir": (0,), "tempfile.mkstemp": (0,), "shutil.rmtree": (0,)}


def _record_file_access(watched: str, log_dir: str) -> None:
    watched = os.path.realpath(watched)
    events = []
    recording = [True]

    def inside(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(watched + os.sep)
        except (TypeError, ValueError):
            return False

    def hook(event, args):
        if not recording[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
            if inside(path):
                events.append(f"{'write' if writing else 'read'} {os.fsdecode(path)}")
        elif event in PATH_EVENTS:
            paths = [args[i] for i in PATH_EVENTS[event]]
            if any(isinstance(p, (str, bytes, os.PathLike)) and inside(p) for p in paths):
                events.append(f"{event} {' '.join(os.fsdecode(p) for p in paths)}")

    sys.addaudithook(hook)

    def dump():
        recording[0] = False
        with open(os.path.join(log_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
            json.dump(events, f)

    atexit.register(dump)


def _record_threads_at_exit(log_dir: str) -> None:
    def dump():
        tasks = "/proc/self/task"
        names = None  # unknown where there is no /proc (not Linux)
        if os.path.isdir(tasks):
            names = []
            for task in os.listdir(tasks):
                with open(os.path.join(tasks, task, "comm")) as f:
                    names.append(f.read().strip())
            names.sort()
        with open(os.path.join(log_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
            json.dump(names, f)

    atexit.register(dump)  # registered first, so run last


def _stop_after(epoch_count: int) -> None:
    import torch.distributed as dist

    from vitkit.train.loop import Trainer

    end_epoch = Trainer._end_epoch

    def end_then_stop(self, epoch, stats):
        end_epoch(self, epoch, stats)
        if epoch + 1 == epoch_count:
            dist.barrier()
            raise KeyboardInterrupt

    Trainer._end_epoch = end_then_stop


def _sigterm_at_update(update: int) -> None:
    import signal

    from vitkit.train.loop import Trainer

    real_update = Trainer._update
    calls = [0]

    def update_then_signal(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == update:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_update(self, *args, **kwargs)

    Trainer._update = update_then_signal


def _nan_at_step(step: int) -> None:
    import vitkit.objectives.supervised as supervised

    real_loss = supervised.soft_cross_entropy
    calls = [0]

    def loss(logits, targets):
        calls[0] += 1
        value = real_loss(logits, targets)
        return value * float("nan") if calls[0] == step else value

    supervised.soft_cross_entropy = loss


if "RANK" in os.environ:
    if os.environ.get("VITKIT_TEST_THREADS"):
        _record_threads_at_exit(os.environ["VITKIT_TEST_THREADS"])
    if os.environ.get("VITKIT_TEST_WATCH"):
        _record_file_access(os.environ["VITKIT_TEST_WATCH"], os.environ["VITKIT_TEST_LOG"])
    if os.environ.get("VITKIT_TEST_STOP_AFTER_EPOCH"):
        _stop_after(int(os.environ["VITKIT_TEST_STOP_AFTER_EPOCH"]))
    if os.environ["RANK"] == "1" and os.environ.get("VITKIT_TEST_SIGTERM_AT_UPDATE"):
        _sigterm_at_update(int(os.environ["VITKIT_TEST_SIGTERM_AT_UPDATE"]))
    if os.environ["RANK"] == "1" and os.environ.get("VITKIT_TEST_NAN_AT_STEP"):
        _nan_at_step(int(os.environ["VITKIT_TEST_NAN_AT_STEP"]))
