"""`vitkit eval`: accuracy of a checkpoint on a split of a dataset (vitkit.evaluate.splits)."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.cli.options import add_data_flags, data_spec
from vitkit.device import pick_device
from vitkit.errors import printable
from vitkit.evaluate.splits import SPLITS, evaluate_split
from vitkit.formats import load
from vitkit.objectives.adversarial import ATTACKS
from vitkit.objectives.distill import HEADS


def register(sub, parent) -> None:
    p = sub.add_parser("eval", parents=[parent], help="evaluate a checkpoint",
                       description="Top-1 and top-5 accuracy and the confusion matrix of a checkpoint "
                                   "on a dataset split; images are resized to the model's input. Give the "
                                   "data flags of the training run to evaluate on its split.")
    p.add_argument("checkpoint", help="model file (any format vitkit loads)")
    add_data_flags(p)
    p.add_argument("--split", default="test", choices=SPLITS, help="split (default test)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
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
    model = load(args.checkpoint).to(pick_device(args.device))
    spec = data_spec(args)
    result = evaluate_split(model, spec, args.split, head=args.head, batch_size=args.batch_size,
                            workers=args.workers, attack=args.attack, eps=args.eps, steps=args.steps,
                            step_size=args.step_size, random_start=args.random_start, quiet=args.quiet)
    result = {"checkpoint": args.checkpoint, "data": spec.source, "split": args.split, "head": args.head, **result}
    if args.json:
        print_json(result)
        return 0
    print(f"{args.split}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  n {result['n']}")
    for r in result.get("adversarial", []):
        print(f"  under {r['attack']} eps {r['eps']:g}: top-1 {r['top1']:.4f}  "
              f"(largest perturbation {r['max_perturbation']:.4g})")
    print("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(result["class_names"], result["confusion"]):
        print(f"  {printable(name)[:12]:>12} " + " ".join(f"{v:4d}" for v in row))
    return 0
