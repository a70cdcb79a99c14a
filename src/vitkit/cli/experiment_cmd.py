"""`vitkit experiment NAME`: the paper's comparisons on the user's data (SPEC section 5)."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.cli.options import add_data_flags, data_spec
from vitkit.errors import ConfigError

NAMES = "posemb, pooling, depth, arch, datasize"


def register(sub, parent) -> None:
    p = sub.add_parser("experiment", parents=[parent], help="reproduce one of the paper's comparisons on your data",
                       description="Reproduce one of the paper's comparisons on your data: posemb (position "
                                   "embeddings, Table 8), pooling (class token vs GAP at their own learning "
                                   "rates), depth (shallow vs deep at similar parameters), arch (ViT vs ResNet "
                                   "vs hybrid at matched training compute), datasize (accuracy against training-"
                                   "set size). Each configuration x seed is a normal training run in "
                                   "OUT/runs/; finished runs are reused and interrupted ones resumed. Writes "
                                   "OUT/results.md, OUT/results.json and plots.")
    p.add_argument("name", metavar="NAME", help=NAMES)
    p.add_argument("--out", required=True, metavar="DIR", help="experiment folder")
    p.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="epochs per run (default 10; arch and datasize derive theirs from it)")
    p.add_argument("--seeds", type=int, default=None, metavar="S",
                   help="training seeds per configuration (default: 3 for training splits up to 10,000 images, "
                        "where runs are short and vary from seed to seed, else 1)")
    p.add_argument("--shots", type=int, default=5, metavar="K",
                   help="shots per class of the few-shot score (default 5)")
    p.add_argument("--lrs", metavar="LIST",
                   help="pooling: comma-separated learning rates (default: 1/3, 1 and 3 x the picked one)")
    p.add_argument("--depths", metavar="LIST", help="depth: comma-separated depths (default 2, the base depth, 8)")
    p.add_argument("--fractions", metavar="LIST",
                   help="datasize: comma-separated training fractions (default 0.1,0.25,0.5,1)")
    model = p.add_argument_group("base model and recipe (default: what `vitkit train` picks for the data)")
    for flag, kind in (("width", int), ("depth", int), ("num-heads", int), ("mlp-dim", int), ("patch-size", int)):
        model.add_argument(f"--{flag}", type=kind, metavar="N", dest=f"model_{flag.replace('-', '_')}")
    model.add_argument("--batch-size", type=int, metavar="N")
    model.add_argument("--lr", type=float, metavar="LR",
                       help="peak learning rate of every run (pooling sweeps around it)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_data_flags(p)
    p.add_argument("--json", action="store_true", help="print results.json's content as one JSON object")
    p.set_defaults(func=run)


def settings_from_args(args):
    from vitkit.experiments import Settings
    from vitkit.experiments.runner import parse_numbers

    model = {k[len("model_"):]: v for k, v in vars(args).items() if k.startswith("model_") and v is not None}
    train = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr), ("device", args.device))
             if v is not None}
    if args.shots < 1:
        raise ConfigError(f"--shots must be positive, got {args.shots}")
    return Settings(data=data_spec(args), out=args.out, epochs=args.epochs, seeds=args.seeds, shots=args.shots,
                    model_options=model, train_options=train,
                    lrs=tuple(parse_numbers(args.lrs, float, "learning rate")) if args.lrs else None,
                    depths=tuple(parse_numbers(args.depths, int, "depth")) if args.depths else None,
                    fractions=tuple(parse_numbers(args.fractions, float, "fraction")) if args.fractions else None,
                    quiet=args.quiet)


def run(args) -> int:
    from vitkit.experiments import get_experiment, run_experiment

    experiment = get_experiment(args.name)
    result = run_experiment(experiment, settings_from_args(args))
    if args.json:
        print_json(result)
    else:
        print(f"results: {args.out.rstrip('/')}/results.md")
    return 0
