"""Running an experiment: one training run per (cell, seed) with the normal trainer, skipping
finished runs and resuming interrupted ones; then mean and spread over seeds, results.md,
results.json and the plots.

A cell is one configuration: changes to a shared base config, which is resolved once from the
full data (as `vitkit train` would) and then pinned, so cells differ only where they say.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitkit.data import DataSplits, load_data, training_subset
from vitkit.errors import ConfigError, DataError
from vitkit.evaluate import extract_features, fewshot_evaluate
from vitkit.formats import load as load_checkpoint
from vitkit.io import write_json, write_text
from vitkit.train import TrainConfig, loop
from vitkit.train.auto import resolve


@dataclass
class Cell:
    """One configuration of an experiment. `labels` are the table's leading columns;
    `changes` are TrainConfig fields, `model_options` override the model."""

    name: str
    labels: dict[str, Any]
    model_options: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    reference: float | None = None  # the paper's number for this cell, where it has one


@dataclass
class Settings:
    data: str = "digits"
    out: str = "experiment"
    epochs: int = 10
    seeds: int = 1
    shots: int = 5
    fewshot_repeats: int = 5
    model_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    # The swept values of the experiments that sweep one (None: the experiment's default).
    lrs: tuple[float, ...] | None = None
    depths: tuple[int, ...] | None = None
    fractions: tuple[float, ...] | None = None
    quiet: bool = False


@dataclass
class Setup:
    """What an experiment's cells are built from: the settings, the data and the pinned base."""

    settings: Settings
    data: DataSplits
    base: TrainConfig

    @property
    def model(self) -> dict[str, Any]:
        return self.base.model_options

    @property
    def num_train(self) -> int:
        return len(self.data.train)


def aggregate(values: list[float | None]) -> dict[str, Any]:
    """Mean and spread (sample standard deviation, n - 1) of the values that exist; the spread
    is None for fewer than two values, and so is everything for none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "spread": None, "n": 0}
    spread = float(np.std(present, ddof=1)) if len(present) > 1 else None
    return {"mean": float(np.mean(present)), "spread": spread, "n": len(present)}


def format_score(stats: dict[str, Any]) -> str:
    """A fraction as "mean ± spread" in percent."""
    if stats["mean"] is None:
        return "n/a"
    text = f"{100 * stats['mean']:.2f}"
    if stats["spread"] is not None:
        text += f" ± {100 * stats['spread']:.2f}"
    return text


def pinned_base(settings: Settings, data: DataSplits) -> TrainConfig:
    """The config every cell starts from: vitkit's defaults for this data, resolved once on the
    full training split with every value filled in, so that no cell's choices drift with its
    own data size. Warm-up stays free: the trainer sets it from each cell's epochs."""
    cfg = TrainConfig(data=settings.data, model_options=dict(settings.model_options),
                      epochs=settings.epochs, **settings.train_options)
    resolved, _, _ = resolve(cfg, data)
    return resolved.replace(warmup_epochs=cfg.warmup_epochs)


def cell_config(setup: Setup, cell: Cell, seed: int, run_dir: Path) -> TrainConfig:
    base = setup.base
    return base.replace(out=str(run_dir), seed=seed,
                        model_options={**base.model_options, **cell.model_options}, **cell.changes)


def _plain(value):
    return json.loads(json.dumps(value))


def check_same_config(stored: TrainConfig, wanted: TrainConfig, run_dir: Path) -> None:
    """A finished or interrupted run is reused only if it was trained with this cell's config."""
    have, want = _plain(stored.to_dict()), _plain(wanted.to_dict())
    for key, value in want.items():
        # The pixel limit decides which files are read, not what is trained on them.
        if key in ("out", "max_image_pixels") or value is None:
            continue
        if isinstance(value, dict):
            differ = [k for k in value if have[key].get(k) != value[k]]
            if differ:
                k = differ[0]
                raise ConfigError(f"{run_dir} was run with {key}.{k}={have[key].get(k)!r}, not {value[k]!r}; "
                                  "use another --out, or the settings it was run with")
        elif have.get(key) != value:
            raise ConfigError(f"{run_dir} was run with {key}={have.get(key)!r}, not {value!r}; "
                              "use another --out, or the settings it was run with")


# What a finished run's summary.json must hold for the experiment's table, and of what kind.
SUMMARY_FIELDS = {"test_acc": (int, float), "val_acc": (int, float), "epochs": int, "params": int,
                  "train_seconds": (int, float), "checkpoint": str}


def _json_object(path: Path) -> dict | None:
    """The JSON object in a file of the experiment folder, or None if it is not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # ValueError: undecodable, not JSON, huge numbers
        return None
    return value if isinstance(value, dict) else None


def read_summary(path: Path) -> dict:
    """A finished run's summary.json; a damaged one is a ConfigError naming the run to delete."""
    summary = _json_object(path)
    bad = "not a JSON object" if summary is None else next(
        (f"no valid {key!r}" for key, kinds in SUMMARY_FIELDS.items()
         if not isinstance(summary.get(key), kinds) or isinstance(summary.get(key), bool)), None)
    if bad:
        raise ConfigError(f"{path} is damaged ({bad}); delete the folder {path.parent} to train that run again")
    return summary


def read_fewshot(path: Path, repeats: int) -> dict | None:
    """A stored few-shot score of `repeats` draws, or None if there is none that can be used
    (missing, damaged, or of another number of draws): it is then computed again."""
    score = _json_object(path) if path.is_file() else None
    if score is None or score.get("repeats") != repeats or "accuracy" not in score or not (
            score["accuracy"] is None or isinstance(score["accuracy"], (int, float))):
        return None
    return score


def fewshot_score(checkpoint: str, train_images, test_images, shots: int, repeats: int, seed: int) -> dict:
    """k-shot linear accuracy (evaluate.fewshot) on the frozen pre-logits features."""
    model = load_checkpoint(checkpoint)
    train_x = extract_features(model, train_images.images, progress=False)
    test_x = extract_features(model, test_images.images, progress=False)
    try:
        result = fewshot_evaluate(train_x, train_images.labels, test_x, test_images.labels, shots=(shots,),
                                  repeats=repeats, seed=seed, num_classes=model.config.num_classes)
    except DataError as e:
        return {"shots": shots, "accuracy": None, "repeats": repeats, "note": str(e)}
    r = result["shots"][shots]
    return {"shots": shots, "accuracy": r["mean"], "draws": r["accuracies"], "repeats": repeats}


def run_cell(setup: Setup, cell: Cell, seed: int, run_dir: Path, fewshot: bool,
             say: Callable[[str], None], position: str) -> dict:
    """One (cell, seed): read it if finished, resume it if interrupted, else train it."""
    wanted = cell_config(setup, cell, seed, run_dir)
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    label = f"[{position}] {cell.name} seed {seed}"
    if summary_path.is_file():
        check_same_config(TrainConfig.from_yaml(config_path), wanted, run_dir)
        summary = read_summary(summary_path)
        status = "finished earlier, read"
    else:
        resume = config_path.is_file() and (run_dir / "checkpoints" / "last.safetensors").is_file()
        if resume:
            check_same_config(TrainConfig.from_yaml(config_path), wanted, run_dir)
            say(f"{label}: resuming the interrupted run")
        else:
            if run_dir.exists():
                # Stopped before its first epoch ended: nothing to resume, start it again.
                shutil.rmtree(run_dir)
            say(f"{label}: training ({wanted.epochs} epochs)")
        summary = loop.train(wanted, resume=resume, quiet=True)
        status = f"trained in {summary['train_seconds']:.1f} s"
    result = {"seed": seed, "run": str(run_dir), "test_acc": summary["test_acc"], "val_acc": summary["val_acc"],
              "epochs": summary["epochs"], "params": summary["params"], "train_seconds": summary["train_seconds"],
              "checkpoint": summary["checkpoint"]}
    if fewshot:
        s = setup.settings
        path = run_dir / f"fewshot{s.shots}.json"
        score = read_fewshot(path, s.fewshot_repeats)
        if score is None:
            fraction = wanted.train_fraction
            train_part = training_subset(setup.data.train, fraction, wanted.split_seed)
            score = fewshot_score(summary["checkpoint"], train_part, setup.data.test, s.shots,
                                  s.fewshot_repeats, seed)
            write_json(path, score)
        result["fewshot"] = score["accuracy"]
    scores = f"test {result['test_acc']:.4f}"
    if fewshot:
        score = "n/a" if result["fewshot"] is None else f"{result['fewshot']:.4f}"
        scores += f", {setup.settings.shots}-shot {score}"
    say(f"{label}: {status}; {scores}")
    return result


@dataclass
class Experiment:
    """An experiment: its cells (from the setup), whether runs get a few-shot score, and how the
    report adds to the common table (extra sections and the plot)."""

    name: str
    title: str
    description: str
    cells: Callable[[Setup], list[Cell]]
    fewshot: bool = False
    report: Callable[[Setup, list[dict], Path], dict] | None = None


METRICS = (("test_acc", "test accuracy (%)"), ("val_acc", "best validation accuracy (%)"),
           ("fewshot", "few-shot accuracy (%)"))


def run_experiment(experiment: Experiment, settings: Settings) -> dict:
    """Run (or finish) every cell x seed of an experiment in `settings.out` and write
    results.md, results.json and the plots there; returns results.json's content."""
    say = (lambda message: None) if settings.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    if settings.epochs < 1 or settings.seeds < 1:
        raise ConfigError("--epochs and --seeds must be positive")
    out = Path(settings.out)
    marker = out / "experiment.json"
    if marker.is_file():
        stored = _json_object(marker)
        if stored is None:
            raise ConfigError(f"{marker} is damaged (not a JSON object); delete it if {out} holds the "
                              f"{experiment.name!r} experiment")
        earlier = stored.get("experiment")
        if earlier != experiment.name:
            raise ConfigError(f"{out} holds the {earlier!r} experiment; choose another --out for {experiment.name!r}")
    data = load_data(settings.data, split_seed=settings.train_options.get("split_seed", 0),
                     val_fraction=settings.train_options.get("val_fraction", 0.1),
                     test_fraction=settings.train_options.get("test_fraction", 0.2),
                     max_image_pixels=settings.train_options.get("max_image_pixels"))
    setup = Setup(settings, data, pinned_base(settings, data))
    cells = experiment.cells(setup)
    write_json(marker, {"experiment": experiment.name, "data": settings.data})
    total = len(cells) * settings.seeds
    started = time.perf_counter()
    rows = []
    for i, cell in enumerate(cells):
        runs = [run_cell(setup, cell, seed, out / "runs" / f"{cell.name}-seed{seed}", experiment.fewshot, say,
                         f"{i * settings.seeds + seed + 1}/{total}") for seed in range(settings.seeds)]
        stats = {key: aggregate([r.get(key) for r in runs]) for key, _ in METRICS
                 if key != "fewshot" or experiment.fewshot}
        rows.append({"cell": cell.name, "labels": cell.labels, "model_options": cell.model_options,
                     "changes": cell.changes, "reference": cell.reference, "params": runs[0]["params"],
                     "epochs": runs[0]["epochs"], "stats": stats, "runs": runs})
    extra = experiment.report(setup, rows, out) if experiment.report else {}
    result = {"experiment": experiment.name, "title": experiment.title, "data": data.source,
              "num_train": setup.num_train, "num_test": len(data.test), "epochs": settings.epochs,
              "seeds": settings.seeds, "shots": settings.shots if experiment.fewshot else None,
              "base_model": {k: setup.model[k] for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size",
                                                         "image_size", "pool", "posemb")},
              "lr": setup.base.lr, "batch_size": setup.base.batch_size,
              "cells": rows, **extra}
    write_json(out / "results.json", result)
    write_text(out / "results.md", results_markdown(experiment, result))
    say(f"{experiment.name}: {total} runs in {time.perf_counter() - started:.0f} s; results in {out / 'results.md'}")
    return result


def results_markdown(experiment: Experiment, result: dict) -> str:
    base = result["base_model"]
    seeds = result["seeds"]
    lines = [f"# {experiment.title}", "", experiment.description, "",
             f"- data: `{result['data']}`: {result['num_train']} training images, {result['num_test']} test images",
             f"- base model: width {base['width']}, depth {base['depth']}, {base['num_heads']} heads, MLP "
             f"{base['mlp_dim']}, patch {base['patch_size']} on {base['image_size'][0]}x{base['image_size'][1]} "
             f"inputs, pool {base['pool']}, posemb {base['posemb']}; lr {result['lr']:g}, batch {result['batch_size']}",
             f"- {result['epochs']} epochs unless the table says otherwise; {seeds} seed(s) per cell "
             f"(training seeds 0..{seeds - 1}, same data split)",
             "- cells: mean ± spread over seeds, in %; spread = sample standard deviation (n - 1), "
             "none with one seed"]
    if result["shots"]:
        lines += [f"- few-shot: {result['shots']}-shot linear accuracy on the frozen pre-logits features of the "
                  "trained model (regularised least squares, `vitkit fewshot`), averaged over the draws"]
    lines.append("")
    rows = result["cells"]
    label_keys = list(rows[0]["labels"]) if rows else []
    metric_keys = [k for k, _ in METRICS if rows and k in rows[0]["stats"]]
    reference = any(r["reference"] is not None for r in rows)
    header = label_keys + ["params", "epochs"] + [dict(METRICS)[k] for k in metric_keys]
    if reference:
        header.append("paper (ViT-B/16, ImageNet 5-shot)")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r["labels"][k]) for k in label_keys] + [f"{r['params']:,}", str(r["epochs"])]
        cells += [format_score(r["stats"][k]) for k in metric_keys]
        if reference:
            cells.append("n/a" if r["reference"] is None else f"{100 * r['reference']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    for section in result.get("sections", []):
        lines += ["", f"## {section['title']}", "", *section["lines"]]
    for plot in result.get("plots", []):
        lines += ["", f"![{plot}]({plot})"]
    lines += ["", "Each run's folder (`runs/<cell>-seed<k>/`) holds its config.yaml, metrics, checkpoints "
              "and summary.json; run the same command again to add seeds or finish interrupted runs.", ""]
    return "\n".join(lines)


def bar_plot(rows: list[dict], metrics: list[str], path: Path, title: str) -> None:
    """One group of bars per cell, one bar per metric, error bars = spread over seeds."""
    from matplotlib.figure import Figure

    from vitkit.analysis.plots import save_figure

    names = [r["cell"] for r in rows]
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    x = np.arange(len(rows))
    for j, key in enumerate(metrics):
        means = [100 * (r["stats"][key]["mean"] or 0.0) for r in rows]
        errs = [100 * (r["stats"][key]["spread"] or 0.0) for r in rows]
        ax.bar(x + (j - (len(metrics) - 1) / 2) * width, means, width, yerr=errs if any(errs) else None,
               capsize=3, label=dict(METRICS)[key])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path, dpi=110)


def line_plot(series: dict[str, list[tuple[float, dict]]], path: Path, title: str, xlabel: str,
              log_x: bool = True) -> None:
    """One line per series: (x, stats) points, error bars = spread over seeds."""
    from matplotlib.figure import Figure

    from vitkit.analysis.plots import save_figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for label, points in series.items():
        points = [(x, s) for x, s in points if s["mean"] is not None]
        ax.errorbar([x for x, _ in points], [100 * s["mean"] for _, s in points],
                    yerr=[100 * (s["spread"] or 0.0) for _, s in points], marker="o", capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=110)


def parse_numbers(text: str, kind=float, name: str = "value") -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated {name}s, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"expected positive {name}s, got {text!r}")
    return values
