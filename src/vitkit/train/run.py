"""The run folder: config.yaml, metrics.jsonl, summary.json, checkpoints/, plots/.

Every file is written atomically, so a run that fails or is killed leaves what it wrote
before intact.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

from vitkit.errors import ConfigError
from vitkit.io import remove_stale_temporaries, write_json, write_text
from vitkit.train.config import TrainConfig


# Held (flock) by the one process that runs in a folder, for the life of the run; it names
# that process's pid for whoever finds the folder in use.
LOCK_NAME = ".lock"


class RunFolder:
    def __init__(self, path: Path):
        self.path = path
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, out: str | None, resume: bool) -> "RunFolder":
        """The run folder `out` (a new one, or with `resume` the run's own), locked for this
        process: a second run in the same folder is refused while this one lives."""
        if out is None:
            if resume:
                raise ConfigError("--resume needs --out DIR, the run folder to continue")
            out = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        path = Path(out)
        if resume:
            if not (path / "config.yaml").is_file():
                raise ConfigError(f"{path} holds no run to resume (no config.yaml); check --out, or "
                                  "start the run anew without --resume")
        elif path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder")
        else:
            cls._check_new(path)
            try:
                (path / "checkpoints").mkdir(parents=True, exist_ok=True)
                (path / "plots").mkdir(exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create the run folder {path}: {e.strerror}") from None
        run = cls(path)
        run.lock()
        try:
            if not resume:
                cls._check_new(path)  # again, now that no other run can be starting here
            run.remove_stale_temporaries()
        except BaseException:
            run.unlock()
            raise
        return run

    @staticmethod
    def _check_new(path: Path) -> None:
        if (path / "config.yaml").exists() or any((path / "checkpoints").glob("*.safetensors")):
            raise ConfigError(f"{path} already holds a run; continue it with --resume or choose "
                              "another --out")

    def lock(self) -> None:
        """Take the folder's lock, or refuse in one line naming the process that holds it. A
        folder that cannot be written is not locked: nothing will be written there either."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one run per folder is then the user's care
            return
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return
            raise ConfigError(f"cannot lock the run folder {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another vitkit run (pid {holder or 'unknown'}); wait for "
                              "it to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        self.unlock()

    def __getstate__(self) -> dict:
        # Sent to the other processes of a distributed run: the lock stays with this one.
        return {"path": self.path, "_lock_fd": None}

    def remove_stale_temporaries(self) -> None:
        """Half-written files of a process killed mid-save: a run folder has one writer, so
        whatever temporaries it holds when a run opens it are left over."""
        remove_stale_temporaries(self.path, names=("config.yaml", "metrics.jsonl", "summary.json"))
        remove_stale_temporaries(self.path / "checkpoints")
        remove_stale_temporaries(self.path / "plots")

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.safetensors"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.safetensors"

    @property
    def final_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "final.safetensors"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def read_config(self) -> TrainConfig:
        cfg = TrainConfig.from_yaml(self.path / "config.yaml")
        return cfg.replace(out=str(self.path))

    def write_config(self, cfg: TrainConfig) -> None:
        write_text(self.path / "config.yaml", cfg.replace(out=str(self.path)).to_yaml())

    def write_metrics(self, history: list[dict]) -> None:
        write_text(self.metrics_file, "".join(json.dumps(h) + "\n" for h in history))

    def write_summary(self, summary: dict, history: list[dict], confusion: list[list[int]] | None = None,
                      class_names: list[str] | None = None) -> None:
        """summary.json (with the test confusion matrix of a classifier) and the plots."""
        # Imported here: matplotlib costs a second or two at start-up, and only the end needs it.
        from vitkit.train.plots import plot_confusion, plot_curves

        write_json(self.summary_file, {**summary, "test_confusion": confusion} if confusion is not None else summary)
        if history:
            plot_curves(history, self.path / "plots")
        if confusion is not None:
            plot_confusion(confusion, class_names, self.path / "plots" / "confusion.png",
                           f"Test confusion matrix (top-1 {summary['test_acc']:.4f})")
