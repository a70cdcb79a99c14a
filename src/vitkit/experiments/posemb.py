"""Position embeddings (paper appendix D.4, Table 8): every kind at every placement the paper
tried, plus the fixed 2-D sine-cosine embedding of later "plain ViT" baselines; scored by
few-shot linear accuracy on frozen features (as in the paper) and by test accuracy."""

from __future__ import annotations

from pathlib import Path

from vitkit.experiments.runner import Cell, Experiment, Setup, bar_plot

# Table 8 of the paper: ViT-B/16 on ImageNet, 5-shot linear accuracy; (kind, placement) -> score.
PAPER_TABLE_8 = {
    ("none", "stem"): 0.61382,
    ("learned1d", "stem"): 0.64206,
    ("learned1d", "every_layer"): 0.63964,
    ("learned1d", "every_layer_shared"): 0.64292,
    ("learned2d", "stem"): 0.64001,
    ("learned2d", "every_layer"): 0.64046,
    ("learned2d", "every_layer_shared"): 0.64022,
    ("relative", "stem"): 0.64032,
}
GRID = (*PAPER_TABLE_8, ("sincos2d", "stem"))


def cells(setup: Setup) -> list[Cell]:
    return [Cell(name=kind if where == "stem" and kind in ("none", "relative", "sincos2d") else f"{kind}-{where}",
                 labels={"posemb": kind, "placement": where},
                 model_options={"posemb": kind, "posemb_where": where},
                 reference=PAPER_TABLE_8.get((kind, where)))
            for kind, where in GRID]


def report(setup: Setup, rows: list[dict], out: Path) -> dict:
    bar_plot(rows, ["fewshot", "test_acc"], out / "posemb.png",
             f"Position embeddings: {setup.settings.shots}-shot and test accuracy", num_test=len(setup.data.test))
    return {"plots": ["posemb.png"], "sections": [{"title": "Reading it", "lines": [
        "The paper's column is ViT-B/16 pre-trained on ImageNet and scored 5-shot on ImageNet: a reference "
        "for the ordering, not a number to match. Its finding is that having a position embedding matters "
        "(none is ~3 points lower) and that the kind and placement barely do."]}]}


EXPERIMENT = Experiment(
    name="posemb", title="Position embeddings (paper Table 8)",
    description="Each kind of position embedding at each placement the paper tried (added once after the "
                "stem, before every layer, or before every layer with one shared embedding), plus fixed 2-D "
                "sine-cosine; everything else is the same model and recipe.",
    cells=cells, fewshot=True, report=report)
