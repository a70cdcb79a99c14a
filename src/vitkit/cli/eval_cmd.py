"""`vitkit eval`: accuracy of a checkpoint on a split of a dataset."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.data import load_data
from vitkit.errors import DataError
from vitkit.evaluate.classification import classification_metrics, predict_logits
from vitkit.formats import load
from vitkit.train.loop import pick_device


def add_data_flags(p) -> None:
    """The flags that pick a dataset and reproduce the split a run used."""
    p.add_argument("--data", default="digits", help="dataset (default: the bundled digits)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default test)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share when the data has no split")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test share when the data has no split")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")


def register(sub, parent) -> None:
    p = sub.add_parser("eval", parents=[parent], help="evaluate a checkpoint",
                       description="Top-1 and top-5 accuracy and the confusion matrix of a checkpoint "
                                   "on a dataset split; images are resized to the model's input.")
    p.add_argument("checkpoint", help="model file (any format vitkit loads)")
    add_data_flags(p)
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    device = pick_device(args.device)
    model = load(args.checkpoint).to(device)
    data = load_data(args.data, split_seed=args.split_seed, val_fraction=args.val_fraction,
                     test_fraction=args.test_fraction, skip_bad_images=args.skip_bad_images)
    k = model.config.num_classes
    if k != data.num_classes:
        raise DataError(f"the checkpoint predicts {k} classes but {args.data} has {data.num_classes}; "
                        "evaluate on the data it was trained for, or fine-tune with `vitkit train --init`")
    split = data.split(args.split)
    logits = predict_logits(model, split.images, args.batch_size)
    metrics = classification_metrics(logits, split.labels)
    result = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, **metrics,
              "class_names": data.class_names}
    if args.json:
        print_json(result)
    else:
        print(f"{args.split}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  n {metrics['n']}")
        print("confusion matrix (rows: true, columns: predicted):")
        for name, row in zip(data.class_names, metrics["confusion"]):
            print(f"  {name[:12]:>12} " + " ".join(f"{v:4d}" for v in row))
    return 0
