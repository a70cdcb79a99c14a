"""`vitkit predict`: the top classes of a checkpoint for image files."""

from __future__ import annotations

from pathlib import Path

import torch

from vitkit.cli.main import print_json
from vitkit.device import pick_device
from vitkit.cli.options import add_image_limit_flag
from vitkit.data import read_image_files, read_images
from vitkit.evaluate.preprocess import prepare_images
from vitkit.errors import CheckpointError, printable
from vitkit.formats import image_format, load


def register(sub, parent) -> None:
    p = sub.add_parser("predict", parents=[parent], help="classify image files",
                       description="Print the top-k classes with probabilities for each image.")
    p.add_argument("checkpoint", help="model file (any format vitkit loads)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_image_limit_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    device = pick_device(args.device)
    try:
        model = load(args.checkpoint).to(device)
    except CheckpointError:
        kind = image_format(Path(args.checkpoint))
        if kind is None:
            raise
        raise CheckpointError(f"{args.checkpoint} is a {kind} image, not a checkpoint: the checkpoint comes first, "
                              "then the images (vitkit predict CHECKPOINT IMAGE [IMAGE ...])") from None
    cfg = model.config
    if cfg.interpolation is None:
        images = read_images(args.images, cfg.image_size, cfg.in_chans, max_image_pixels=args.max_image_pixels)
        pixels = prepare_images(images.to(device), cfg)
    else:
        # A released model is fed its release's resize and crop of each image at its own size.
        images = read_image_files(args.images, cfg.in_chans, max_image_pixels=args.max_image_pixels)
        pixels = prepare_images([image.to(device) for image in images], cfg)
    with torch.no_grad():
        probs = model(pixels).float().softmax(dim=-1).cpu()
    k = min(args.topk, probs.shape[1])
    names = list(cfg.class_names) or [str(i) for i in range(probs.shape[1])]
    results = []
    for path, p in zip(args.images, probs):
        top = p.topk(k)
        results.append({"image": path, "top": [{"class": names[i], "index": int(i), "prob": float(v)}
                                               for v, i in zip(top.values, top.indices)]})
    if args.json:
        print_json({"checkpoint": args.checkpoint, "predictions": results})
    else:
        for r in results:
            print(r["image"] + ": " + ", ".join(f"{printable(t['class'])} {t['prob']:.3f}" for t in r["top"]))
    return 0
