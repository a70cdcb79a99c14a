"""Defaults picked from the data, so a new dataset trains well with nothing but `--data`.

Every choice is returned as a note and printed, and the resolved values are written to the
run's config.yaml.
"""

from __future__ import annotations

import dataclasses
import math

from vitkit.data.augment import default_augment
from vitkit.data.dataset import DataSplits
from vitkit.errors import ConfigError
from vitkit.models.config import ModelConfig, as_pair
from vitkit.models.presets import preset_config
from vitkit.train.config import TrainConfig

# Compact transformer for small datasets (a few thousand images), where even ViT-Ti/16's
# 5.7 M parameters overfit and cost minutes per epoch on a laptop CPU.
SMALL_DATA_MODEL = dict(width=192, depth=4, num_heads=3, mlp_dim=384)


def pick_patch_size(side: int) -> int:
    """A patch size giving a grid of about 4 to 8 tokens a side for small images and the
    paper's /16 from 128 pixels on."""
    for limit, patch in ((16, 2), (32, 4), (64, 8)):
        if side <= limit:
            return patch
    return 16


def model_input_size(data_size: tuple[int, int]) -> tuple[int, int]:
    """Large images are trained at 224 (the paper's pre-training resolution); smaller ones as
    they are, rounded down to a multiple of the patch size."""
    side = max(data_size)
    if side > 224:
        return (224, 224)
    patch = pick_patch_size(side)
    return tuple(max(patch, s // patch * patch) for s in data_size)


def resolve_model(cfg: TrainConfig, data: DataSplits, notes: list[str]) -> ModelConfig:
    options = dict(cfg.model_options)
    for key, have in (("num_classes", data.num_classes), ("in_chans", data.channels)):
        if key in options and int(options[key]) != have:
            raise ConfigError(f"--{key.replace('_', '-')} {options[key]} does not match the data, which has "
                              f"{have}; leave it out and vitkit takes it from the data")
    image_size = options.pop("image_size", None) or cfg.image_size or model_input_size(data.image_size)
    side = max(as_pair(image_size))
    base = dict(image_size=image_size, in_chans=data.channels, num_classes=data.num_classes,
                class_names=tuple(data.class_names))
    n = len(data.train)
    if cfg.model == "custom" or (cfg.model == "auto" and n < 20_000):
        patch = options.get("patch_size", pick_patch_size(side))
        if cfg.model == "auto":
            notes.append(f"model: {n} training images -> a compact ViT (width 192, depth 4, "
                         f"3 heads), patch {patch} on {tuple(as_pair(image_size))} inputs")
        return ModelConfig.from_dict({**SMALL_DATA_MODEL, "patch_size": patch, **base, **options})
    name = cfg.model
    if name == "auto":
        name = "vit_ti16" if n < 200_000 else "vit_s16"
        options.setdefault("patch_size", pick_patch_size(side))
        notes.append(f"model: {n} training images -> {name} with patch {options['patch_size']}")
    return preset_config(name, **{**base, **options})


def resolve(cfg: TrainConfig, data: DataSplits) -> tuple[TrainConfig, ModelConfig, list[str]]:
    """Fill every `None` of `cfg` from the data; returns the resolved config, the model config
    and the notes that explain the choices."""
    notes: list[str] = []
    model_cfg = resolve_model(cfg, data, notes)
    n = len(data.train)
    finetune = cfg.recipe == "finetune"
    changes: dict = {}

    if cfg.batch_size is None:
        changes["batch_size"] = 128 if n < 20_000 else 256
    batch = changes.get("batch_size", cfg.batch_size)
    if cfg.epochs is None:
        # About 30k sample presentations for tiny sets, 100 epochs at most for mid-size ones.
        epochs = 10 if finetune else int(min(300, max(20, math.ceil(60_000 / max(n, 1)))))
        changes["epochs"] = epochs
        notes.append(f"epochs: {epochs} for {n} training images")
    if cfg.optimizer is None:
        changes["optimizer"] = "sgd" if finetune else "adamw"
    optimizer = changes.get("optimizer", cfg.optimizer)
    if cfg.lr is None:
        # DeiT's 5e-4 per 512 images; small sets train stably at a higher rate.
        lr = 0.01 if optimizer == "sgd" else (2e-3 if n < 20_000 else 5e-4 * batch / 512)
        changes["lr"] = lr
    if cfg.weight_decay is None:
        changes["weight_decay"] = 0.0 if optimizer == "sgd" else 0.05
    if cfg.warmup_epochs is None:
        changes["warmup_epochs"] = 0.5 if finetune else min(5.0, max(1.0, changes.get("epochs", cfg.epochs or 1) * 0.05))
    if cfg.label_smoothing is None:
        changes["label_smoothing"] = 0.0 if finetune else 0.1
    if cfg.grad_clip is None:
        changes["grad_clip"] = 1.0
    picked = dataclasses.asdict(default_augment(model_cfg.image_size, model_cfg.in_chans, n))
    picked.pop("label_smoothing")
    unknown = sorted(set(cfg.augment) - set(picked))
    if unknown:
        raise ConfigError(f"unknown augmentation option(s): {', '.join(unknown)}")
    changes["augment"] = {**picked, **cfg.augment}
    active = [f"{k}={v}" for k, v in changes["augment"].items() if v not in (0, 0.0, False, "none")]
    notes.append("augmentation: " + (", ".join(active) or "none"))
    if not cfg.init:
        # The whole architecture goes into config.yaml, so `--config` rebuilds exactly this model.
        options = model_cfg.to_dict()
        options.pop("class_names")
        changes.update(model="custom", model_options=options)
    return cfg.replace(**changes), model_cfg, notes
