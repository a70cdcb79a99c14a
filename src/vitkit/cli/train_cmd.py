"""`vitkit train`: train a ViT on a dataset; every config field is a flag. The run flags and
their handling are shared with `vitkit pretrain`, which runs on the same engine."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.cli.options import add_data_flags, add_dataclass_flags, add_model_flags, collect, data_spec
from vitkit.data.augment import AugmentConfig
from vitkit.errors import ConfigError
from vitkit.train import TrainConfig, train
from vitkit.train.distributed import is_main_process

TRAIN_HELP = {
    "out": "run folder (default runs/<timestamp>)",
    "model": "auto (picked from the data), custom, or a preset from `vitkit models`",
    "init": "checkpoint to fine-tune from (new zero-initialised head, embeddings resized)",
    "freeze": "none, or backbone to train only the head",
    "recipe": "default, or finetune (the paper's: SGD momentum 0.9, no weight decay, clip 1, cosine); "
              "default: finetune with --init, else default",
    "epochs": "training epochs (default: picked from the data size)",
    "batch_size": "images per step",
    "optimizer": "adamw, sgd, or muon (Muon for the blocks' weight matrices, AdamW for the rest)",
    "lr": "peak learning rate",
    "weight_decay": "decoupled weight decay (norms, biases, tokens and embeddings exempt)",
    "momentum": "SGD's momentum",
    "betas": "Adam's two betas",
    "min_lr_ratio": "where the decay ends, as a share of the peak learning rate",
    "label_smoothing": "label smoothing of the targets",
    "grad_clip": "clip the gradients' global norm to this (0: no clipping)",
    "eval_batch_size": "images per forward pass of validation and test",
    "seed": "seed of the initialisation, the order of the images and the augmentation",
    "layer_decay": "layer-wise learning-rate decay (BEiT/MAE fine-tuning): block i of L learns at "
                   "lr * decay^(L - i), the stem and embeddings at lr * decay^(L + 1), e.g. 0.65; unset: off",
    "warmup_epochs": "linear warm-up length in epochs",
    "schedule": "cosine, linear or constant decay after warm-up",
    "schedule_unit": "update the learning rate every step or every epoch",
    "accum_steps": "gradient accumulation: optimiser step every N batches",
    "ema": "EMA decay of the weights (0 = off); evaluation and best checkpoint use the EMA",
    "early_stop": "stop after N epochs without a better validation accuracy (0 = off)",
    "select": "the run's result, tested and reported: last (the model when training ends) or best "
              "(best validation accuracy); default: best with --early-stop, else last",
    "checkpoint_every": "also write checkpoints/last.safetensors every N optimiser updates, so a killed "
                        "run resumes mid-epoch (0 = at epoch ends only)",
    "time_budget": "seconds of training the picked epochs must fit, from the speed measured on the first "
                   "steps (only when --epochs is not given); default: 60 for sets under 5,000 images, else no "
                   "limit; 0: no limit",
    "plateau_stop": "stop when the validation loss has not fallen for N epochs, with a quarter of the epochs "
                    "still to go; the best validation epoch's model is then the result; default: max(20, 50%% of "
                    "the epochs) for runs of 40 epochs or more, else off; 0: off",
    "skip_nonfinite": "skip the update of a step whose loss (or clipped gradient norm) is NaN/inf, "
                      "counted in the metrics, instead of stopping the run",
    "precision": "auto (bf16 on GPUs that have it, else fp32), fp32, bf16, fp16",
    "compile": "torch.compile the model",
    "device": "auto, cpu, cuda, cuda:N (under torchrun: auto, cpu or cuda; each process takes cuda:LOCAL_RANK)",
    "fsdp": "under torchrun, shard parameters, gradients and optimiser state across the processes "
            "(FSDP2) instead of replicating the model (DDP); for L and H models",
    "train_fraction": "train on this stratified share (0, 1] of the training split, the same images for every seed",
    "image_size": "model input side (default: from the data)",
    "workers": "shard folders: DataLoader processes that decode images (unset: one per CPU, at most 4)",
    "shuffle_buffer": "shard folders: images in the shuffle buffer",
    "teacher": "checkpoint of the teacher for distillation (any model vitkit loads, e.g. a ResNet)",
    "distill": "none, soft (KL at temperature tau) or hard (CE to the teacher's argmax), through a "
               "distillation token",
    "distill_alpha": "weight of the teacher term; unset: DeiT's 0.1 for soft, 0.5 for hard",
    "distill_tau": "soft distillation temperature; unset: 3 (DeiT)",
    "adversarial": "none, fgsm or pgd: adversarial training",
    "adv_eps": "adversarial training: L-inf radius in pixel units on the [0, 1] scale",
    "adv_steps": "adversarial training: PGD steps",
    "adv_step_size": "adversarial training: PGD step size; unset: 2.5 * eps / steps",
    "adv_ratio": "adversarial training: loss = (1 - ratio) * clean + ratio * adversarial",
}


# TrainConfig fields that only pre-training uses, and those that need labels.
PRETRAIN_FIELDS = ("objective", "mask_ratio", "decoder_width", "decoder_depth", "decoder_heads", "norm_pix")
LABEL_FIELDS = ("freeze", "recipe", "label_smoothing", "teacher", "distill", "distill_alpha", "distill_tau",
                "adversarial", "adv_eps", "adv_steps", "adv_step_size", "adv_ratio")
# What a resumed launch may still choose: where to write, where to run, whether to shard.
RESUME_FLAGS = ("out", "device", "fsdp")


def add_run_flags(p, *, labels: bool, help_text: dict, title: str = "training") -> None:
    """--config, --resume, --json and every TrainConfig, data, model and augmentation flag that
    applies: with `labels` (vitkit train) none of pre-training's own; without (vitkit pretrain)
    none of those that need labels, nor --num-classes and the label-mixing augmentations (a
    pre-trained encoder is headless)."""
    p.add_argument("--config", help="YAML config, e.g. a run's config.yaml (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_data_flags(p)
    add_dataclass_flags(p.add_argument_group(title), TrainConfig, dest_prefix="train_",
                        skip=("data", *(PRETRAIN_FIELDS if labels else LABEL_FIELDS)), help_text=help_text)
    add_model_flags(p, skip=() if labels else ("num_classes",))
    add_dataclass_flags(p.add_argument_group("augmentation (defaults picked from the data)"),
                        AugmentConfig, dest_prefix="aug_", skip=("label_smoothing",) if labels else
                        ("label_smoothing", "mixup", "cutmix"), show_defaults=False)


def register(sub, parent) -> None:
    p = sub.add_parser("train", parents=[parent], help="train a model",
                       description="Train a Vision Transformer. With no flags: the bundled digits, "
                                   "with model, epochs and augmentation picked from the data.")
    add_run_flags(p, labels=True, help_text=TRAIN_HELP)
    p.set_defaults(func=run)


def build_config(args, **fixed) -> TrainConfig:
    """The TrainConfig of --config (or the defaults) with the flags given on top; `fixed`
    values override both."""
    base = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    d = base.to_dict()
    d.update(collect(args, "train_"))
    d["data"] = data_spec(args, base.data).to_dict()
    d["model_options"] = {**d["model_options"], **collect(args, "model_")}
    d["augment"] = {**d["augment"], **collect(args, "aug_")}
    d.update(fixed)
    return TrainConfig.from_dict(d)


def run_config(args, command: str, **fixed) -> tuple[TrainConfig, bool, str | None]:
    """(config, resume, where the data moved): with --resume only the run folder, the launch's
    own choices (device, FSDP) and the data's new place (--data, if it moved) may be given; the
    rest comes from the run's saved config.yaml."""
    if not args.resume:
        return build_config(args, **fixed), False, None
    given = set(collect(args, "train_")) | set(collect(args, "model_")) | set(collect(args, "aug_"))
    given |= {"data" if name == "source" else name for name in collect(args, "data_")}
    extra = sorted(given - set(RESUME_FLAGS) - {"data"})
    if extra or args.config:
        raise ConfigError(f"`vitkit {command} --resume` continues the run with its saved config.yaml; drop "
                          + ", ".join("--" + e.replace("_", "-") for e in extra or ["config"]))
    launch = {k: v for k, v in collect(args, "train_").items() if k in RESUME_FLAGS}
    return TrainConfig(**launch), True, getattr(args, "data_source", None)


def run(args) -> int:
    cfg, resume, moved_data = run_config(args, "train")
    summary = train(cfg, resume=resume, quiet=args.quiet, moved_data=moved_data)
    if not is_main_process():
        return 0
    if args.json:
        print_json(summary)
    elif "test_acc" not in summary:  # a pre-training run resumed with `vitkit train --resume`
        from vitkit.cli.pretrain_cmd import print_summary

        print_summary(summary)
    else:
        n = summary["test_n"]
        which = ("last" if summary["select"] == "last" else "best-validation") + " model"
        tested = (f"test accuracy {summary['test_acc']:.4f} ({round(summary['test_acc'] * n)}/{n}) of the {which}, "
                  f"top-5 {summary['test_top5']:.4f}" if n else f"no test split to test the {which} on")
        print(f"{tested}; best validation {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']}/"
              f"{summary['epochs']}; {summary['train_seconds']:.1f} s training")
        print(f"run folder: {summary['checkpoint'].rsplit('/checkpoints/', 1)[0]}  "
              f"(model: {summary['checkpoint']})")
    return 0


__all__ = ["register", "run", "build_config", "run_config", "add_run_flags"]
