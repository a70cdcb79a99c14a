"""`vitkit probe`: linear probe (multinomial logistic regression) on frozen features."""

from __future__ import annotations

from vitkit.cli.fewshot_cmd import add_feature_options, features_from_args
from vitkit.cli.main import print_json


def register(sub, parent) -> None:
    p = sub.add_parser("probe", parents=[parent], help="linear probe on frozen features",
                       description="Linear probe: multinomial logistic regression on the frozen pre-logits "
                                   "features of the whole training split (full-batch L-BFGS), weight decay "
                                   "chosen on the validation split; reports validation and test accuracy.")
    add_feature_options(p)
    p.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations per weight decay (default 300)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vitkit.evaluate.probe import linear_probe

    data, feats = features_from_args(args, ("train", "val", "test"))
    result = linear_probe(*feats["train"], *feats["val"], *feats["test"], num_classes=data.num_classes,
                          max_iter=args.max_iter)
    result.update(checkpoint=str(args.checkpoint), data=args.data.source,
                  num_train=len(data.train), num_val=len(data.val), num_test=len(data.test))
    if args.json:
        print_json(result)
        return 0
    print(f"linear probe of {args.checkpoint} on {args.data.source}: {data.num_classes} classes, "
          f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test images")
    print(f"weight decay {result['weight_decay']:g} (best of "
          f"{len(result['val_accuracy_per_weight_decay'])} on validation)")
    print(f"validation accuracy {100 * result['val_accuracy']:.2f}%")
    print(f"test accuracy       {100 * result['test_accuracy']:.2f}%")
    return 0
