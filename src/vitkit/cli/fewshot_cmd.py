"""`vitkit fewshot`: few-shot linear evaluation on frozen pre-logits features (SPEC section 4)."""

from __future__ import annotations

import math

from vitkit.cli.main import print_json
from vitkit.cli.options import add_data_flags, data_spec
from vitkit.errors import ConfigError


def add_feature_options(p) -> None:
    """Options shared by the commands that evaluate frozen features."""
    p.add_argument("checkpoint", help="model file (any format vitkit.load reads)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default $VITKIT_CACHE_DIR or ~/.cache/vitkit/features)")
    p.add_argument("--no-cache", action="store_true", help="always recompute the features")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_data_flags(p)


def features_from_args(args, splits):
    """(DataSplits, {split: (features, labels)}) for the command's checkpoint and data."""
    from vitkit.data import load_data
    from vitkit.evaluate.features import split_features

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    args.data = data_spec(args)
    data = load_data(args.data, quiet=args.quiet)
    feats = split_features(args.checkpoint, data, splits, cache_dir=args.cache_dir,
                           use_cache=not args.no_cache, batch_size=args.batch_size,
                           progress=not args.quiet)
    return data, feats


def _shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--shots takes comma-separated integers like 1,5,10,25, got {text!r}") from None
    if not shots or min(shots) < 1:
        raise ConfigError(f"--shots needs positive shot counts, got {text!r}")
    return shots


def register(sub, parent) -> None:
    p = sub.add_parser("fewshot", parents=[parent], help="few-shot linear evaluation of frozen features",
                       description="Few-shot linear evaluation (paper section 4): for each shot count k, draw "
                                   "k training images per class, fit regularised least squares from their "
                                   "frozen pre-logits features to {-1,+1} targets in closed form (lambda "
                                   "chosen on the training shots), report test accuracy; mean and spread "
                                   "over --repeats draws.")
    add_feature_options(p)
    p.add_argument("--shots", default="1,5,10,25", help="comma-separated shots per class (default 1,5,10,25)")
    p.add_argument("--repeats", type=int, default=5, help="random draws of the shots (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vitkit.evaluate.fewshot import fewshot_evaluate

    shots = _shots(args.shots)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
    data, feats = features_from_args(args, ("train", "test"))
    (train_x, train_y), (test_x, test_y) = feats["train"], feats["test"]
    result = fewshot_evaluate(train_x, train_y, test_x, test_y, shots=shots, repeats=args.repeats,
                              seed=args.seed, num_classes=data.num_classes)
    result.update(checkpoint=str(args.checkpoint), data=args.data.source, feature_dim=int(train_x.shape[1]))
    if args.json:
        print_json(result)
        return 0
    print(f"few-shot linear evaluation of {args.checkpoint} on {args.data.source}: {data.num_classes} classes, "
          f"{result['num_test']} test images, {args.repeats} draws")
    print(f"{'shots':>6}{'accuracy':>11}{'spread':>9}   lambdas")
    for k, r in result["shots"].items():
        lambdas = ", ".join(f"2^{round(math.log2(v))}" for v in r["lambdas"])
        print(f"{k:>6}{100 * r['mean']:>10.2f}%{100 * r['std']:>8.2f}   {lambdas}")
    return 0
