"""The paper's comparisons reproduced on the user's data (SPEC section 5): each experiment is a
list of cells (configurations of the normal trainer) run over seeds; `run_experiment` trains
what is not finished and writes results.md, results.json and plots."""

from __future__ import annotations

from vitkit.errors import ConfigError
from vitkit.experiments import arch, datasize, depth, pooling, posemb
from vitkit.experiments.runner import Cell, Experiment, Settings, aggregate, run_experiment

EXPERIMENTS = {m.EXPERIMENT.name: m.EXPERIMENT for m in (posemb, pooling, depth, arch, datasize)}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


__all__ = ["Cell", "EXPERIMENTS", "Experiment", "Settings", "aggregate", "get_experiment", "run_experiment"]
