"""Shallow vs deep at a similar parameter count: for each depth the width (and the MLP width,
in the base model's proportion) whose parameter count is closest to the base model's."""

from __future__ import annotations

import math
from pathlib import Path

from vitkit.experiments.runner import Cell, Experiment, Setup, bar_plot
from vitkit.models import ModelConfig, parameters_of

SHALLOW, DEEP = 2, 8


def shape_at_depth(model_options: dict, depth: int, target: int) -> dict:
    """Width and MLP width at `depth` whose parameter count is closest to `target`. Widths step
    by a multiple of the head count and of 4 (so every position embedding kind fits)."""
    heads = model_options["num_heads"]
    step = heads * 4 // math.gcd(heads, 4)
    ratio = model_options["mlp_dim"] / model_options["width"]

    def shape(width: int) -> dict:
        return {"depth": depth, "width": width, "mlp_dim": max(1, round(ratio * width))}

    def params(width: int) -> int:
        return parameters_of(ModelConfig.from_dict({**model_options, **shape(width)}))

    low, high = 1, 2
    while params(high * step) < target:
        low, high = high, high * 2
    while high - low > 1:  # parameters grow with the width: bisect on multiples of the step
        mid = (low + high) // 2
        low, high = (mid, high) if params(mid * step) < target else (low, mid)
    best = min((low, high), key=lambda k: abs(params(k * step) - target))
    return shape(best * step)


def cells(setup: Setup) -> list[Cell]:
    base = setup.model
    depths = setup.settings.depths or sorted({SHALLOW, base["depth"], DEEP})
    target = parameters_of(ModelConfig.from_dict(base))
    result = []
    for depth in depths:
        shape = ({"depth": depth, "width": base["width"], "mlp_dim": base["mlp_dim"]} if depth == base["depth"]
                 else shape_at_depth(base, int(depth), target))
        result.append(Cell(name=f"depth{depth}-width{shape['width']}",
                           labels={"depth": depth, "width": shape["width"], "MLP": shape["mlp_dim"]},
                           model_options=shape))
    return result


def report(setup: Setup, rows: list[dict], out: Path) -> dict:
    bar_plot(rows, ["test_acc", "val_acc"], out / "depth.png", "Shallow vs deep at a similar parameter count",
             num_test=len(setup.data.test))
    target = parameters_of(ModelConfig.from_dict(setup.model))
    note = (f"The base model has {target:,} parameters. Each other depth keeps the head count and the MLP/width "
            "ratio and takes the width (a multiple of the head count and of 4) whose parameter count is closest "
            "to it; the params column gives each model's exact count.")
    return {"target_params": target, "plots": ["depth.png"],
            "sections": [{"title": "Matching the parameters", "lines": [note]}]}

EXPERIMENT = Experiment(
    name="depth", title="Shallow and wide vs deep and narrow",
    description="Transformers of different depths at a similar number of parameters, same recipe and epochs.",
    cells=cells, report=report)
