"""The training loop: in-memory data on the device (or a shard folder streamed through a
DataLoader), batched augmentation, per-step LR schedule, per-epoch validation and checkpoints
(and every N updates with --checkpoint-every), exact resume, a clean stop on SIGTERM, and no
non-finite weights ever saved (docs/reliability.md).

No host-device synchronisation inside an epoch: losses, accuracies and the first non-finite
loss accumulate in device tensors and are read at epoch ends and checkpoints. (With
--skip-nonfinite every step's loss is read, to decide whether to skip it.)
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitkit.data import load_data
from vitkit.data.augment import AugmentConfig, Augmenter
from vitkit.data.dataset import training_subset
from vitkit.data.shards import ShardBatches, is_shard_folder, load_batches, open_shards
from vitkit.errors import CheckpointError, ConfigError, SaveError, StoppedBySignal, TrainingDiverged
from vitkit.device import autocast, pick_device, pick_precision, seed_everything
from vitkit.evaluate.classification import classification_metrics, predict_batches, predict_logits
from vitkit.evaluate.preprocess import normalize, resize_images
from vitkit.formats import load as load_checkpoint
from vitkit.formats.native import save as save_model
from vitkit.models.config import ModelConfig
from vitkit.models.resize import resize_image_size
from vitkit.models.vit import VisionTransformer
from vitkit.objectives.training import build_objective, prepare_config
from vitkit.train.auto import resolve
from vitkit.train.config import TrainConfig
from vitkit.train.distributed import Distributed, end_process_group, owns_process_group
from vitkit.train.optim import EMA, build_optimizer, lr_factor, set_lr
from vitkit.train.run import RunFolder
from vitkit.train.state import check_fits_optimizer, load_training_state, restore_rng, save_training_state


# With --skip-nonfinite, this many skipped updates in a row stop the run: an odd bad batch is
# skipped, but a run whose every batch overflows is no longer training.
MAX_SKIPPED_IN_A_ROW = 10

# What to do about a failed save, by errno.
SAVE_ADVICE = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
               errno.EFBIG: "raise the file-size limit (ulimit -f)",
               errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable",
               errno.EROFS: "use a writable file system"}


def new_progress() -> dict:
    """A run's progress as checkpoints store it. `epoch`: epochs done; `step`: steps done in
    the next epoch (0 except in a mid-epoch checkpoint, which also has `epoch_sums`, that
    epoch's running loss/accuracy sums); `update`: optimiser updates done."""
    return {"epoch": 0, "step": 0, "update": 0, "best_val_acc": -1.0, "best_epoch": -1,
            "bad_epochs": 0, "train_seconds": 0.0, "skipped_updates": 0, "skipped_in_a_row": 0,
            "epoch_sums": None, "history": []}


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the n training images for one epoch, a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


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
            if not resume:
                return run_dir, cfg
            # The checkpoint is unsharded and on the CPU, so whether to shard and (when given)
            # the device are the resuming launch's choice.
            saved = run_dir.read_config()
            return run_dir, saved.replace(fsdp=cfg.fsdp,
                                          device=saved.device if cfg.device == "auto" else cfg.device)

        self.run_dir, cfg = self.dist.on_rank0(open_run)
        self.device = self.dist.device(cfg.device) if self.dist.active else pick_device(cfg.device)
        # A shard folder streams: its images stay on disk and are decoded batch by batch.
        self.streaming = is_shard_folder(cfg.data)
        if self.streaming:
            self.data = open_shards(cfg.data)
            cfg = self._fixed_split(cfg)
        else:
            self.data = load_data(cfg.data, split_seed=cfg.split_seed, val_fraction=cfg.val_fraction,
                                  test_fraction=cfg.test_fraction, skip_bad_images=cfg.skip_bad_images,
                                  max_image_pixels=cfg.max_image_pixels)
            self.data.train = training_subset(self.data.train, cfg.train_fraction, cfg.split_seed)
        for note in self.data.notes if self.dist.is_main else ():
            # Warnings print even with --quiet: they say something was left out.
            tqdm.write(f"warning: {note}", file=sys.stderr)
        if len(self.data.train) == 0 or len(self.data.val) == 0:
            raise ConfigError("the training or validation split is empty; give more images or "
                              "change --val-fraction" + (" when running vitkit shard" if self.streaming else ""))
        cfg = prepare_config(cfg, self.say)
        self.cfg, model_cfg, notes = resolve(cfg, self.data)
        for note in notes:
            self.say(f"auto: {note}")
        self.dist.check(self.cfg, streaming=self.streaming)
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

        # Images trained on per epoch by all ranks together. Streamed, each rank takes the same
        # number, its own part of the stream, and the few left over sit the epoch out.
        world = self.dist.world_size
        self.train_count = len(self.data.train) // world * world if self.streaming else len(self.data.train)
        self.steps_per_epoch = math.ceil(self.train_count / self.cfg.batch_size)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / self.cfg.accum_steps)
        self.total_updates = self.updates_per_epoch * self.cfg.epochs
        self.warmup_updates = round(self.cfg.warmup_epochs * self.updates_per_epoch)
        self.progress = new_progress()
        # Where the checkpoint on disk stands ("the end of epoch 2"), for messages; None: none yet.
        self.saved_at: str | None = None
        # The signal number once SIGTERM or SIGINT asked the run to stop.
        self.stop_signal: int | None = None
        # A per-step finiteness check costs nothing on the CPU and is needed to skip steps; on a
        # GPU it would wait for every step, so there the first bad step is recorded on the device
        # and read at the next checkpoint or epoch end. Under torchrun the ranks decide together
        # at every step (one summed loss), so that none goes on while another stops or skips.
        self.check_each_step = self.device.type == "cpu" or self.cfg.skip_nonfinite or self.dist.active
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.first_bad_loss = torch.zeros((), device=self.device)
        if resume:
            self._restore()
        else:
            self.dist.on_rank0(self._write_config)

    def _write_config(self) -> None:
        with self._saving(self.run_dir.path / "config.yaml"):
            self.run_dir.write_config(self.cfg)

    # ------------------------------------------------------------------ helpers
    def say(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def _fixed_split(self, cfg: TrainConfig) -> TrainConfig:
        """Shards hold the split `vitkit shard` made; the run records that one."""
        if cfg.train_fraction < 1.0:
            raise ConfigError("train_fraction needs data read into memory; to train on part of a shard folder, "
                              "shard that part with `vitkit shard`")
        made = self.data.index.get("split", {})
        if made.get("seed") is None:  # shards another tool wrote: their split is as it is
            return cfg
        fixed = cfg.replace(split_seed=made["seed"], val_fraction=made["val_fraction"],
                            test_fraction=made["test_fraction"])
        if fixed != cfg:
            self.say(f"note: the shards fix the split (made by vitkit shard with seed {made['seed']}, val fraction "
                     f"{made['val_fraction']}, test fraction {made['test_fraction']}); this run records it")
        return fixed

    def _restore(self) -> None:
        path = self.run_dir.last_checkpoint
        state = {}

        def read_progress() -> dict | None:
            # Only rank 0 reads the file; the other ranks get its progress here and the
            # weights and optimiser state through load_state.
            if not path.exists():
                if self.run_dir.summary_file.exists():
                    raise CheckpointError(f"{self.run_dir.path} has no checkpoint to resume from "
                                          f"({path.name} is missing); start a new run instead")
                # Killed before its first checkpoint: nothing to continue, but the saved config
                # reproduces the run exactly. Printed even with --quiet: the work starts over.
                tqdm.write(f"note: {self.run_dir.path} has no checkpoint yet (the run stopped before "
                           "its first save); starting it afresh from its config.yaml", file=sys.stderr)
                return None
            state.update(load_training_state(path))
            check_fits_optimizer(state, self.optimizer, path)
            return state["progress"]

        progress = self.dist.on_rank0(read_progress)
        if progress is None:
            return
        self.dist.load_state(self.model, self.optimizer, state.get("model"), state.get("optimizer"),
                             source=str(path))
        if self.dist.is_main:
            if self.ema is not None and state["ema"] is not None:
                self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
            restore_rng(*state["rng"])
        if self.ema is not None:
            self.dist.broadcast_(self.ema.shadow.values())
        self.progress = {**new_progress(), **progress}
        self.dist.seed_rank(self.cfg.seed, update=self.progress["update"])
        self.saved_at = self._position()
        if self._finished():
            self.say(f"resuming {self.run_dir.path}: training had finished at {self.saved_at}; "
                     "writing the summary")
        else:
            self.say(f"resuming {self.run_dir.path} at {self.saved_at}")

    def _finished(self) -> bool:
        p = self.progress
        return p["epoch"] >= self.cfg.epochs or p["bad_epochs"] >= self.cfg.early_stop > 0

    def _position(self) -> str:
        """Where the training stands, in words: "epoch 2 step 5/21" or "the end of epoch 1"."""
        p = self.progress
        if p["step"] == 0:
            return f"the end of epoch {p['epoch']}" if p["epoch"] else "the start"
        return f"epoch {p['epoch'] + 1} step {p['step']}/{self.steps_per_epoch}"

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
    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) on the device, one training step each, from `start_step` on
        (a run resumed mid-epoch skips the steps it has done). The order depends only on
        (seed, epoch), never on the global RNG, so a resumed run (and every rank of a
        distributed one) can rebuild any epoch's batches."""
        if self.streaming:
            yield from self._streamed_batches(epoch, start_step)
            return
        order = epoch_order(self.cfg.seed, epoch, self.train_labels.shape[0]).to(self.device)
        batch = self.cfg.batch_size
        for step in range(start_step, self.steps_per_epoch):
            index = self.dist.shard(order[step * batch:(step + 1) * batch])
            yield self.train_images[index], self.train_labels[index]

    def _streamed_batches(self, epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same contract from a shard folder: decoded by `workers` DataLoader processes at
        the model's input size; the shard order and shuffle buffer are seeded by (seed, epoch)."""
        cfg = self.model.config
        # --batch-size is the global batch, which check() made a multiple of the world size.
        batches = ShardBatches(self.data.train, batch_size=self.cfg.batch_size // self.dist.world_size,
                               image_size=cfg.image_size, channels=cfg.in_chans, shuffle=True,
                               seed=self.cfg.seed, epoch=epoch, buffer_size=self.cfg.shuffle_buffer,
                               rank=self.dist.rank, world_size=self.dist.world_size, start_batch=start_step)
        for images, labels in load_batches(batches, self.cfg.workers, pin_memory=self.device.type == "cuda"):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def split_logits(self, model: VisionTransformer, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of a whole split; streamed splits are decoded batch by batch."""
        if not self.streaming:
            images = self.data.split(split)
            return predict_logits(model, images.images, self.cfg.eval_batch_size, self.precision), images.labels
        cfg = model.config
        batches = ShardBatches(self.data.split(split), batch_size=self.cfg.eval_batch_size,
                               image_size=cfg.image_size, channels=cfg.in_chans)
        return predict_batches(model, load_batches(batches, self.cfg.workers, pin_memory=self.device.type == "cuda"),
                               self.precision)

    def train_epoch(self, epoch: int, bar) -> dict:
        """Train epoch `epoch` from the step the progress says (0, or where a mid-epoch
        checkpoint stopped), checkpointing and stopping only right after an optimiser update."""
        self.model.train()
        n = self.train_count
        p = self.progress
        sums = self._epoch_sums()
        accum, batch = self.cfg.accum_steps, self.cfg.batch_size
        group_usable = True
        for step, (images, labels) in enumerate(self.epoch_batches(epoch, p["step"]), start=p["step"]):
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
                if self._loss_is_usable(loss, epoch, step):
                    # Weight each micro-batch by its share of the accumulated global batch, so
                    # accumulation gives the gradient of the full batch even when the last one is
                    # short; times the world size, which the ranks' gradient averaging divides out.
                    group_start = step // accum * accum * batch
                    group = min(n, group_start + accum * batch) - group_start
                    share = labels.shape[0] * self.dist.world_size / group
                    (loss * share).backward()
                    sums["loss"] += loss.detach() * labels.shape[0]
                    sums["correct"] += (logits.detach().argmax(1) == targets.argmax(1)).sum()
                    sums["images"] += labels.shape[0]
                else:
                    group_usable = False
            if final:
                p["step"] = step + 1
                if self._update(epoch, group_usable):
                    p["skipped_in_a_row"] = 0
                else:
                    self._skipped(sums)
                group_usable = True
                if p["step"] < self.steps_per_epoch:
                    self._after_update(sums)
            bar.update(min(batch, n - step * batch))  # images of the global batch
        p["step"], p["epoch_sums"] = 0, None
        sums = self._all_ranks(sums)
        return {"train_loss": float(sums["loss"]) / max(sums["images"], 1),
                "train_acc": float(sums["correct"]) / max(sums["images"], 1),
                "skipped_updates": sums["skipped"]}

    def _epoch_sums(self) -> dict:
        """The running loss/accuracy sums of the epoch: zero, or as a mid-epoch checkpoint saved
        them (exact: a float32 sum round-trips through a Python float)."""
        saved = self.progress["epoch_sums"] or {"loss": 0.0, "correct": 0.0, "images": 0, "skipped": 0}
        if not self.dist.is_main:
            # Saved sums are over all ranks: rank 0 carries them on, the others start at zero.
            saved = {**saved, "loss": 0.0, "correct": 0.0, "images": 0}
        return {"loss": torch.tensor(saved["loss"], dtype=torch.float32, device=self.device),
                "correct": torch.tensor(saved["correct"], dtype=torch.float32, device=self.device),
                "images": saved["images"], "skipped": saved["skipped"]}

    def _all_ranks(self, sums: dict) -> dict:
        """The epoch's running sums over all ranks (in one process, the sums themselves). The
        skipped count needs no sum: the ranks decide together whether to skip."""
        if not self.dist.active:
            return sums
        totals = torch.stack([sums["loss"], sums["correct"],
                              torch.tensor(float(sums["images"]), device=self.device)])
        self.dist.sum_(totals)
        return {"loss": totals[0], "correct": totals[1], "images": int(totals[2]), "skipped": sums["skipped"]}

    def _update(self, epoch: int, usable: bool = True) -> bool:
        """One optimiser update from the accumulated gradients. Returns False when it was skipped
        (--skip-nonfinite and a non-finite loss or gradient norm): the gradients are dropped,
        the weights and EMA stay, the schedule moves on."""
        update = self.progress["update"]
        if self.cfg.schedule_unit == "epoch":
            update = epoch * self.updates_per_epoch
        set_lr(self.optimizer, self.cfg.lr * lr_factor(update, self.total_updates, self.warmup_updates,
                                                       self.cfg.schedule, self.cfg.min_lr_ratio))
        if usable and self.cfg.grad_clip:
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
            # Read only when skipping is on: reading the norm waits for the GPU.
            usable = not self.cfg.skip_nonfinite or bool(torch.isfinite(norm))
        if usable:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if usable and self.ema is not None:
            self.ema.update(self.model)
        self.progress["update"] += 1
        return usable

    def _after_update(self, sums: dict) -> None:
        """Mid-epoch, right after an optimiser update: the only place a checkpoint can resume
        from exactly (no half-accumulated gradients)."""
        stop = self._should_stop()
        if stop or self._should_checkpoint():
            self._save_last(sums)
        if stop:
            raise self._stopped()

    def _should_checkpoint(self) -> bool:
        every = self.cfg.checkpoint_every
        return every > 0 and self.progress["update"] % every == 0

    def _should_stop(self) -> bool:
        # A signal can reach the ranks at different updates (or only one of them): they agree
        # here, so that all stop after the same update.
        if self.dist.active:
            self.stop_signal = self.dist.max_over_ranks(self.stop_signal or 0) or None
        return self.stop_signal is not None

    def _stopped(self) -> StoppedBySignal:
        name = signal.Signals(self.stop_signal).name
        return StoppedBySignal(
            f"stopped by {name} at {self._position()}; checkpoint written to "
            f"{self.run_dir.last_checkpoint}; continue with `vitkit train --resume --out {self.run_dir.path}`",
            self.stop_signal)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C) ask the
        run to stop after the current optimiser update, with a checkpoint. The first signal
        puts the previous handlers back, so a second one acts as usual (ends the process, or
        KeyboardInterrupt)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)

        def ask_to_stop(signum, frame) -> None:
            self.stop_signal = signum
            restore()

        for s in previous:
            signal.signal(s, ask_to_stop)
        try:
            yield
        finally:
            restore()

    # ------------------------------------------------------------------ non-finite values
    def _loss_is_usable(self, loss: torch.Tensor, epoch: int, step: int) -> bool:
        """Whether the step's loss may be back-propagated. A non-finite loss stops the run,
        or is skipped with --skip-nonfinite; on a GPU without skipping it is only recorded here
        and raised at the next check (_raise_if_diverged), so no step waits for the device."""
        if not self.check_each_step:
            bad = ~torch.isfinite(loss.detach())
            first = bad & (self.first_bad_step < 0)
            self.first_bad_step = torch.where(first, epoch * self.steps_per_epoch + step, self.first_bad_step)
            self.first_bad_loss = torch.where(first, loss.detach().float(), self.first_bad_loss)
            return True
        loss = self.dist.sum_over_ranks(loss.detach())
        if bool(torch.isfinite(loss)):
            return True
        if self.cfg.skip_nonfinite:
            return False
        raise self._diverged(epoch, step, float(loss))

    def _raise_if_diverged(self) -> None:
        if int(self.first_bad_step) >= 0:
            epoch, step = divmod(int(self.first_bad_step), self.steps_per_epoch)
            raise self._diverged(epoch, step, float(self.first_bad_loss))

    def _diverged(self, epoch: int, step: int, value: float) -> TrainingDiverged:
        return TrainingDiverged(
            f"the training loss became {value} at epoch {epoch + 1} step {step + 1}/{self.steps_per_epoch}; "
            f"stopped without saving; {self._checkpoint_note()}; lower --lr, set --grad-clip, or "
            "pass --skip-nonfinite to skip such steps")

    def _skipped(self, sums: dict) -> None:
        p = self.progress
        sums["skipped"] += 1
        p["skipped_updates"] += 1
        p["skipped_in_a_row"] += 1
        if p["skipped_in_a_row"] >= MAX_SKIPPED_IN_A_ROW:
            raise TrainingDiverged(
                f"{MAX_SKIPPED_IN_A_ROW} updates in a row had a non-finite loss or gradient norm (the "
                f"last at epoch {p['epoch'] + 1} step {p['step']}/{self.steps_per_epoch}); the run "
                f"has diverged; {self._checkpoint_note()}; lower --lr or check the data")

    def _check_finite(self) -> None:
        """Before every save: a NaN/inf recorded on the device, or weights that are not finite
        (from a finite loss with an overflowing gradient), must never replace a good checkpoint."""
        self._raise_if_diverged()
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if self.ema is not None:
            tensors += [t for t in self.ema.shadow.values() if t.is_floating_point()]
        if not self.dist.all_finite(tensors):
            raise TrainingDiverged(
                f"the weights became NaN or infinite by {self._position()} (update "
                f"{self.progress['update']}); stopped without saving; {self._checkpoint_note()}; "
                "lower --lr or set --grad-clip")

    # ------------------------------------------------------------------ saving
    def _checkpoint_note(self) -> str:
        if self.saved_at is None:
            return "no checkpoint was written yet (--resume starts the run afresh)"
        return f"the previous checkpoint {self.run_dir.last_checkpoint} ({self.saved_at}) is intact"

    @contextlib.contextmanager
    def _saving(self, path: Path) -> Iterator[None]:
        """Turn a failed write (disk full, no permission, file-size limit) into one line naming
        the file, the reason and the checkpoint to continue from. atomic_path has already
        removed the half-written temporary and left the old file as it was."""
        try:
            yield
        except OSError as e:
            advice = SAVE_ADVICE.get(e.errno, "fix that")
            raise SaveError(f"cannot write {path}: {e.strerror or e}; {self._checkpoint_note()}; "
                            f"{advice}, then continue with `vitkit train --resume --out "
                            f"{self.run_dir.path}`") from None

    def _save_last(self, sums: dict | None = None) -> None:
        """checkpoints/last.safetensors; mid-epoch (`sums` given) it also holds the step within
        the epoch and the epoch's running sums."""
        p = self.progress
        self._check_finite()
        if sums is not None:
            self._tick()
            sums = self._all_ranks(sums)
        p["epoch_sums"] = None if sums is None else {
            "loss": float(sums["loss"]), "correct": float(sums["correct"]),
            "images": sums["images"], "skipped": sums["skipped"]}
        model_state = self.dist.full_model_state(self.model)
        optimizer_state = self.dist.full_optimizer_state(self.model, self.optimizer)

        def write() -> None:
            with self._saving(self.run_dir.last_checkpoint):
                save_training_state(self.run_dir.last_checkpoint, self.model.config, model_state,
                                    optimizer_state, self.ema.shadow if self.ema else None, p)

        self.dist.on_rank0(write)
        self.saved_at = self._position()

    def _save_model(self, path: Path, metadata: dict) -> None:
        """best or final.safetensors: the model to evaluate (the EMA with --ema), unsharded."""
        self._check_finite()
        model = self.dist.unsharded(self._eval_model())

        def write() -> None:
            with self._saving(path):
                save_model(model, path, metadata=metadata)

        self.dist.on_rank0(write)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.progress["train_seconds"] += now - self.clock
        self.clock = now

    def validate(self) -> dict:
        model = self._eval_model()
        if self.dist.active and not self.streaming:
            return self.dist.validate(model, self.data.val.images, self.data.val.labels,
                                      self.cfg.eval_batch_size, self.precision)
        # Streamed, every rank reads the whole split: the same forward passes and numbers on all.
        logits, labels = self.split_logits(model, "val")
        labels = labels.to(logits.device)
        return {"val_loss": float(F.cross_entropy(logits, labels)),
                "val_acc": classification_metrics(logits, labels)["top1"]}

    def run(self) -> dict:
        if not self.streaming:
            self.hold_train_images()
        p = self.progress
        # Counting images, so the bar shows images/s.
        done = p["epoch"] * self.train_count + min(p["step"] * self.cfg.batch_size, self.train_count)
        bar = tqdm(total=self.cfg.epochs * self.train_count, initial=done, unit="img", dynamic_ncols=True,
                   disable=True if self.quiet else None, file=sys.stderr, desc="train")
        with bar, self._stop_on_signals():
            for epoch in range(p["epoch"], self.cfg.epochs):
                if p["bad_epochs"] >= self.cfg.early_stop > 0:
                    break
                self.clock = time.perf_counter()
                stats = self.train_epoch(epoch, bar)
                self._raise_if_diverged()
                stats.update(self.validate())
                self._tick()
                stats.update(epoch=epoch + 1, lr=self.optimizer.param_groups[0]["lr"],
                             seconds=round(p["train_seconds"], 3))
                self._end_epoch(epoch, stats)
                k = stats["skipped_updates"]
                bar.set_postfix(loss=f"{stats['train_loss']:.3f}", val_acc=f"{stats['val_acc']:.4f}",
                                **({"skipped": k} if k else {}))
                if bar.disable and not self.quiet:
                    skipped = f"  skipped {k} update{'s' if k > 1 else ''}" if k else ""
                    self.say(f"epoch {epoch + 1}/{self.cfg.epochs}  loss {stats['train_loss']:.4f}  "
                             f"val_acc {stats['val_acc']:.4f}  {stats['seconds']:.1f}s{skipped}")
                if self._should_stop():
                    raise self._stopped()
        return self.finish()

    def hold_train_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the training split on the device as each epoch reads it (in memory, not streamed):
        uint8 images at the model's input size, and their labels. Returns (images, labels)."""
        images = self.data.train.images.to(self.device)
        cfg = self.model.config
        if tuple(images.shape[1:]) != (cfg.in_chans, *cfg.image_size):
            # Resized once, kept as uint8: each step then only slices and augments.
            images = torch.cat([resize_images(images[i:i + 1024], cfg).mul_(255).round_().to(torch.uint8)
                                for i in range(0, images.shape[0], 1024)])
        self.train_images = images
        self.train_labels = self.data.train.labels.to(self.device)
        return self.train_images, self.train_labels

    def _end_epoch(self, epoch: int, stats: dict) -> None:
        p = self.progress
        p["epoch"] = epoch + 1
        p["history"].append(stats)
        improved = stats["val_acc"] > p["best_val_acc"]
        if improved:
            p["best_val_acc"], p["best_epoch"], p["bad_epochs"] = stats["val_acc"], epoch + 1, 0
            self._save_model(self.run_dir.best_checkpoint, {"epoch": epoch + 1, "val_acc": stats["val_acc"]})
        else:
            p["bad_epochs"] += 1
        self.dist.on_rank0(self._write_metrics)
        self._save_last()

    def _write_metrics(self) -> None:
        with self._saving(self.run_dir.metrics_file):
            self.run_dir.write_metrics(self.progress["history"])

    def _save_final(self) -> None:
        """checkpoints/final.safetensors: the model as training left it (the EMA with --ema)."""
        p = self.progress
        val_acc = p["history"][-1]["val_acc"] if p["history"] else None
        self._save_model(self.run_dir.final_checkpoint, {"epoch": p["epoch"], "val_acc": val_acc})

    def finish(self) -> dict:
        """Every rank saves the final model (gathered under FSDP); rank 0 tests the chosen
        checkpoint and writes the summary; every rank returns it."""
        self._save_final()
        return self.dist.on_rank0(self._test_and_summarize)

    def _test_and_summarize(self) -> dict:
        history = self.progress["history"]
        if self.cfg.select == "best":
            chosen, val_acc = self.run_dir.best_checkpoint, self.progress["best_val_acc"]
        else:
            chosen, val_acc = self.run_dir.final_checkpoint, history[-1]["val_acc"] if history else None
        model = load_checkpoint(chosen).to(self.device)
        test = classification_metrics(*self.split_logits(model, "test"))
        summary = {
            "test_acc": test["top1"],
            "test_top5": test["top5"],
            "test_n": test["n"],
            "select": self.cfg.select,
            "val_acc": val_acc,
            "best_val_acc": self.progress["best_val_acc"],
            "best_epoch": self.progress["best_epoch"],
            "epochs": self.progress["epoch"],
            "train_seconds": round(self.progress["train_seconds"], 3),
            "checkpoint": str(chosen),
            "model": self.cfg.model if self.cfg.model != "custom" else self.model.config.name,
            "params": sum(p.numel() for p in self.model.parameters()),
            "data": self.data.source,
            "device": str(self.device),
            "precision": self.precision,
            "seed": self.cfg.seed,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "skipped_updates": self.progress["skipped_updates"],
        }
        if self.dist.active:
            summary["processes"] = self.dist.world_size
        with self._saving(self.run_dir.summary_file):
            self.run_dir.write_summary(summary, test["confusion"], self.data.class_names, history)
        return summary


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> dict:
    """Run a training job and return its summary (also written to the run folder). Under
    torchrun every process calls this and gets the same summary."""
    try:
        return Trainer(cfg, resume=resume, quiet=quiet).run()
    except BaseException as error:
        if owns_process_group():
            # The traceback's frames hold the Trainer, its DDP/FSDP wrapper and through it the
            # process group, which would outlive end_process_group, its threads running for as
            # long as the caller keeps the exception. The frames' local variables go (the
            # traceback still prints); a single process keeps them for post-mortem debugging.
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        end_process_group()


__all__ = ["train", "Trainer", "TrainConfig"]
