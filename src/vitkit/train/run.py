"""The run folder: config.yaml, metrics.jsonl, summary.json, checkpoints/, plots/.

Every file is written atomically, so a run that fails or is killed leaves what it wrote
before intact.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vitkit.errors import ConfigError
from vitkit.io import remove_stale_temporaries, write_json, write_text
from vitkit.train.config import TrainConfig


class RunFolder:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def open(cls, out: str | None, resume: bool) -> "RunFolder":
        if out is None:
            if resume:
                raise ConfigError("--resume needs --out DIR, the run folder to continue")
            out = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        path = Path(out)
        if resume:
            if not (path / "config.yaml").is_file():
                raise ConfigError(f"{path} holds no run to resume (no config.yaml); check --out, or "
                                  "start the run anew without --resume")
        elif (path / "config.yaml").exists() or any((path / "checkpoints").glob("*.safetensors")):
            raise ConfigError(f"{path} already holds a run; continue it with --resume or choose "
                              "another --out")
        elif path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder")
        try:
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
            (path / "plots").mkdir(exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run folder {path}: {e.strerror}") from None
        run = cls(path)
        run.remove_stale_temporaries()
        return run

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
