"""The training engine: one loop for every objective (supervised, distillation, adversarial
training, masked patch prediction, MAE), in one process or under torchrun (DDP/FSDP2), from
memory or streamed shards, with exact resume, a clean stop on SIGTERM and no non-finite weights
ever saved (docs/reliability.md).

The Trainer builds the run (data, model, objective, optimiser) and drives the epochs; it hands
the batches to train/batches.py, checkpoints to train/checkpoints.py, the stop and NaN guards
to train/guards.py and the measurements to train/evaluation.py. One optimiser update happens in
`_update` and one backward in `train_epoch`, whatever the objective.

No host-device synchronisation inside an epoch: losses, accuracies and the first non-finite
loss accumulate in device tensors and are read at epoch ends and checkpoints. (With
--skip-nonfinite, on the CPU or under torchrun every step's loss is read, to decide whether
to skip it.)
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from typing import Iterator

import torch
from tqdm import tqdm

from vitkit.data.augment import AugmentConfig, Augmenter
from vitkit.data.shards import is_shard_folder
from vitkit.data.spec import absolute, fingerprint
from vitkit.device import pick_device, pick_precision, seed_everything
from vitkit.errors import ConfigError, StoppedBySignal, TrainingDiverged, printable
from vitkit.formats import load as load_checkpoint
from vitkit.models import count_parameters
from vitkit.models.vit import VisionTransformer
from vitkit.objectives import build_objective
from vitkit.objectives.base import Draws
from vitkit.progress import Progress
from vitkit.train.auto import busy_note, default_warmup, fit_epochs, plateau_patience, resolve, time_budget
from vitkit.train.batches import RunBatches, read_splits
from vitkit.train.budget import epoch_seconds
from vitkit.train.checkpoints import Checkpoints, check_same_data
from vitkit.train.config import TrainConfig
from vitkit.train.distributed import Distributed, end_process_group, owns_process_group
from vitkit.train.evaluation import classifier_test, split_sums
from vitkit.train.guards import MAX_SKIPPED_IN_A_ROW, NonFiniteLoss, NonFiniteWatch, StopSignals
from vitkit.train.init_model import build_model
from vitkit.train.optim import EMA, lr_factor, run_optimizer, set_lr
from vitkit.train.run import RunFolder
from vitkit.train.state import restore_rng
from vitkit.train.step import TrainingStep


def new_progress() -> dict:
    """A run's progress as checkpoints store it. `epoch`: epochs done; `step`: steps done in
    the next epoch (0 except in a mid-epoch checkpoint, which also has `epoch_sums`, that
    epoch's running sums); `update`: optimiser updates done; `best`: the best value so far of
    the objective's monitored validation number (None before the first epoch); `lowest_val_loss`
    and its epoch, for stopping on a plateau."""
    return {"epoch": 0, "step": 0, "update": 0, "best": None, "best_epoch": -1,
            "bad_epochs": 0, "lowest_val_loss": None, "lowest_val_loss_epoch": 0, "train_seconds": 0.0,
            "skipped_updates": 0, "skipped_in_a_row": 0, "epoch_sums": None, "history": []}


class Trainer:
    """One training run. `Trainer(cfg).run()` returns the summary dict."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, quiet: bool = False,
                 moved_data: str | None = None):
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
            if moved_data is not None:
                saved = saved.replace(data=absolute(saved.data.replace(source=moved_data)))
            try:
                check_same_data(run_dir, saved, moved_data is not None)
            except BaseException:
                run_dir.unlock()
                raise
            return run_dir, saved.replace(fsdp=cfg.fsdp,
                                          device=saved.device if cfg.device == "auto" else cfg.device)

        self.run_dir, cfg = self.dist.on_rank0(open_run)
        try:
            self._build(cfg, resume)
        except BaseException:
            self.run_dir.unlock()  # the folder is free again for the run that fixes what failed
            raise

    def _build(self, cfg: TrainConfig, resume: bool) -> None:
        if not resume:
            # Recorded where it is, whatever the working folder of a resume will be.
            cfg = cfg.replace(data=absolute(cfg.data))
        self.device = self.dist.device(cfg.device) if self.dist.active else pick_device(cfg.device)
        # A shard folder streams: its images stay on disk and are decoded batch by batch.
        self.streaming = is_shard_folder(cfg.data.source)
        self.data = read_splits(cfg.data, self.streaming, cfg.train_fraction)
        if self.streaming:
            cfg = self._fixed_split(cfg)
        for note in self.data.notes if self.dist.is_main else ():
            # Warnings print even with --quiet: they say something was left out.
            tqdm.write(f"warning: {note}", file=sys.stderr)
        if len(self.data.train) == 0 or len(self.data.val) == 0:
            raise ConfigError("the training or validation split is empty; give more images or "
                              "change --val-fraction" + (" when running vitkit shard" if self.streaming else ""))
        if self.data.num_classes < 2 and not cfg.pretraining:
            raise ConfigError(f"{self.data.source} has {self.data.num_classes} class "
                              f"({', '.join(map(printable, self.data.class_names)) or 'none'}); a classifier needs "
                              "at least two: add a folder of images per class (or pre-train without labels "
                              "with `vitkit pretrain`)")
        picked_epochs, picked_warmup = cfg.epochs is None, cfg.warmup_epochs is None
        # The --init checkpoint, read once: its config decides the model, its weights start it.
        init = load_checkpoint(cfg.init) if cfg.init else None
        self.cfg, model_cfg, notes = resolve(cfg, self.data, init.config if init is not None else None)
        for note in notes:
            self.say(f"auto: {note}")
        self.dist.check(self.cfg, streaming=self.streaming)
        seed_everything(self.cfg.seed)
        self.precision = pick_precision(self.cfg.precision, self.device)
        self.model = build_model(model_cfg, init, self.cfg.freeze)
        del init
        # The objective's own parameters are drawn on every rank from the same stream as the
        # model's, before the ranks' streams part.
        self.objective = build_objective(self.cfg, self.model, self.device, self.precision)
        self.dist.seed_rank(self.cfg.seed, update=0)
        self.model.to(self.device)
        self.step_module = TrainingStep(self.model, self.objective)
        trained = self.dist.wrap(self.step_module, self.cfg.fsdp)
        self.optimizer = run_optimizer(self.cfg, self.step_module)
        self.ema = EMA(self.model, self.cfg.ema) if self.cfg.ema > 0 else None
        aug_cfg = AugmentConfig(**self.cfg.augment, label_smoothing=self.cfg.label_smoothing)
        self.augment = Augmenter(aug_cfg, self.data.num_classes, self.model.config.image_size,
                                 self.model.config.in_chans)
        # What a step calls: the model and the objective together, so that compiling it compiles
        # the forward passes the objective runs (the student's, the encoder's, the attack's).
        self.step = compile_step(trained) if self.cfg.compile else trained

        self.batches = RunBatches(self.data, self.streaming, self.device, self.dist, self.cfg.batch_size,
                                  self.cfg.seed, self.cfg.workers, self.cfg.shuffle_buffer)
        if picked_epochs and not resume:
            self._fit_time_budget(picked_warmup)
        if self.cfg.plateau_stop is None:
            self.cfg = self.cfg.replace(plateau_stop=plateau_patience(self.cfg, self.cfg.epochs))
        self.train_count = self.batches.train_count
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / self.cfg.accum_steps)
        self.total_updates = self.updates_per_epoch * self.cfg.epochs
        self.warmup_updates = round(self.cfg.warmup_epochs * self.updates_per_epoch)
        self.progress = new_progress()
        self.progress["threads"] = torch.get_num_threads()
        if not resume:
            # What the data was, to refuse a resume onto other data (train/state.py keeps it).
            self.progress["data"] = self.dist.on_rank0(lambda: fingerprint(self.cfg.data))
        self.signals = StopSignals(self.dist)
        self.nonfinite = NonFiniteWatch(self.dist, self.device, self.cfg.skip_nonfinite)
        command = "pretrain" if self.cfg.pretraining else "train"
        self.checkpoints = Checkpoints(self.run_dir, self.dist, f"vitkit {command} --resume --out {self.run_dir.path}")
        if resume:
            self._restore()
        else:
            self.dist.on_rank0(self._write_config)

    def _fit_time_budget(self, picked_warmup: bool) -> None:
        """Fewer epochs than picked when they would overrun the time budget at the speed measured
        here (train/budget.py); one process only (a distributed run is sized by its launcher)."""
        budget = time_budget(self.cfg, len(self.data.train))
        if self.dist.active or budget == 0:
            return
        if not self.streaming:
            self.hold_train_images()
        first = self.epoch_batches(0)
        images, labels = next(first)
        first.close()
        seconds = epoch_seconds(self.step_module, self.cfg, self._input, images, labels, self.objective.uses_labels,
                                self.batches.steps_per_epoch, len(self.data.val))
        epochs, note = fit_epochs(self.cfg.epochs, seconds, budget)
        self.say(f"auto: {note}")
        busy = busy_note()
        if busy:
            self.say(f"auto: {busy}")
        if epochs != self.cfg.epochs:
            changes = {"epochs": epochs}
            if picked_warmup:
                changes["warmup_epochs"] = default_warmup(epochs, self.cfg.recipe == "finetune")
            self.cfg = self.cfg.replace(**changes)

    def _write_config(self) -> None:
        with self.checkpoints.saving(self.run_dir.path / "config.yaml"):
            self.run_dir.write_config(self.cfg)

    # ------------------------------------------------------------------ helpers
    def say(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def _fixed_split(self, cfg: TrainConfig) -> TrainConfig:
        """Shards hold the split `vitkit shard` made; the run records that one."""
        made = self.data.index.get("split", {})
        if made.get("seed") is None:  # shards another tool wrote: their split is as it is
            return cfg
        fixed = cfg.replace(data=cfg.data.replace(split_seed=made["seed"], val_fraction=made["val_fraction"],
                                                  test_fraction=made["test_fraction"]))
        if fixed != cfg:
            self.say(f"note: the shards fix the split (made by vitkit shard with seed {made['seed']}, val fraction "
                     f"{made['val_fraction']}, test fraction {made['test_fraction']}); this run records it")
        return fixed

    def _restore(self) -> None:
        state: dict = {}

        def read_progress() -> dict | None:
            # Only rank 0 reads the file; the other ranks get its progress here and the
            # weights and optimiser state through load_state.
            read = self.checkpoints.read_last(self.optimizer)
            if read is None:
                # Killed before its first checkpoint: nothing to continue, but the saved config
                # reproduces the run exactly. Printed even with --quiet: the work starts over.
                tqdm.write(f"note: {self.run_dir.path} has no checkpoint yet (the run stopped before "
                           "its first save); starting it afresh from its config.yaml", file=sys.stderr)
                return None
            state.update(read)
            return read["progress"]

        progress = self.dist.on_rank0(read_progress)
        if progress is None:
            return
        full = None
        if self.dist.is_main:
            full = {**{f"model.{k}": v for k, v in state["model"].items()},
                    **{f"objective.{k}": v for k, v in state["objective"].items()}}
        self.dist.load_state(self.step_module, self.optimizer, full, state.get("optimizer"),
                             source=str(self.run_dir.last_checkpoint))
        if self.dist.is_main:
            if self.ema is not None and state["ema"] is not None:
                self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
            restore_rng(*state["rng"])
        if self.ema is not None:
            self.dist.broadcast_(self.ema.shadow.values())
        if "lowest_val_loss" not in progress:  # a checkpoint from before plateau stops: from its history
            losses = [(h["val_loss"], h["epoch"]) for h in progress["history"] if "val_loss" in h]
            progress = {**progress, **dict(zip(("lowest_val_loss", "lowest_val_loss_epoch"),
                                               min(losses, key=lambda item: item[0]) if losses else (None, 0)))}
        threads = torch.get_num_threads()
        if progress.get("threads", threads) != threads:
            self.say(f"note: this run trained with {progress['threads']} threads and resumes with {threads}; it is "
                     "bit-identical to an uninterrupted run only with the same number (set OMP_NUM_THREADS)")
        self.progress = {**new_progress(), **progress, "threads": threads}
        self.dist.seed_rank(self.cfg.seed, update=self.progress["update"])
        self.checkpoints.saved_at = self._position()
        if self._finished():
            self.say(f"resuming {self.run_dir.path}: training had finished at {self.checkpoints.saved_at}; "
                     "writing the summary")
        else:
            self.say(f"resuming {self.run_dir.path} at {self.checkpoints.saved_at}")

    def _finished(self) -> bool:
        p = self.progress
        return p["epoch"] >= self.cfg.epochs or p["bad_epochs"] >= self.cfg.early_stop > 0 or self._on_plateau()

    def _on_plateau(self) -> bool:
        """Whether the validation loss has not fallen for --plateau-stop epochs, with a quarter of
        the epochs or more still to go (later, stopping saves little, and the last model, near
        the end of its schedule, is the better result)."""
        p = self.progress
        patience = self.cfg.plateau_stop or 0
        return 0 < patience <= p["epoch"] - p["lowest_val_loss_epoch"] and p["epoch"] <= 0.75 * self.cfg.epochs

    def _position(self) -> str:
        """Where the training stands, in words: "epoch 2 step 5/21" or "the end of epoch 1"."""
        p = self.progress
        if p["step"] == 0:
            return f"the end of epoch {p['epoch']}" if p["epoch"] else "the start"
        return f"epoch {p['epoch'] + 1} step {p['step']}/{self.steps_per_epoch}"

    def _input(self, images_uint8: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented pixels in [0, 1] and soft targets for a batch of uint8 images and labels."""
        return self.augment(images_uint8.float().div_(255.0), labels)

    def _eval_model(self) -> VisionTransformer:
        """The model validation, best and final.safetensors see: the EMA with --ema."""
        if self.ema is None:
            return self.model
        shadow = VisionTransformer(self.model.config).to(self.device)
        shadow.load_state_dict(self.ema.shadow)
        return shadow

    # ------------------------------------------------------------------ the loop
    def hold_train_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the training split on the device as each epoch reads it (in memory, not streamed):
        uint8 images at the model's input size, and their labels. Returns (images, labels)."""
        return self.batches.hold_train_images(self.model.config)

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's (uint8 images, labels) on the device, one training step each, from
        `start_step` on; the order depends only on (seed, epoch)."""
        return self.batches.epoch_batches(epoch, start_step, self.model.config)

    def train_epoch(self, epoch: int, bar) -> dict:
        """Train epoch `epoch` from the step the progress says (0, or where a mid-epoch
        checkpoint stopped), checkpointing and stopping only right after an optimiser update."""
        self.step_module.train()
        n = self.train_count
        p = self.progress
        sums = self._epoch_sums()
        accum, batch = self.cfg.accum_steps, self.cfg.batch_size
        group_usable = True
        for step, (images, labels) in enumerate(self.epoch_batches(epoch, p["step"]), start=p["step"]):
            final = (step + 1) % accum == 0 or step + 1 == self.steps_per_epoch
            with self.dist.gradient_sync(final):
                pixels, targets = self._input(images, labels)
                draws = Draws(self.cfg.seed, (epoch, step), self.dist.rows(self.batches.global_batch(step)),
                              self.device)
                out = self.step(pixels, targets if self.objective.uses_labels else None, draws)
                loss = out["loss"]
                if self._loss_is_usable(loss, epoch, step):
                    # Weight each micro-batch by its share of the accumulated global batch, so
                    # accumulation gives the gradient of the full batch even when the last one is
                    # short; times the world size, which the ranks' gradient averaging divides out.
                    group_start = step // accum * accum * batch
                    group = min(n, group_start + accum * batch) - group_start
                    share = labels.shape[0] * self.dist.world_size / group
                    (loss * share).backward()
                    sums["loss"] += loss.detach() * labels.shape[0]
                    sums["images"] += labels.shape[0]
                    if "logits" in out:
                        sums["correct"] += (out["logits"].detach().argmax(1) == targets.argmax(1)).sum()
                        sums["count"] += labels.shape[0]
                    elif "correct" in out:
                        sums["correct"] += out["correct"].detach()
                        sums["count"] += out["count"].detach()
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
        stats = {"train_loss": float(sums["loss"]) / max(sums["images"], 1)}
        if self.objective.accuracy:
            stats[f"train_{self.objective.accuracy}"] = int(sums["correct"]) / max(int(sums["count"]), 1)
        stats["skipped_updates"] = sums["skipped"]
        return stats

    def _epoch_sums(self) -> dict:
        """The running sums of the epoch: zero, or as a mid-epoch checkpoint saved them (exact:
        a float32 sum round-trips through a Python float)."""
        zero = {"loss": 0.0, "correct": 0.0, "count": 0.0, "images": 0, "skipped": 0}
        saved = {**zero, **(self.progress["epoch_sums"] or {})}
        if "count" not in (self.progress["epoch_sums"] or {}):
            saved["count"] = float(saved["images"])  # checkpoints of supervised runs before "count"
        if not self.dist.is_main:
            # Saved sums are over all ranks: rank 0 carries them on, the others start at zero.
            saved = {**saved, "loss": 0.0, "correct": 0.0, "count": 0.0, "images": 0}
        return {"loss": torch.tensor(saved["loss"], dtype=torch.float32, device=self.device),
                # Counts in int64: exact past float32's 2^24 (MPP counts patches, not images).
                "correct": torch.tensor(int(saved["correct"]), dtype=torch.int64, device=self.device),
                "count": torch.tensor(int(saved["count"]), dtype=torch.int64, device=self.device),
                "images": saved["images"], "skipped": saved["skipped"]}

    def _all_ranks(self, sums: dict) -> dict:
        """The epoch's running sums over all ranks (in one process, the sums themselves). The
        skipped count needs no sum: the ranks decide together whether to skip."""
        if not self.dist.active:
            return sums
        loss = sums["loss"].clone()
        counts = torch.stack([sums["correct"], sums["count"], torch.tensor(sums["images"], device=self.device)])
        self.dist.sum_(loss, counts)
        return {"loss": loss, "correct": counts[0], "count": counts[1], "images": int(counts[2]),
                "skipped": sums["skipped"]}

    def _update(self, epoch: int, usable: bool = True) -> bool:
        """The one optimiser update, from the accumulated gradients. Returns False when it was
        skipped (--skip-nonfinite and a non-finite loss or gradient norm): the gradients are
        dropped, the weights and EMA stay, the schedule moves on."""
        update = self.progress["update"]
        if self.cfg.schedule_unit == "epoch":
            update = epoch * self.updates_per_epoch
        set_lr(self.optimizer, self.cfg.lr * lr_factor(update, self.total_updates, self.warmup_updates,
                                                       self.cfg.schedule, self.cfg.min_lr_ratio))
        if usable and self.cfg.grad_clip:
            params = [p for p in self.step_module.parameters() if p.grad is not None]
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
        stop = self.signals.requested()
        if stop or self._should_checkpoint():
            self._save_last(sums)
        if stop:
            raise self._stopped()

    def _should_checkpoint(self) -> bool:
        every = self.cfg.checkpoint_every
        return every > 0 and self.progress["update"] % every == 0

    def _stopped(self) -> StoppedBySignal:
        return StoppedBySignal(
            f"stopped by {self.signals.name} at {self._position()}; checkpoint written to "
            f"{self.run_dir.last_checkpoint}; continue with `{self.checkpoints.resume_command}`",
            self.signals.signal)

    # ------------------------------------------------------------------ non-finite values
    def _loss_is_usable(self, loss: torch.Tensor, epoch: int, step: int) -> bool:
        """Whether the step's loss may be back-propagated (guards.NonFiniteWatch): a non-finite
        loss stops the run, or is skipped with --skip-nonfinite."""
        try:
            return self.nonfinite.usable(loss, epoch * self.steps_per_epoch + step)
        except NonFiniteLoss as bad:
            raise self._diverged(epoch, step, bad.value) from None

    def _raise_if_diverged(self) -> None:
        first = self.nonfinite.first_bad()
        if first is not None:
            epoch, step = divmod(first[0], self.steps_per_epoch)
            raise self._diverged(epoch, step, first[1])

    def _diverged(self, epoch: int, step: int, value: float) -> TrainingDiverged:
        return TrainingDiverged(
            f"the training loss became {value} at epoch {epoch + 1} step {step + 1}/{self.steps_per_epoch}; "
            f"stopped without saving; {self.checkpoints.note()}; lower --lr, set --grad-clip, or "
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
                f"has diverged; {self.checkpoints.note()}; lower --lr or check the data")

    def _check_finite(self) -> None:
        """Before every save: a NaN/inf recorded on the device, or weights that are not finite
        (from a finite loss with an overflowing gradient), must never replace a good checkpoint."""
        self._raise_if_diverged()
        tensors = [t for t in self.step_module.state_dict().values() if t.is_floating_point()]
        if self.ema is not None:
            tensors += [t for t in self.ema.shadow.values() if t.is_floating_point()]
        if not self.nonfinite.all_finite(tensors):
            raise TrainingDiverged(
                f"the weights became NaN or infinite by {self._position()} (update "
                f"{self.progress['update']}); stopped without saving; {self.checkpoints.note()}; "
                "lower --lr or set --grad-clip")

    # ------------------------------------------------------------------ saving
    def _save_last(self, sums: dict | None = None) -> None:
        """checkpoints/last.safetensors; mid-epoch (`sums` given) it also holds the step within
        the epoch and the epoch's running sums."""
        p = self.progress
        self._check_finite()
        if sums is not None:
            self._tick()
            sums = self._all_ranks(sums)
        p["epoch_sums"] = None if sums is None else {
            "loss": float(sums["loss"]), "correct": int(sums["correct"]), "count": int(sums["count"]),
            "images": sums["images"], "skipped": sums["skipped"]}
        self.checkpoints.write_last(self.step_module, self.optimizer, self.ema.shadow if self.ema else None, p,
                                    self._position())

    def _save_model(self, path, metadata: dict) -> None:
        """best or final.safetensors: the model to evaluate (the EMA with --ema), unsharded."""
        self._check_finite()
        self.checkpoints.write_model(self.dist.unsharded(self.step_module, self._eval_model()), path, metadata)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.progress["train_seconds"] += now - self.clock
        self.clock = now

    def validate(self) -> dict:
        """The objective on the validation split: val_loss, and val_<accuracy> where it has one."""
        step = self.step_module if self.ema is None else TrainingStep(self._eval_model(), self.objective)
        result = split_sums(step, self.batches, "val", self.cfg.eval_batch_size, self.dist, self.cfg.seed)
        stats = {"val_loss": result["loss"]}
        if self.objective.accuracy:
            stats[f"val_{self.objective.accuracy}"] = result["acc"]
        return stats

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.run_dir.unlock()

    def _run(self) -> dict:
        if not self.streaming:
            self.hold_train_images()
        p = self.progress
        monitor = self.objective.monitor
        # Counting images, so the bar shows images/s; off a terminal, one line per epoch.
        done = p["epoch"] * self.train_count + min(p["step"] * self.cfg.batch_size, self.train_count)
        bar = Progress(self.cfg.epochs * self.train_count, self.cfg.objective if self.cfg.pretraining else "train",
                       "img", quiet=self.quiet, initial=done)
        with bar, self.signals.watching():
            for epoch in range(p["epoch"], self.cfg.epochs):
                if p["bad_epochs"] >= self.cfg.early_stop > 0:
                    break
                if self._on_plateau():
                    self.say(f"stopping after epoch {epoch} of {self.cfg.epochs}: the validation loss last fell at "
                             f"epoch {p['lowest_val_loss_epoch']} ({epoch - p['lowest_val_loss_epoch']} epochs ago); "
                             f"the result is the best validation epoch's model (epoch {p['best_epoch']}); "
                             "--plateau-stop 0 trains every epoch")
                    break
                self.clock = time.perf_counter()
                stats = self.train_epoch(epoch, bar)
                self._raise_if_diverged()
                stats.update(self.validate())
                self._tick()
                group = self.optimizer.param_groups[0]
                stats.update(epoch=epoch + 1, lr=group["lr"] / group.get("lr_scale", 1.0),
                             seconds=round(p["train_seconds"], 3))
                self._end_epoch(epoch, stats)
                k = stats["skipped_updates"]
                skipped = f"  skipped {k} update{'s' if k > 1 else ''}" if k else ""
                bar.milestone(f"epoch {epoch + 1}/{self.cfg.epochs}  loss {stats['train_loss']:.4f}  "
                              f"{monitor} {stats[monitor]:.4f}  {stats['seconds']:.1f}s{skipped}")
                if self.signals.requested():
                    raise self._stopped()
        return self.finish()

    def _end_epoch(self, epoch: int, stats: dict) -> None:
        p = self.progress
        p["epoch"] = epoch + 1
        p["history"].append(stats)
        if p["lowest_val_loss"] is None or stats["val_loss"] < p["lowest_val_loss"]:
            p["lowest_val_loss"], p["lowest_val_loss_epoch"] = stats["val_loss"], epoch + 1
        value = stats[self.objective.monitor]
        best = p["best"]
        improved = best is None or (value > best if self.objective.higher_is_better else value < best)
        if improved:
            p["best"], p["best_epoch"], p["bad_epochs"] = value, epoch + 1, 0
            self._save_model(self.run_dir.best_checkpoint, {"epoch": epoch + 1, self.objective.monitor: value})
        else:
            p["bad_epochs"] += 1
        self.dist.on_rank0(self._write_metrics)
        self._save_last()

    def _write_metrics(self) -> None:
        with self.checkpoints.saving(self.run_dir.metrics_file):
            self.run_dir.write_metrics(self.progress["history"])

    def _save_final(self) -> None:
        """checkpoints/final.safetensors: the model as training left it (the EMA with --ema)."""
        p = self.progress
        monitor = self.objective.monitor
        last = p["history"][-1][monitor] if p["history"] else None
        metadata = {"epoch": p["epoch"], monitor: last}
        if self.cfg.pretraining:
            metadata["objective"] = self.cfg.objective
        self._save_model(self.run_dir.final_checkpoint, metadata)

    def finish(self) -> dict:
        """Every rank saves the final model (gathered under FSDP); the run's result is tested
        and rank 0 writes the summary; every rank returns it."""
        self._save_final()
        if self.objective.uses_labels:
            return self.dist.on_rank0(self._test_classifier)
        # Without labels, the test is the objective itself on the run's final state, which
        # every rank takes part in (its parameters may be sharded).
        step = self.step_module if self.ema is None else TrainingStep(self._eval_model(), self.objective)
        test = split_sums(step, self.batches, "test", self.cfg.eval_batch_size, self.dist, self.cfg.seed)
        objective_state = self.dist.full_state(self.step_module)
        return self.dist.on_rank0(lambda: self._summarize_pretraining(test, objective_state))

    def _select(self) -> str:
        """The run's result: as --select says, and the best epoch's when the run stopped early on a
        plateau (the last model is then one the schedule had not finished with)."""
        return "best" if self._on_plateau() else self.cfg.select

    def _common_summary(self, chosen) -> dict:
        history = self.progress["history"]
        summary = {
            "objective": self.cfg.objective,
            "select": self._select(),
            "best_epoch": self.progress["best_epoch"],
            "epochs": self.progress["epoch"],
            "train_seconds": round(self.progress["train_seconds"], 3),
            "checkpoint": str(chosen),
            "model": self.cfg.model if self.cfg.model != "custom" else self.model.config.name,
            "params": count_parameters(self.model),
            "data": self.data.source,
            "device": str(self.device),
            "precision": self.precision,
            "seed": self.cfg.seed,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "skipped_updates": self.progress["skipped_updates"],
        }
        if self._on_plateau():
            summary["stopped_on_plateau"] = {"epoch": self.progress["epoch"],
                                             "lowest_val_loss_epoch": self.progress["lowest_val_loss_epoch"]}
        if self.dist.active:
            summary["processes"] = self.dist.world_size
        return summary

    def _test_classifier(self) -> dict:
        history = self.progress["history"]
        if self._select() == "best":
            chosen, val_acc = self.run_dir.best_checkpoint, self.progress["best"]
        else:
            chosen, val_acc = self.run_dir.final_checkpoint, history[-1]["val_acc"] if history else None
        model = load_checkpoint(chosen).to(self.device)
        test = classifier_test(model, self.batches, self.cfg.eval_batch_size, self.precision)
        if not test["n"]:
            # No test split (too few images to carve one, or shards written without): no number.
            test.update(top1=None, top5=None, confusion=None)
            self.say("note: the data has no test split, so the run has no test accuracy; give more images or "
                     "a larger --test-fraction, or evaluate with `vitkit eval` on other data")
        summary = {"test_acc": test["top1"], "test_top5": test["top5"], "test_n": test["n"],
                   "val_acc": val_acc, "best_val_acc": self.progress["best"], **self._common_summary(chosen)}
        with self.checkpoints.saving(self.run_dir.summary_file):
            self.run_dir.write_summary(summary, history, test["confusion"], self.data.class_names)
        return summary

    def _summarize_pretraining(self, test: dict, state: dict) -> dict:
        """Pre-training ends with the headless encoder as final.safetensors (what `vitkit train
        --init` fine-tunes) and the objective's own parameters beside it."""
        history = self.progress["history"]
        chosen = self.run_dir.best_checkpoint if self._select() == "best" else self.run_dir.final_checkpoint
        objective_file = self.run_dir.path / "checkpoints" / "objective.safetensors"
        with self.checkpoints.saving(objective_file):
            from vitkit.io import write_safetensors

            own = {k[len("objective."):]: v.contiguous() for k, v in state.items() if k.startswith("objective.")}
            write_safetensors(objective_file, own, {"objective": self.cfg.objective})
        summary = {"val_loss": history[-1]["val_loss"] if history else None, "best_val_loss": self.progress["best"],
                   **self._common_summary(chosen)}
        # The test split measures the final state (the encoder with the objective's parameters);
        # with --select best the chosen encoder's own objective parameters are not kept.
        if self._select() == "last":
            summary["test_loss"], summary["test_n"] = (test["loss"] if test["n"] else None), test["n"]
            if "acc" in test:
                summary[f"test_{self.objective.accuracy}"] = test["acc"] if test["n"] else None
        if self.objective.accuracy and history:
            summary[f"val_{self.objective.accuracy}"] = history[-1][f"val_{self.objective.accuracy}"]
        with self.checkpoints.saving(self.run_dir.summary_file):
            self.run_dir.write_summary(summary, history)
        return summary


def compile_step(step: torch.nn.Module) -> torch.nn.Module:
    """torch.compile of the training step (model and objective). $VITKIT_COMPILE_BACKEND picks
    another backend than inductor (e.g. aot_eager, which needs no C++ compiler)."""
    backend = os.environ.get("VITKIT_COMPILE_BACKEND", "inductor")
    return torch.compile(step, backend=backend)


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False, moved_data: str | None = None) -> dict:
    """Run a training job and return its summary (also written to the run folder). Under
    torchrun every process calls this and gets the same summary. `moved_data`: with `resume`,
    where the run's data is now (accepted if its fingerprint is the one the run trained on)."""
    try:
        return Trainer(cfg, resume=resume, quiet=quiet, moved_data=moved_data).run()
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


__all__ = ["train", "Trainer", "TrainConfig", "compile_step"]
