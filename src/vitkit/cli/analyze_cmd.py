"""`vitkit analyze`: the paper's section 4.5 analyses of a checkpoint, as PNGs and analysis.json."""

from __future__ import annotations

from pathlib import Path

from vitkit.cli.main import print_json
from vitkit.cli.options import add_data_flags, data_spec
from vitkit.errors import ConfigError


def register(sub, parent) -> None:
    p = sub.add_parser("analyze", parents=[parent], help="attention maps, rollout, attention distance, ...",
                       description="Write filters.png (principal components of the patch-embedding "
                                   "filters), posemb_similarity.png, attention_distance.png (mean attention "
                                   "distance per head against depth), rollout.png (attention rollout over "
                                   "the images) and analysis.json with the numbers behind them.")
    p.add_argument("checkpoint", help="model file (any format vitkit.load reads)")
    p.add_argument("--out", required=True, help="folder to write the pictures and analysis.json to")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split of --data to use (default test)")
    p.add_argument("--images", nargs="+", metavar="IMG", default=None,
                   help="image files to analyse instead of a data set")
    p.add_argument("--num-images", type=int, default=256,
                   help="images of the split averaged for the attention distance (default 256)")
    p.add_argument("--rollout-images", type=int, default=8, help="images shown in rollout.png (default 8)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help="print analysis.json's summary as one JSON object")
    add_data_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import vitkit
    from vitkit.analysis import analyze

    for name in ("num_images", "rollout_images", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    model = vitkit.load(args.checkpoint)
    spec = data_spec(args)
    if args.images:
        if hasattr(args, "data_source"):
            raise ConfigError("give --data or --images, not both")
        from vitkit.data import read_image_files

        # Any size: the analysis resizes them to the model's input; their classes are unknown.
        images = read_image_files(args.images, 3, max_image_pixels=spec.max_image_pixels)
        source, labels, class_names = f"{len(args.images)} image file(s)", None, None
    else:
        from vitkit.data import load_data

        data = load_data(spec, quiet=args.quiet)
        split = data.split(args.split)
        # The rollout examples are drawn across the classes (analyze's labels).
        images, labels, class_names = split.images[:args.num_images], split.labels[:args.num_images], data.class_names
        source = f"{spec.source} ({args.split} split, first {len(images)} images)"
    result = analyze(model, images, args.out, rollout_images=args.rollout_images,
                     batch_size=args.batch_size, progress=not args.quiet, name=Path(args.checkpoint).name,
                     labels=labels, class_names=class_names)
    summary = {"out": str(args.out), "images": source, "files": result["files"], "notes": result["notes"],
               "mean_attention_distance": result["mean_attention_distance"]}
    if args.json:
        print_json(summary)
        return 0
    print(f"analysed {args.checkpoint} on {source}")
    for name in result["files"] + ["analysis.json"]:
        print(f"  wrote {args.out}/{name}")
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0
