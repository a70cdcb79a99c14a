"""Accuracy against training-set size (paper section 4.4, Figs. 3 and 4): the same model
trained on nested, stratified fractions of the training split."""

from __future__ import annotations

from pathlib import Path

from vitkit.data import training_subset
from vitkit.errors import ConfigError
from vitkit.experiments.runner import Cell, Experiment, Setup, line_plot

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def cells(setup: Setup) -> list[Cell]:
    fractions = setup.settings.fractions or FRACTIONS
    if any(f > 1 for f in fractions):
        raise ConfigError(f"--fractions must be in (0, 1], got {', '.join(map(str, fractions))}")
    epochs = setup.settings.epochs
    # The same number of optimiser updates for every fraction, so that the data size, not the
    # training length, is what changes between cells.
    return [Cell(name=f"fraction{f:g}",
                 labels={"fraction": f"{f:g}",
                         "images": len(training_subset(setup.data.train, f, setup.base.data.split_seed))},
                 changes={"train_fraction": float(f), "epochs": max(1, round(epochs / f))})
            for f in fractions]


def report(setup: Setup, rows: list[dict], out: Path) -> dict:
    series = {"test accuracy": [(float(r["labels"]["fraction"]), r["stats"]["test_acc"]) for r in rows],
              f"{setup.settings.shots}-shot linear": [(float(r["labels"]["fraction"]), r["stats"]["fewshot"])
                                                       for r in rows]}
    line_plot(series, out / "datasize.png", "Accuracy against training-set size", "fraction of the training split",
              num_test=len(setup.data.test))
    return {"plots": ["datasize.png"], "sections": [{"title": "How the fractions are drawn", "lines": [
        "Each fraction is a stratified subset of the training split drawn with the split seed, the same for "
        "every training seed; smaller fractions are subsets of larger ones. Every cell gets the same number "
        "of optimiser updates (epochs = base epochs / fraction), and the few-shot shots are drawn from the "
        "images the cell was trained on. Validation and test splits are the full ones."]}]}


EXPERIMENT = Experiment(
    name="datasize", title="Accuracy against training-set size (paper Figs. 3, 4)",
    description="The same model and recipe trained on growing fractions of the training split; test accuracy "
                "and few-shot accuracy of the frozen features.",
    cells=cells, fewshot=True, report=report)
