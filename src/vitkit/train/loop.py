"""The training loop: in-memory data on the device, batched augmentation, per-step LR schedule,
per-epoch validation and checkpoints, exact resume.

No host-device synchronisation inside an epoch: losses and accuracies accumulate in device
tensors and are read once per epoch.
"""

from __future__ import annotations

import math
import random
import sys
import time
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitkit.data import load_data
from vitkit.data.augment import AugmentConfig, Augmenter
from vitkit.data.dataset import training_subset
from vitkit.errors import CheckpointError, ConfigError
from vitkit.evaluate.classification import autocast, classification_metrics, predict_logits
from vitkit.evaluate.preprocess import normalize, resize_images
from vitkit.formats import load as load_checkpoint
from vitkit.formats.native import save as save_model
from vitkit.models.config import ModelConfig
from vitkit.models.resize import resize_image_size
from vitkit.models.vit import VisionTransformer
from vitkit.objectives.training import build_objective, prepare_config
from vitkit.train.auto import resolve
from vitkit.train.config import TrainConfig
from vitkit.train.distributed import Distributed, end_process_group
from vitkit.train.optim import EMA, build_optimizer, lr_factor, set_lr
from vitkit.train.run import RunFolder
from vitkit.train.state import load_training_state, restore_rng, save_training_state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the n training images for one epoch, a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def pick_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("fp16 autocast needs a GPU; use --precision bf16 or fp32 on the CPU")
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def adapt_input_channels(state: dict, key: str, chans: int) -> None:
    """Fit a patch-embedding kernel to another channel count: RGB -> grey sums the colour
    filters (a grey image is R = G = B); grey -> RGB spreads the filter over the channels."""
    w = state[key]
    if w.shape[1] == chans:
        return
    if chans == 1:
        state[key] = w.sum(dim=1, keepdim=True)
    elif w.shape[1] == 1:
        state[key] = w.repeat(1, chans, 1, 1) / chans
    else:
        raise ConfigError(f"cannot adapt a {w.shape[1]}-channel checkpoint to {chans}-channel data")


def _fit_channels(values: tuple[float, ...], chans: int) -> tuple[float, ...]:
    return values if len(values) in (1, chans) else (sum(values) / len(values),)


def model_from_init(path: str, model_cfg: ModelConfig) -> VisionTransformer:
    """A checkpoint fitted to this data: input channels, resolution, and a new zero head."""
    source = load_checkpoint(path)
    cfg = source.config
    state = source.state_dict()
    stem_key = "patch_embed.backbone.conv_root.weight" if cfg.stem == "resnet" else "patch_embed.proj.weight"
    adapt_input_channels(state, stem_key, model_cfg.in_chans)
    adapted = VisionTransformer(cfg.replace(in_chans=model_cfg.in_chans))
    adapted.load_state_dict(state)
    adapted = resize_image_size(adapted, model_cfg.image_size)
    adapted.reset_head(model_cfg.num_classes)
    adapted.config = adapted.config.replace(
        class_names=model_cfg.class_names,
        input_mean=_fit_channels(cfg.input_mean, model_cfg.in_chans),
        input_std=_fit_channels(cfg.input_std, model_cfg.in_chans))
    return adapted


class Trainer:
    """One training run. `Trainer(cfg).run()` returns the summary dict."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, quiet: bool = False):
        # Under torchrun every rank builds a Trainer; only rank 0 prints and writes files.
        self.dist = Distributed.from_environment()
        self.quiet = quiet or not self.dist.is_main
        self.dist.check(cfg)

        def open_run():
            run_dir = RunFolder.open(cfg.out, resume=resume)
            # The checkpoint is unsharded, so whether to shard is the resuming launch's choice.
            return run_dir, (run_dir.read_config().replace(fsdp=cfg.fsdp) if resume else cfg)

        self.run_dir, cfg = self.dist.on_rank0(open_run)
        self.device = self.dist.device(cfg.device) if self.dist.active else pick_device(cfg.device)
        self.data = load_data(cfg.data, split_seed=cfg.split_seed, val_fraction=cfg.val_fraction,
                              test_fraction=cfg.test_fraction, skip_bad_images=cfg.skip_bad_images)
        self.data.train = training_subset(self.data.train, cfg.train_fraction, cfg.split_seed)
        for note in self.data.notes if self.dist.is_main else ():
            # Warnings print even with --quiet: they say something was left out.
            tqdm.write(f"warning: {note}", file=sys.stderr)
        if len(self.data.train) == 0 or len(self.data.val) == 0:
            raise ConfigError("the training or validation split is empty; give more images or "
                              "change --val-fraction")
        cfg = prepare_config(cfg, self.say)
        self.cfg, model_cfg, notes = resolve(cfg, self.data)
        for note in notes:
            self.say(f"auto: {note}")
        self.dist.check(self.cfg)
        seed_everything(self.cfg.seed)
        self.precision = pick_precision(self.cfg.precision, self.device)
        if self.cfg.init:
            self.model = model_from_init(self.cfg.init, model_cfg)
            overrides = {k: v for k, v in self.cfg.model_options.items()
                         if k in ("dropout", "attn_dropout", "drop_path")}
            if overrides:
                state = self.model.state_dict()
                self.model = VisionTransformer(self.model.config.replace(**overrides))
                self.model.load_state_dict(state)
        else:
            self.model = VisionTransformer(model_cfg)
        self.dist.seed_rank(self.cfg.seed, update=0)
        self.model.to(self.device)
        if self.cfg.freeze == "backbone":
            for name, p in self.model.named_parameters():
                p.requires_grad = name.startswith(("head.", "head_dist."))
        trained = self.dist.wrap(self.model, self.cfg.fsdp)
        self.optimizer = build_optimizer(self.model, self.cfg.optimizer, self.cfg.lr,
                                         self.cfg.weight_decay, self.cfg.momentum, self.cfg.betas)
        self.ema = EMA(self.model, self.cfg.ema) if self.cfg.ema > 0 else None
        aug_cfg = AugmentConfig(**self.cfg.augment, label_smoothing=self.cfg.label_smoothing)
        self.augment = Augmenter(aug_cfg, self.model.config.num_classes,
                                 self.model.config.image_size, self.model.config.in_chans)
        self.forward = torch.compile(trained) if self.cfg.compile else trained
        self.objective = build_objective(self.cfg, self.model, self.device, self.precision)

        n = len(self.data.train)
        self.steps_per_epoch = math.ceil(n / self.cfg.batch_size)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / self.cfg.accum_steps)
        self.total_updates = self.updates_per_epoch * self.cfg.epochs
        self.warmup_updates = round(self.cfg.warmup_epochs * self.updates_per_epoch)
        self.progress = {"epoch": 0, "update": 0, "best_val_acc": -1.0, "best_epoch": -1,
                         "bad_epochs": 0, "train_seconds": 0.0, "history": []}
        if resume:
            self._restore()
        elif self.dist.is_main:
            self.run_dir.write_config(self.cfg)

    # ------------------------------------------------------------------ helpers
    def say(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def _restore(self) -> None:
        path = self.run_dir.last_checkpoint
        state = {}

        def read_progress():
            # Only rank 0 reads the file; the other ranks get its progress here and the
            # weights and optimiser state through load_state.
            if not path.exists():
                raise CheckpointError(f"{self.run_dir.path} has no checkpoint to resume from "
                                      f"({path.name} is missing); start a new run instead")
            state.update(load_training_state(path))
            return state["progress"]

        self.progress = self.dist.on_rank0(read_progress)
        self.dist.load_state(self.model, self.optimizer, state.get("model"), state.get("optimizer"),
                             source=str(path))
        if self.dist.is_main:
            if self.ema is not None and state["ema"] is not None:
                self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
            restore_rng(*state["rng"])
        if self.ema is not None:
            self.dist.broadcast_(self.ema.shadow.values())
        self.dist.seed_rank(self.cfg.seed, update=self.progress["update"])
        self.say(f"resuming {self.run_dir.path} after epoch {self.progress['epoch']}")

    def _input(self, images_uint8: torch.Tensor, labels: torch.Tensor, normalized: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        x = images_uint8.float().div_(255.0)
        x, targets = self.augment(x, labels)
        return (normalize(x, self.model.config) if normalized else x), targets

    def _eval_model(self) -> VisionTransformer:
        if self.ema is None:
            return self.model
        shadow = VisionTransformer(self.model.config).to(self.device)
        shadow.load_state_dict(self.ema.shadow)
        return shadow

    # ------------------------------------------------------------------ the loop
    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) on the device, one training step each. The order depends only
        on (seed, epoch), never on the global RNG, so a resumed run (and every rank of a
        distributed one) can rebuild any epoch's batches."""
        order = epoch_order(self.cfg.seed, epoch, self.train_labels.shape[0]).to(self.device)
        batch = self.cfg.batch_size
        for step in range(self.steps_per_epoch):
            index = self.dist.shard(order[step * batch:(step + 1) * batch])
            yield self.train_images[index], self.train_labels[index]

    def train_epoch(self, epoch: int, bar) -> dict:
        self.model.train()
        n = self.train_labels.shape[0]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        accum, batch = self.cfg.accum_steps, self.cfg.batch_size
        for step, (images, labels) in enumerate(self.epoch_batches(epoch)):
            final = (step + 1) % accum == 0 or step + 1 == self.steps_per_epoch
            with self.dist.gradient_sync(final):
                if self.objective is None:
                    x, targets = self._input(images, labels)
                    with autocast(self.device, self.precision):
                        logits = self.forward(x)
                    # A rank's part of a short last batch can be empty: a zero loss that still
                    # reaches every parameter, as the gradient reduction needs.
                    loss = soft_cross_entropy(logits, targets) if labels.numel() else logits.sum()
                else:
                    pixels, targets = self._input(images, labels, normalized=False)
                    logits, loss = self.objective(self.model, pixels, targets)
                # Weight each micro-batch by its share of the accumulated global batch, so
                # accumulation gives the gradient of the full batch even when the last one is
                # short; times the world size, which the ranks' gradient averaging divides out.
                group_start = step // accum * accum * batch
                group = min(n, group_start + accum * batch) - group_start
                share = labels.shape[0] * self.dist.world_size / group
                (loss * share).backward()
            loss_sum += loss.detach() * labels.shape[0]
            correct += (logits.detach().argmax(1) == targets.argmax(1)).sum()
            if final:
                self._update(epoch)
            bar.update(1)
        self.dist.sum_(loss_sum, correct)
        return {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n}

    def _update(self, epoch: int) -> None:
        update = self.progress["update"]
        if self.cfg.schedule_unit == "epoch":
            update = epoch * self.updates_per_epoch
        set_lr(self.optimizer, self.cfg.lr * lr_factor(update, self.total_updates, self.warmup_updates,
                                                       self.cfg.schedule, self.cfg.min_lr_ratio))
        if self.cfg.grad_clip:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.progress["update"] += 1

    def validate(self) -> dict:
        model = self._eval_model()
        if self.dist.active:
            return self.dist.validate(model, self.data.val.images, self.data.val.labels,
                                      self.cfg.eval_batch_size, self.precision)
        logits = predict_logits(model, self.data.val.images, self.cfg.eval_batch_size, self.precision)
        labels = self.data.val.labels.to(logits.device)
        return {"val_loss": float(F.cross_entropy(logits, labels)),
                "val_acc": classification_metrics(logits, labels)["top1"]}

    def run(self) -> dict:
        images = self.data.train.images.to(self.device)
        cfg = self.model.config
        if tuple(images.shape[1:]) != (cfg.in_chans, *cfg.image_size):
            # Resized once, kept as uint8: each step then only slices and augments.
            images = torch.cat([resize_images(images[i:i + 1024], cfg).mul_(255).round_().to(torch.uint8)
                                for i in range(0, images.shape[0], 1024)])
        self.train_images = images
        self.train_labels = self.data.train.labels.to(self.device)
        start = self.progress["epoch"]
        total = self.cfg.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=start * self.steps_per_epoch, unit="step", dynamic_ncols=True,
                   disable=True if self.quiet else None, file=sys.stderr, desc="train")
        with bar:
            for epoch in range(start, self.cfg.epochs):
                if self.progress["bad_epochs"] >= self.cfg.early_stop > 0:
                    break
                t0 = time.perf_counter()
                stats = self.train_epoch(epoch, bar)
                stats.update(self.validate())
                self.progress["train_seconds"] += time.perf_counter() - t0
                stats.update(epoch=epoch + 1, lr=self.optimizer.param_groups[0]["lr"],
                             seconds=round(self.progress["train_seconds"], 3))
                self._end_epoch(epoch, stats)
                bar.set_postfix(loss=f"{stats['train_loss']:.3f}", val_acc=f"{stats['val_acc']:.4f}")
                if bar.disable and not self.quiet:
                    self.say(f"epoch {epoch + 1}/{self.cfg.epochs}  loss {stats['train_loss']:.4f}  "
                             f"val_acc {stats['val_acc']:.4f}  {stats['seconds']:.1f}s")
        return self.finish()

    def _end_epoch(self, epoch: int, stats: dict) -> None:
        p = self.progress
        p["epoch"] = epoch + 1
        p["history"].append(stats)
        improved = stats["val_acc"] > p["best_val_acc"]
        if improved:
            p["best_val_acc"], p["best_epoch"], p["bad_epochs"] = stats["val_acc"], epoch + 1, 0
        else:
            p["bad_epochs"] += 1
        model_state, optimizer_state = self.dist.full_state(self.model, self.optimizer)
        if not self.dist.is_main:
            return
        if improved:
            save_model(self._best_model(model_state), self.run_dir.best_checkpoint,
                       metadata={"epoch": epoch + 1, "val_acc": stats["val_acc"]})
        self.run_dir.write_metrics(p["history"])
        save_training_state(self.run_dir.last_checkpoint, self.model.config, model_state, optimizer_state,
                            self.ema.shadow if self.ema else None, p)

    def _best_model(self, model_state: dict) -> VisionTransformer:
        if not self.dist.fsdp:
            return self._eval_model()
        full = VisionTransformer(self.model.config)
        full.load_state_dict(model_state)
        return full

    def finish(self) -> dict:
        """Rank 0 tests the best checkpoint and writes the summary; every rank returns it."""
        return self.dist.on_rank0(self._test_and_summarize)

    def _test_and_summarize(self) -> dict:
        best = load_checkpoint(self.run_dir.best_checkpoint).to(self.device)
        logits = predict_logits(best, self.data.test.images, self.cfg.eval_batch_size, self.precision)
        test = classification_metrics(logits, self.data.test.labels)
        history = self.progress["history"]
        summary = {
            "test_acc": test["top1"],
            "test_top5": test["top5"],
            "test_n": test["n"],
            "val_acc": self.progress["best_val_acc"],
            "best_epoch": self.progress["best_epoch"],
            "epochs": self.progress["epoch"],
            "train_seconds": round(self.progress["train_seconds"], 3),
            "checkpoint": str(self.run_dir.best_checkpoint),
            "model": self.cfg.model if self.cfg.model != "custom" else self.model.config.name,
            "params": sum(p.numel() for p in self.model.parameters()),
            "data": self.data.source,
            "device": str(self.device),
            "precision": self.precision,
            "seed": self.cfg.seed,
            "final_train_loss": history[-1]["train_loss"] if history else None,
        }
        if self.dist.active:
            summary["processes"] = self.dist.world_size
        self.run_dir.write_summary(summary, test["confusion"], self.data.class_names, history)
        return summary


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> dict:
    """Run a training job and return its summary (also written to the run folder). Under
    torchrun every process calls this and gets the same summary."""
    try:
        return Trainer(cfg, resume=resume, quiet=quiet).run()
    finally:
        end_process_group()


__all__ = ["train", "Trainer", "TrainConfig"]
