"""Writing a run's checkpoints without ever losing the previous one, and reading them back.

`last.safetensors` holds everything a resumed run needs (model, optimiser, EMA, the objective's
own parameters, RNG states and progress; train/state.py); `best` and `final.safetensors` hold
the model to evaluate. Every write goes to a temporary name and is renamed into place
(vitkit.io), and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from vitkit.data.spec import fingerprint
from vitkit.errors import CheckpointError, ConfigError, SaveError
from vitkit.formats.native import read_header, save as save_model
from vitkit.train.config import TrainConfig
from vitkit.train.distributed import Distributed, split_state
from vitkit.train.run import RunFolder
from vitkit.train.state import check_fits_optimizer, load_training_state, save_training_state

# What to do about a failed save, by errno.
SAVE_ADVICE = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
               errno.EFBIG: "raise the file-size limit (ulimit -f)",
               errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable",
               errno.EROFS: "use a writable file system"}


class Checkpoints:
    """The checkpoints of one run folder. `resume_command` is what the messages tell the user to
    run to continue (e.g. `vitkit train --resume --out RUN`)."""

    def __init__(self, run_dir: RunFolder, dist: Distributed, resume_command: str):
        self.run_dir, self.dist, self.resume_command = run_dir, dist, resume_command
        # Where the checkpoint on disk stands ("the end of epoch 2"), for messages; None: none yet.
        self.saved_at: str | None = None

    def note(self) -> str:
        """What a failed run leaves to continue from, in words."""
        if self.saved_at is None:
            return "no checkpoint was written yet (--resume starts the run afresh)"
        return f"the previous checkpoint {self.run_dir.last_checkpoint} ({self.saved_at}) is intact"

    @contextlib.contextmanager
    def saving(self, path: Path) -> Iterator[None]:
        """Turn a failed write (disk full, no permission, file-size limit) into one line naming
        the file, the reason and the checkpoint to continue from. atomic_path has already
        removed the half-written temporary and left the old file as it was."""
        try:
            yield
        except OSError as e:
            advice = SAVE_ADVICE.get(e.errno, "fix that")
            raise SaveError(f"cannot write {path}: {e.strerror or e}; {self.note()}; {advice}, then continue "
                            f"with `{self.resume_command}`") from None

    def write_last(self, step: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   ema_shadow: dict | None, progress: dict, position: str) -> None:
        """checkpoints/last.safetensors from every rank's part (a collective under FSDP)."""
        state = self.dist.full_state(step)
        optimizer_state = self.dist.full_optimizer_state(step, optimizer)

        def write() -> None:
            with self.saving(self.run_dir.last_checkpoint):
                save_training_state(self.run_dir.last_checkpoint, step.model.config, split_state(state, "model."),
                                    optimizer_state, ema_shadow, progress, split_state(state, "objective."))

        self.dist.on_rank0(write)
        self.saved_at = position

    def write_model(self, model: torch.nn.Module | None, path: Path, metadata: dict) -> None:
        """A model file (best or final.safetensors); `model` is the unsharded model on rank 0."""
        def write() -> None:
            with self.saving(path):
                save_model(model, path, metadata=metadata)

        self.dist.on_rank0(write)

    def read_last(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The training state of last.safetensors on rank 0 (others get {}), checked against this
        run's optimiser; None when the run stopped before its first checkpoint."""
        path = self.run_dir.last_checkpoint
        if not path.exists():
            if self.run_dir.summary_file.exists():
                raise CheckpointError(f"{self.run_dir.path} has no checkpoint to resume from ({path.name} is "
                                      "missing); start a new run instead")
            return None
        state = load_training_state(path)
        check_fits_optimizer(state, optimizer, path)
        return state


def check_same_data(run_dir: RunFolder, cfg: TrainConfig, moved: bool) -> None:
    """Refuse to continue a run on other data than it trained on (another folder found at the
    same path from another working folder, images added or deleted since, a folder that moved):
    its split and step count would silently change. Read from the checkpoint's header alone,
    before any data is loaded. A run killed before its first checkpoint, or one whose checkpoint
    predates fingerprints, is not checked. `moved`: the data was given a new place (--data),
    recorded in config.yaml once its fingerprint is found to be the run's."""
    try:
        progress = json.loads(read_header(run_dir.last_checkpoint)["train_state"])["progress"]
        trained_on = progress.get("data")
    except Exception:  # no checkpoint yet, or a damaged one, which reading it will name
        return
    if not isinstance(trained_on, dict):
        return
    source, now = cfg.data.source, fingerprint(cfg.data)
    resume = f"vitkit {'pretrain' if cfg.pretraining else 'train'} --resume --out {run_dir.path}"
    if now["kind"] == "missing":
        raise ConfigError(f"the data this run trained on, {source}, is gone; if it moved, resume with "
                          f"`{resume} --data NEW_PLACE`")
    if (now["kind"], now["sha256"]) != (trained_on.get("kind"), trained_on.get("sha256")):
        files = f" ({trained_on.get('files')} files then, {now['files']} now)" if now["kind"] == "folder" else ""
        raise ConfigError(f"{source} is not the data this run trained on: its files differ{files}; put the data back "
                          "as it was (or resume with `--data` at a copy of it), or start a new run")
    if moved:
        run_dir.write_config(cfg)  # from now on the run's data is where it was found
        tqdm.write(f"note: the run's data is now {source} (its files are those it trained on)", file=sys.stderr)
