"""Running an experiment: one training run per (cell, seed) with the normal trainer, skipping
finished runs and resuming interrupted ones; then mean and spread over seeds, results.md,
results.json and the plots, and which differences between cells are within noise.

A cell is one configuration: changes to a shared base config, which is resolved once from the
full data (as `vitkit train` would) and then pinned, so cells differ only where they say.

Noise: on a small test split one image is a large step (1 of 359 is 0.28 points), and from one
training seed to the next the same cell moves by a few images. So small data gets several seeds
by default (`default_seeds`), every score is a mean ± the seeds' spread, the plots draw that
spread as error bars on axes that do not zoom into it, and `noise_verdict` says which cells are
within noise of the best: at most one test image apart, or at most their seeds' spread.
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
from vitkit.data.spec import DataSpec
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


# Training splits up to this size get SMALL_DATA_SEEDS seeds unless told otherwise: their runs
# take minutes, and one run's test accuracy is a few images from the next seed's.
SMALL_DATA_IMAGES = 10_000
SMALL_DATA_SEEDS = 3


def default_seeds(num_train: int) -> int:
    """Seeds per cell when the user names none: several on small data, where runs are cheap and
    noisy, one on large data."""
    return SMALL_DATA_SEEDS if num_train <= SMALL_DATA_IMAGES else 1


@dataclass
class Settings:
    data: DataSpec | str = "digits"
    out: str = "experiment"
    epochs: int = 10
    seeds: int | None = None  # None: default_seeds(training images)
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


def noise_verdict(rows: list[dict], key: str, num_test: int) -> dict | None:
    """Which cells are within noise of the best one on metric `key` (a fraction of the test
    split): at most one test image apart, or at most as far apart as the larger of the two cells'
    spreads over seeds. Returns {"metric", "best", "one_image", "within_noise": [cells],
    "apart": [cells], "text"}, or None when no cell has the metric."""
    scored = [r for r in rows if key in r["stats"] and r["stats"][key]["mean"] is not None]
    if not scored or num_test < 1:
        return None
    best = max(scored, key=lambda r: r["stats"][key]["mean"])
    top, one_image = best["stats"][key], 1.0 / num_test
    within, apart = [], []
    for r in scored:
        if r is best:
            continue
        s = r["stats"][key]
        spreads = [v for v in (top["spread"], s["spread"]) if v is not None]
        noise = max([one_image, *spreads])
        (within if top["mean"] - s["mean"] <= noise + 1e-12 else apart).append(r["cell"])
    name = dict(METRICS)[key].replace(" (%)", "")
    head = f"{name}: {best['cell']} is highest ({format_score(top)})"
    resolution = f"one test image is {100 * one_image:.2f} points"
    if not within:
        text = f"{head}; every other cell is further below than one test image and the seeds' spread ({resolution})."
    elif not apart:
        text = (f"{head}, but every cell is within noise of it (at most one test image or the seeds' spread "
                f"apart; {resolution}): on this data the experiment does not separate them.")
    else:
        text = (f"{head}; within noise of it (at most one test image or the seeds' spread apart; {resolution}): "
                f"{', '.join(within)}; further below: {', '.join(apart)}.")
    return {"metric": key, "best": best["cell"], "one_image": one_image, "within_noise": within, "apart": apart,
            "text": text}


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
        if key == "out" or value is None:
            continue
        if isinstance(value, dict):
            # The pixel limit decides which files are read, not what is trained on them.
            differ = [k for k in value if have[key].get(k) != value[k] and (key, k) != ("data", "max_image_pixels")]
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
            train_part = training_subset(setup.data.train, fraction, wanted.data.split_seed)
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
    if settings.epochs < 1 or (settings.seeds is not None and settings.seeds < 1):
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
    data = load_data(settings.data, quiet=settings.quiet)
    setup = Setup(settings, data, pinned_base(settings, data))
    cells = experiment.cells(setup)
    write_json(marker, {"experiment": experiment.name, "data": DataSpec.of(settings.data).source})
    seeds = settings.seeds if settings.seeds is not None else default_seeds(len(data.train))
    if settings.seeds is None:
        why = (f"at most {SMALL_DATA_IMAGES:,}: small runs vary from seed to seed" if seeds > 1
               else f"over {SMALL_DATA_IMAGES:,}")
        say(f"seeds: {seeds} per cell ({len(data.train):,} training images, {why}; --seeds N to choose)")
    total = len(cells) * seeds
    started = time.perf_counter()
    rows = []
    for i, cell in enumerate(cells):
        runs = [run_cell(setup, cell, seed, out / "runs" / f"{cell.name}-seed{seed}", experiment.fewshot, say,
                         f"{i * seeds + seed + 1}/{total}") for seed in range(seeds)]
        stats = {key: aggregate([r.get(key) for r in runs]) for key, _ in METRICS
                 if key != "fewshot" or experiment.fewshot}
        rows.append({"cell": cell.name, "labels": cell.labels, "model_options": cell.model_options,
                     "changes": cell.changes, "reference": cell.reference, "params": runs[0]["params"],
                     "epochs": runs[0]["epochs"], "stats": stats, "runs": runs})
    extra = experiment.report(setup, rows, out) if experiment.report else {}
    verdicts = [v for v in (noise_verdict(rows, key, len(data.test)) for key, _ in METRICS if key != "val_acc")
                if v is not None]
    result = {"experiment": experiment.name, "title": experiment.title, "data": data.source,
              "num_train": setup.num_train, "num_test": len(data.test), "epochs": settings.epochs,
              "seeds": seeds, "shots": settings.shots if experiment.fewshot else None, "noise": verdicts,
              "base_model": {k: setup.model[k] for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size",
                                                         "image_size", "pool", "posemb")},
              "lr": setup.base.lr, "batch_size": setup.base.batch_size,
              "cells": rows, **extra}
    write_json(out / "results.json", result)
    write_text(out / "results.md", results_markdown(experiment, result))
    for verdict in verdicts:
        say(verdict["text"])
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
             "none with one seed",
             f"- resolution: one test image is {100 / result['num_test']:.2f} points of test accuracy"
             if result["num_test"] else "- no test images"]
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
    if result["noise"]:
        lines += ["", "## Which differences are noise", ""]
        lines += [f"- {verdict['text']}" for verdict in result["noise"]]
        if seeds == 1:
            lines.append("- With one seed there is no spread to compare with: run again with --seeds 3 to measure it.")
    for section in result.get("sections", []):
        lines += ["", f"## {section['title']}", "", *section["lines"]]
    for plot in result.get("plots", []):
        lines += ["", f"![{plot}]({plot})"]
    lines += ["", "Each run's folder (`runs/<cell>-seed<k>/`) holds its config.yaml, metrics, checkpoints "
              "and summary.json; run the same command again to add seeds or finish interrupted runs.", ""]
    return "\n".join(lines)


def _resolution_note(ax, num_test: int | None) -> None:
    if num_test:
        ax.text(0.01, 0.01, f"error bars: spread over seeds; one test image = {100 / num_test:.2f} points",
                transform=ax.transAxes, fontsize=7, color="0.3", va="bottom")


def bar_plot(rows: list[dict], metrics: list[str], path: Path, title: str, num_test: int | None = None):
    """One group of bars per cell, one bar per metric, error bars = spread over seeds, on the full
    0-100 % axis. Returns the figure (saved to `path`)."""
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
    _resolution_note(ax, num_test)
    save_figure(fig, path, dpi=110)
    return fig


# A line plot's accuracy axis spans at least this many points, so that a difference of a test
# image or two does not fill the height and look like a trend.
MIN_ACCURACY_SPAN = 20.0


def accuracy_limits(values: list[float]) -> tuple[float, float]:
    """(bottom, top) in % for accuracies `values` (means with their error bars' ends): at least
    MIN_ACCURACY_SPAN points high, within 0-100, the values inside with a little room."""
    low, high = min(values), max(values)
    margin = max(1.0, 0.1 * (high - low))
    top = min(100.0, high + margin)
    bottom = max(0.0, min(low - margin, top - MIN_ACCURACY_SPAN))
    return bottom, max(top, min(100.0, bottom + MIN_ACCURACY_SPAN))


def line_plot(series: dict[str, list[tuple[float, dict]]], path: Path, title: str, xlabel: str,
              log_x: bool = True, num_test: int | None = None):
    """One line per series: (x, stats) points, error bars = spread over seeds, on an accuracy axis
    at least MIN_ACCURACY_SPAN points high. Returns the figure (saved to `path`)."""
    from matplotlib.figure import Figure

    from vitkit.analysis.plots import save_figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ends = []
    for label, points in series.items():
        points = [(x, s) for x, s in points if s["mean"] is not None]
        means = [100 * s["mean"] for _, s in points]
        errors = [100 * (s["spread"] or 0.0) for _, s in points]
        ax.errorbar([x for x, _ in points], means, yerr=errors, marker="o", capsize=3, label=label)
        ends += [m + sign * e for m, e in zip(means, errors) for sign in (-1, 1)]
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="accuracy (%)", title=title)
    if ends:
        ax.set_ylim(*accuracy_limits(ends))
    ax.grid(alpha=0.3)
    ax.legend()
    _resolution_note(ax, num_test)
    save_figure(fig, path, dpi=110)
    return fig


def parse_numbers(text: str, kind=float, name: str = "value") -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated {name}s, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"expected positive {name}s, got {text!r}")
    return values
