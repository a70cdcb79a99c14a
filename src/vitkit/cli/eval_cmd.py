"""`vitkit eval`: accuracy of a checkpoint on a split of a dataset."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.device import pick_device
from vitkit.cli.options import add_image_limit_flag
from vitkit.data import load_data
from vitkit.data.images import progress_bar
from vitkit.data.shards import ShardBatches, default_workers, is_shard_folder, load_batches, open_shards
from vitkit.errors import ConfigError, DataError, printable
from vitkit.evaluate.classification import classification_metrics, predict_batches, predict_logits
from vitkit.formats import load
from vitkit.objectives.adversarial import ATTACKS, adversarial_accuracy
from vitkit.objectives.distill import HEADS, head_logits, predict_head_logits


def add_data_flags(p) -> None:
    """The flags that pick a dataset and reproduce the split a run used."""
    p.add_argument("--data", default="digits", help="dataset (default: the bundled digits); a shard folder's "
                                                     "split is the one `vitkit shard` made")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split (default test)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share when the data has no split")
    p.add_argument("--test-fraction", type=float, default=0.2, help="test share when the data has no split")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    add_image_limit_flag(p)


def register(sub, parent) -> None:
    p = sub.add_parser("eval", parents=[parent], help="evaluate a checkpoint",
                       description="Top-1 and top-5 accuracy and the confusion matrix of a checkpoint "
                                   "on a dataset split; images are resized to the model's input.")
    p.add_argument("checkpoint", help="model file (any format vitkit loads)")
    add_data_flags(p)
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=None,
                   help="shard folders: DataLoader processes that decode images (default: one per CPU, at most 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--head", default="both", choices=HEADS,
                   help="distilled models: both heads averaged (default), or the class or distillation head alone")
    robust = p.add_argument_group("adversarial robustness")
    robust.add_argument("--attack", choices=ATTACKS, help="also report accuracy under this attack")
    robust.add_argument("--eps", type=float, nargs="+", default=[8 / 255],
                        help="L-inf radius in pixel units on the [0, 1] scale; one or several (default 8/255)")
    robust.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    robust.add_argument("--step-size", type=float, help="PGD step size (default 2.5 * eps / steps)")
    robust.add_argument("--random-start", action="store_true", help="PGD from a random point of the eps-ball")
    p.set_defaults(func=run)


def run(args) -> int:
    device = pick_device(args.device)
    model = load(args.checkpoint).to(device)
    if is_shard_folder(args.data) and args.head == "both" and not args.attack:
        # Streamed: one batch of the split in memory at a time.
        data = open_shards(args.data)
        _check_classes(model, data, args.data)
        logits, labels = _streamed_logits(model, data.split(args.split), args)
    else:
        data = load_data(args.data, split_seed=args.split_seed, val_fraction=args.val_fraction,
                         test_fraction=args.test_fraction, skip_bad_images=args.skip_bad_images,
                         max_image_pixels=args.max_image_pixels)
        _check_classes(model, data, args.data)
        split = data.split(args.split)
        labels = split.labels
        if args.head == "both":
            logits = predict_logits(model, split.images, args.batch_size)
        else:
            logits = predict_head_logits(model, split.images, args.head, args.batch_size)
    metrics = classification_metrics(logits, labels)
    result = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, "head": args.head,
              **metrics, "class_names": data.class_names}
    if args.attack:
        result["adversarial"] = [
            adversarial_accuracy(model, split.images, split.labels, args.attack, eps, args.steps,
                                 args.step_size, args.random_start, args.batch_size,
                                 logits_of=lambda m, x: head_logits(m, x, args.head))
            for eps in args.eps]
    if args.json:
        print_json(result)
    else:
        print(f"{args.split}: top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  n {metrics['n']}")
        for r in result.get("adversarial", []):
            print(f"  under {r['attack']} eps {r['eps']:g}: top-1 {r['top1']:.4f}  "
                  f"(largest perturbation {r['max_perturbation']:.4g})")
        print("confusion matrix (rows: true, columns: predicted):")
        for name, row in zip(data.class_names, metrics["confusion"]):
            print(f"  {printable(name)[:12]:>12} " + " ".join(f"{v:4d}" for v in row))
    return 0


def _check_classes(model, data, spec: str) -> None:
    k = model.config.num_classes
    if k != data.num_classes:
        raise DataError(f"the checkpoint predicts {k} classes but {spec} has {data.num_classes}; "
                        "evaluate on the data it was trained for, or fine-tune with `vitkit train --init`")


def _streamed_logits(model, split, args):
    cfg = model.config
    batches = ShardBatches(split, batch_size=args.batch_size, image_size=cfg.image_size, channels=cfg.in_chans)
    workers = default_workers() if args.workers is None else args.workers
    if workers < 0:
        raise ConfigError(f"--workers must be 0 or more, not {workers}")
    with progress_bar(len(split), f"evaluating {args.split}", args.quiet) as bar:
        def counted():
            for images, labels in load_batches(batches, workers):
                bar.update(labels.shape[0])
                yield images, labels

        return predict_batches(model, counted())
