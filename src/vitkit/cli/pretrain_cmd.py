"""`vitkit pretrain`: self-supervised pre-training (masked patch prediction or MAE), no labels.
The same engine and run folder as `vitkit train` (resume, checkpoints, torchrun, streaming)."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.cli.train_cmd import TRAIN_HELP, add_run_flags, run_config
from vitkit.errors import ConfigError
from vitkit.train import train
from vitkit.train.config import PRETRAIN_OBJECTIVES
from vitkit.train.distributed import is_main_process

PRETRAIN_HELP = {
    **TRAIN_HELP,
    "objective": "mpp (the paper's masked patch prediction: 3-bit mean colour of 50%% corrupted "
                 "patches) or mae (masked autoencoder) (default: mpp)",
    "out": "run folder (default runs/<timestamp>); the model is checkpoints/final.safetensors",
    "init": "checkpoint to continue pre-training from (its head is dropped)",
    "early_stop": "stop after N epochs without a lower validation loss (0 = off)",
    "select": "the run's result: last (the model when training ends) or best (lowest validation loss); "
              "default: best with --early-stop, else last",
    "mask_ratio": "mae: share of patches hidden from the encoder",
    "decoder_width": "mae: decoder width",
    "decoder_depth": "mae: decoder blocks",
    "decoder_heads": "mae: decoder attention heads",
    "norm_pix": "mae: reconstruct pixels normalised per patch",
}


def register(sub, parent) -> None:
    p = sub.add_parser("pretrain", parents=[parent], help="self-supervised pre-training (mpp, mae)",
                       description="Pre-train a ViT without labels, then fine-tune it with "
                                   "`vitkit train --init RUN/checkpoints/final.safetensors`.")
    add_run_flags(p, labels=False, help_text=PRETRAIN_HELP, title="pre-training")
    p.set_defaults(func=run)


def print_summary(summary: dict) -> None:
    loss = f"final train loss {summary['final_train_loss']:.4f}"
    if summary.get("val_loss") is not None:
        loss += f", validation loss {summary['val_loss']:.4f}"
    if summary.get("test_loss") is not None:
        loss += f", test loss {summary['test_loss']:.4f}"
    print(f"{summary['objective']} pre-training: {loss}; {summary['train_seconds']:.1f} s training")
    print(f"pre-trained model: {summary['checkpoint']}  (fine-tune it with `vitkit train --init "
          f"{summary['checkpoint']} --data ...`)")


def run(args) -> int:
    objective = getattr(args, "train_objective", None)
    fixed = {}
    if not args.resume and (objective is not None or not args.config):
        fixed["objective"] = objective or "mpp"
    if objective is not None and objective not in PRETRAIN_OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(PRETRAIN_OBJECTIVES)}, not {objective!r}")
    cfg, resume, moved_data = run_config(args, "pretrain", **fixed)
    if args.config and not cfg.pretraining:
        raise ConfigError(f"{args.config} is a supervised training config; run it with `vitkit train --config`")
    summary = train(cfg, resume=resume, quiet=args.quiet, moved_data=moved_data)
    if not is_main_process():
        return 0
    if args.json:
        print_json(summary)
    else:
        print_summary(summary)
    return 0
