"""Self-supervised pre-training without labels: masked patch prediction ("mpp", the paper's)
or a masked autoencoder ("mae").

The run resolves its model, optimiser and schedule exactly as `vitkit train` would for the
same data (train/auto.py), trains on the training split's images only, and writes a run folder
with config.yaml, metrics.jsonl, summary.json and `checkpoints/pretrained.safetensors`: a
normal vitkit model file with no classifier head, to fine-tune with `vitkit train --init`.
The objective's own parameters (mask embedding, colour head or decoder) go beside it in
`checkpoints/objective.safetensors`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from tqdm import tqdm

from vitkit.data import load_data
from vitkit.data.augment import AugmentConfig, Augmenter
from vitkit.errors import ConfigError
from vitkit.device import autocast, pick_device, pick_precision, seed_everything
from vitkit.evaluate.preprocess import normalize, resize_images
from vitkit.formats.native import save as save_model
from vitkit.io import write_json, write_text
from vitkit.models.vit import VisionTransformer
from vitkit.objectives.mae import MASK_RATIO, MaskedAutoencoder
from vitkit.objectives.mpp import MaskedPatchPrediction
from vitkit.train.auto import resolve
from vitkit.train.config import TrainConfig
from vitkit.train.optim import lr_factor, param_groups, set_lr
from vitkit.train.run import RunFolder

OBJECTIVES = ("mpp", "mae")


@dataclass
class PretrainConfig:
    objective: str = "mpp"
    data: str = "digits"
    out: str | None = None
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    grad_clip: float | None = None
    # MAE only: the share of hidden patches and the decoder's size.
    mask_ratio: float = MASK_RATIO
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 2
    norm_pix: bool = True
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int | None = None
    skip_bad_images: bool = False
    max_image_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")

    def train_config(self) -> TrainConfig:
        """The TrainConfig whose resolution gives this run's model, optimiser and schedule."""
        shared = {f.name for f in dataclasses.fields(TrainConfig)} & {f.name for f in dataclasses.fields(self)}
        return TrainConfig(**{name: getattr(self, name) for name in shared}, optimizer="adamw")


def _objective(cfg: PretrainConfig, model: VisionTransformer) -> torch.nn.Module:
    if cfg.objective == "mpp":
        return MaskedPatchPrediction(model)
    return MaskedAutoencoder(model, cfg.decoder_width, cfg.decoder_depth, cfg.decoder_heads,
                             cfg.mask_ratio, cfg.norm_pix)


def _optimizer(model, objective, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, train_cfg.weight_decay)
    extra = [p for p in objective.parameters() if p.requires_grad]
    groups += [{"params": [p for p in extra if p.dim() > 1], "weight_decay": train_cfg.weight_decay},
               {"params": [p for p in extra if p.dim() <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_cfg.lr, betas=train_cfg.betas)


def pretrain(cfg: PretrainConfig, *, quiet: bool = False) -> dict:
    """Run self-supervised pre-training; returns the summary (also written to the run folder)."""
    def say(message: str) -> None:
        if not quiet:
            tqdm.write(message, file=sys.stderr)

    run_dir = RunFolder.open(cfg.out, resume=False)
    device = pick_device(cfg.device)
    data = load_data(cfg.data, split_seed=cfg.split_seed, val_fraction=cfg.val_fraction,
                     test_fraction=cfg.test_fraction, skip_bad_images=cfg.skip_bad_images,
                     max_image_pixels=cfg.max_image_pixels)
    if len(data.train) == 0:
        raise ConfigError("the training split is empty; give more images")
    train_cfg, model_cfg, notes = resolve(cfg.train_config(), data)
    for note in notes:
        say(f"auto: {note}")
    resolved = dataclasses.replace(cfg, epochs=train_cfg.epochs, batch_size=train_cfg.batch_size,
                                   lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                   warmup_epochs=train_cfg.warmup_epochs, grad_clip=train_cfg.grad_clip,
                                   model=train_cfg.model, model_options=train_cfg.model_options,
                                   out=str(run_dir.path))
    write_text(run_dir.path / "config.yaml", yaml.safe_dump(dataclasses.asdict(resolved), sort_keys=False))
    seed_everything(cfg.seed)
    precision = pick_precision(cfg.precision, device)
    model = VisionTransformer(model_cfg).to(device)
    objective = _objective(cfg, model).to(device)
    optimizer = _optimizer(model, objective, train_cfg)
    # Labels are never used: the augmenter gets dummy ones, and mixing is off (it mixes labels).
    augment_options = {**train_cfg.augment, "mixup": 0.0, "cutmix": 0.0}
    augment = Augmenter(AugmentConfig(**augment_options), 1, model_cfg.image_size, model_cfg.in_chans)

    images = data.train.images.to(device)
    if tuple(images.shape[1:]) != (model_cfg.in_chans, *model_cfg.image_size):
        images = (resize_images(images, model_cfg) * 255).round().to(torch.uint8)
    val_images = resize_images(data.val.images.to(device), model_cfg) if len(data.val) else None
    n = images.shape[0]
    batch = train_cfg.batch_size
    steps_per_epoch = math.ceil(n / batch)
    total = steps_per_epoch * train_cfg.epochs
    warmup = round(train_cfg.warmup_epochs * steps_per_epoch)
    history, update, seconds = [], 0, 0.0
    bar = tqdm(total=total, unit="step", disable=True if quiet else None, file=sys.stderr,
               desc=f"pretrain {cfg.objective}")
    with bar:
        for epoch in range(train_cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            objective.train()
            order = torch.randperm(n).to(device)
            loss_sum = torch.zeros((), device=device)
            for step in range(steps_per_epoch):
                index = order[step * batch:(step + 1) * batch]
                pixels, _ = augment(images[index].float().div_(255.0), torch.zeros_like(index))
                with autocast(device, precision):
                    result = objective(model, pixels, normalize(pixels, model_cfg))
                result["loss"].backward()
                set_lr(optimizer, train_cfg.lr * lr_factor(update, total, warmup, train_cfg.schedule,
                                                           train_cfg.min_lr_ratio))
                if train_cfg.grad_clip:
                    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                    torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                update += 1
                loss_sum += result["loss"].detach() * index.numel()
                bar.update(1)
            seconds += time.perf_counter() - t0
            stats = {"epoch": epoch + 1, "train_loss": float(loss_sum) / n, "seconds": round(seconds, 3)}
            if val_images is not None:
                stats.update(_validate(model, objective, val_images, model_cfg, precision, cfg.seed))
            history.append(stats)
            run_dir.write_metrics(history)
            if bar.disable and not quiet:
                say(f"epoch {epoch + 1}/{train_cfg.epochs}  loss {stats['train_loss']:.4f}"
                    + (f"  val_loss {stats['val_loss']:.4f}" if "val_loss" in stats else ""))
    model.reset_head(0)
    checkpoint = run_dir.path / "checkpoints" / "pretrained.safetensors"
    save_model(model, checkpoint, metadata={"objective": cfg.objective, "epochs": train_cfg.epochs})
    save_file({k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()},
              str(run_dir.path / "checkpoints" / "objective.safetensors"))
    summary = {"objective": cfg.objective, "checkpoint": str(checkpoint), "epochs": train_cfg.epochs,
               "train_seconds": round(seconds, 3), "params": sum(p.numel() for p in model.parameters()),
               "data": data.source, "seed": cfg.seed, "device": str(device), "precision": precision,
               **{k: v for k, v in history[-1].items() if k not in ("epoch", "seconds")}}
    write_json(run_dir.path / "summary.json", summary)
    return summary


@torch.no_grad()
def _validate(model, objective, images, model_cfg, precision, seed, batch: int = 512) -> dict:
    """The objective on the validation images, with the same corruption draws every epoch."""
    model.eval()
    objective.eval()
    device = images.device
    loss_sum, correct, count = 0.0, 0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, images.shape[0], batch):
            pixels = images[start:start + batch]
            with autocast(device, precision):
                result = objective(model, pixels, normalize(pixels, model_cfg))
            loss_sum += float(result["loss"]) * result["count"]
            count += result["count"]
            correct += int(result.get("correct", 0))
    stats = {"val_loss": loss_sum / max(count, 1)}
    if isinstance(objective, MaskedPatchPrediction):
        stats["val_colour_acc"] = correct / max(count, 1)
    return stats
