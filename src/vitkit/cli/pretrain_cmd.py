"""`vitkit pretrain`: self-supervised pre-training (masked patch prediction or MAE), no labels."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.cli.options import MAX_IMAGE_PIXELS_HELP, add_dataclass_flags, add_model_flags, collect
from vitkit.objectives.pretrain import PretrainConfig, pretrain

PRETRAIN_HELP = {
    "objective": "mpp (the paper's masked patch prediction: 3-bit mean colour of 50%% corrupted "
                 "patches) or mae (masked autoencoder)",
    "data": "dataset whose training-split images are used (labels are not)",
    "out": "run folder (default runs/<timestamp>); the model is checkpoints/pretrained.safetensors",
    "model": "auto (picked from the data), custom, or a preset from `vitkit models`",
    "mask_ratio": "mae: share of patches hidden from the encoder",
    "decoder_width": "mae: decoder width",
    "decoder_depth": "mae: decoder blocks",
    "decoder_heads": "mae: decoder attention heads",
    "norm_pix": "mae: reconstruct pixels normalised per patch",
    "max_image_pixels": MAX_IMAGE_PIXELS_HELP,
}


def register(sub, parent) -> None:
    p = sub.add_parser("pretrain", parents=[parent], help="self-supervised pre-training (mpp, mae)",
                       description="Pre-train a ViT without labels, then fine-tune it with "
                                   "`vitkit train --init RUN/checkpoints/pretrained.safetensors`.")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_dataclass_flags(p.add_argument_group("pre-training"), PretrainConfig, dest_prefix="pretrain_",
                        skip=("model_options",), help_text=PRETRAIN_HELP)
    add_model_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    options = collect(args, "pretrain_")
    options["model_options"] = collect(args, "model_")
    summary = pretrain(PretrainConfig(**options), quiet=args.quiet)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['objective']} pre-training: final train loss {summary['train_loss']:.4f}"
              + (f", validation loss {summary['val_loss']:.4f}" if "val_loss" in summary else "")
              + f"; {summary['train_seconds']:.1f} s")
        print(f"pre-trained model: {summary['checkpoint']}")
    return 0
