"""ViT vs ResNet vs hybrid at matched training compute (paper section 4.4, Fig. 5).

Training compute = 3 x forward FLOPs per image x images seen (the backward pass costs about
twice the forward). The ViT trained for --epochs sets the budget; every other model gets the
whole number of epochs that brings its total closest to it.
"""

from __future__ import annotations

import math
from pathlib import Path

from vitkit.experiments.runner import Cell, Experiment, Setup, bar_plot
from vitkit.models import ModelConfig, forward_flops

UNITS_PER_STAGE = 2


def training_flops(forward: float, images_per_epoch: int, epochs: int) -> float:
    return 3.0 * forward * images_per_epoch * epochs


def matched_epochs(budget: float, forward: float, images_per_epoch: int) -> int:
    """Whole epochs (at least 1) whose training FLOPs come closest to `budget`."""
    per_epoch = training_flops(forward, images_per_epoch, 1)
    below = max(1, math.floor(budget / per_epoch))
    return min((below, below + 1), key=lambda e: abs(e * per_epoch - budget))


def architectures(model_options: dict) -> dict[str, dict]:
    """Model options of the three: the base ViT; a hybrid whose ResNet stem has the ViT's
    stride (the paper's R50+ViT-B/16 cuts the ResNet to stride 16 for patch 16), patch 1 on
    its map; a plain ResNet (one stage deeper where the image allows, global average pooled)."""
    patch = model_options["patch_size"]
    stages = max(1, round(math.log2(patch / 4)) + 1)
    side = min(model_options["image_size"])
    resnet_stages = stages + 1 if side % (4 * 2**stages) == 0 else stages
    resnet_width = 32 if model_options["width"] < 256 else 64  # GroupNorm needs multiples of 32
    hybrid = {"stem": "resnet", "patch_size": 1, "resnet_layers": [UNITS_PER_STAGE] * stages,
              "resnet_width": resnet_width}
    resnet = {"stem": "resnet", "patch_size": 1, "resnet_layers": [UNITS_PER_STAGE] * resnet_stages,
              "resnet_width": resnet_width, "depth": 0, "pool": "gap", "posemb": "none"}
    return {"vit": {}, "resnet": resnet, "hybrid": hybrid}


def flops_text(flops: float) -> str:
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {prefix}FLOPs"
    return f"{flops:.3g} FLOPs"


def model_flops(model_options: dict, changes: dict) -> int:
    return forward_flops(ModelConfig.from_dict({**model_options, **changes}))


def cells(setup: Setup) -> list[Cell]:
    base, n = setup.model, setup.num_train
    archs = architectures(base)
    budget = training_flops(model_flops(base, {}), n, setup.settings.epochs)
    result = []
    for name, options in archs.items():
        forward = model_flops(base, options)
        epochs = setup.settings.epochs if name == "vit" else matched_epochs(budget, forward, n)
        total = training_flops(forward, n, epochs)
        result.append(Cell(name=name, labels={"model": name, "forward per image": flops_text(forward),
                                              "training": flops_text(total),
                                              "vs budget": f"{total / budget:.2f}"},
                           model_options=options, changes={"epochs": epochs}))
    return result


def report(setup: Setup, rows: list[dict], out: Path) -> dict:
    bar_plot(rows, ["test_acc", "val_acc"], out / "arch.png", "ViT vs ResNet vs hybrid at matched training compute",
             num_test=len(setup.data.test))
    n = setup.num_train
    budget = training_flops(model_flops(setup.model, {}), n, setup.settings.epochs)
    compute = {r["cell"]: {"forward_flops": model_flops(setup.model, r["model_options"]), "epochs": r["epochs"],
                           "training_flops": training_flops(model_flops(setup.model, r["model_options"]), n,
                                                            r["epochs"])} for r in rows}
    return {"budget_flops": budget, "compute": compute, "plots": ["arch.png"], "sections": [{
        "title": "Matching the compute", "lines": [
            f"Training FLOPs = 3 x forward FLOPs per image x images seen ({n} per epoch). The budget is the ViT's "
            f"{setup.settings.epochs} epochs: {flops_text(budget)}. Each other model trains the whole "
            "number of epochs whose total is closest to the budget ('vs budget' is its ratio). Forward FLOPs "
            "are analytic (`vitkit.models.forward_flops`: matrix products, convolutions and attention).",
            "",
            "Models: the ResNet is the paper's BiT flavour (weight-standardised convolutions, GroupNorm), "
            f"{UNITS_PER_STAGE} bottleneck units per stage, global average pooling; the hybrid feeds its "
            "ResNet's feature map (same stride as the ViT's patches) to the ViT's transformer with patch 1."]}]}


EXPERIMENT = Experiment(
    name="arch", title="ViT vs ResNet vs hybrid at matched training compute",
    description="A ViT, a ResNet and a hybrid (ResNet stem + transformer) trained for about the same number of "
                "FLOPs on the same data and recipe.",
    cells=cells, report=report)
