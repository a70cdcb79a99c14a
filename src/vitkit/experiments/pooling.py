"""Class token vs global average pooling (paper Fig. 9): both reach the same accuracy but
at different learning rates, so each is swept over its own learning rates and the best of
each (by validation accuracy) is compared."""

from __future__ import annotations

from pathlib import Path

from vitkit.experiments.runner import Cell, Experiment, Setup, format_score, line_plot

POOLS = ("token", "gap")
LR_FACTORS = (1 / 3, 1.0, 3.0)  # around the learning rate vitkit picks for the data


def learning_rates(setup: Setup) -> tuple[float, ...]:
    if setup.settings.lrs:
        return tuple(setup.settings.lrs)
    return tuple(float(f"{setup.base.lr * f:.3g}") for f in LR_FACTORS)


def cells(setup: Setup) -> list[Cell]:
    return [Cell(name=f"{pool}-lr{lr:g}", labels={"pool": pool, "lr": f"{lr:g}"},
                 model_options={"pool": pool}, changes={"lr": lr})
            for pool in POOLS for lr in learning_rates(setup)]


def report(setup: Setup, rows: list[dict], out: Path) -> dict:
    names = {"token": "class token", "gap": "global average pooling"}
    series = {names[pool]: [(float(r["labels"]["lr"]), r["stats"]["test_acc"]) for r in rows
                            if r["labels"]["pool"] == pool] for pool in POOLS}
    line_plot(series, out / "pooling.png", "Class token vs GAP: test accuracy against learning rate",
              "peak learning rate", num_test=len(setup.data.test))
    best = {}
    lines = ["The best learning rate of each pooling is chosen by mean validation accuracy (never the test "
             "split); its test accuracy is the comparison.", "",
             "| pooling | best lr | validation (%) | test (%) |", "|---|---|---|---|"]
    for pool in POOLS:
        mine = [r for r in rows if r["labels"]["pool"] == pool]
        top = max(mine, key=lambda r: r["stats"]["val_acc"]["mean"])
        best[pool] = {"lr": float(top["labels"]["lr"]), "cell": top["cell"], "val_acc": top["stats"]["val_acc"],
                      "test_acc": top["stats"]["test_acc"]}
        lines.append(f"| {pool} | {top['labels']['lr']} | {format_score(top['stats']['val_acc'])} | "
                     f"{format_score(top['stats']['test_acc'])} |")
    return {"best": best, "plots": ["pooling.png"], "sections": [{"title": "Best learning rate per pooling",
                                                                    "lines": lines}]}


EXPERIMENT = Experiment(
    name="pooling", title="Class token vs global average pooling (paper Fig. 9)",
    description="The same model read out through a class token or by averaging the final patch tokens, each "
                "trained at several learning rates (the paper found they want different ones).",
    cells=cells, report=report)
