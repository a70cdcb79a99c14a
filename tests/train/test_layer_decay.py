"""Layer-wise learning-rate decay (--layer-decay, the BEiT/MAE fine-tuning rule): block i of L
learns at lr * decay^(L - i), the stem, tokens and position embeddings at lr * decay^(L + 1),
the final norm and head at lr; weight-decay exemptions and Muon's matrices are kept apart
within each layer; without it the optimiser is what it was."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.train import TrainConfig, Trainer
from vitkit.train.optim import build_optimizer, layer_id, set_lr

DEPTH = 3


def model():
    torch.manual_seed(0)
    return vitkit.create_model("custom", image_size=8, patch_size=4, in_chans=1, num_classes=3, width=16,
                               depth=DEPTH, num_heads=2, mlp_dim=16, distill_token=True)


def expected_rate(name: str, lr: float, decay: float) -> float:
    if name.startswith("blocks."):
        return lr * decay ** (DEPTH - int(name.split(".")[1]))
    if name.startswith(("patch_embed", "cls_token", "dist_token", "pos_embed")):
        return lr * decay ** (DEPTH + 1)
    assert name.startswith(("norm.", "head.", "head_dist.")), name
    return lr


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon"])
def test_each_parameter_learns_at_its_layers_rate(optimizer):
    net = model()
    opt = build_optimizer(net, optimizer, lr=0.1, weight_decay=0.05, layer_decay=0.5)
    set_lr(opt, 0.1)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    exempt = net.no_weight_decay()
    for name, p in net.named_parameters():
        assert rate[id(p)] == pytest.approx(expected_rate(name, 0.1, 0.5)), name
        assert decay[id(p)] == (0.0 if name in exempt else 0.05), name
    if optimizer == "muon":
        muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
        assert {n for n, p in net.named_parameters() if id(p) in muon} == {
            f"blocks.{i}.{m}.weight" for i in range(DEPTH) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}


def test_layer_ids_follow_beit():
    names = {"patch_embed.proj.weight": 0, "cls_token": 0, "pos_embed.weight": 0, "blocks.0.norm1.weight": 1,
             "blocks.11.mlp.fc2.bias": 12, "layer_pos_embeds.3.weight": 4, "norm.weight": 13, "head.weight": 13,
             "map_head.probe": 13}
    assert {name: layer_id(name, 12) for name in names} == names


def test_without_it_the_groups_are_the_two_of_before():
    net = model()
    opt = build_optimizer(net, "adamw", lr=0.1, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all("lr_scale" not in g for g in opt.param_groups)


def test_a_run_with_layer_decay_applies_it_at_every_update(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=1, batch_size=512, layer_decay=0.7, optimizer="adamw",
                      model_options=dict(width=16, depth=DEPTH, num_heads=2, mlp_dim=16, patch_size=4))
    trainer = Trainer(cfg, quiet=True)
    trainer._update(0)  # sets the rates of update 0 (warm-up) before stepping
    peak = trainer.optimizer.param_groups[0]["lr"]  # the head's group comes first, at the full rate
    for group in trainer.optimizer.param_groups:
        assert group["lr"] == pytest.approx(peak * group["lr_scale"])
    scales = sorted({round(g["lr_scale"], 6) for g in trainer.optimizer.param_groups})
    assert scales == [round(0.7 ** k, 6) for k in range(DEPTH + 1, -1, -1)]
