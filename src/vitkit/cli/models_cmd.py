"""`vitkit models`: the presets with parameter counts and the compute of one forward pass."""

from __future__ import annotations


from vitkit.cli.main import print_json
from vitkit.models import forward_flops, list_models, parameters_of
from vitkit.models.presets import preset_config


def register(sub, parent) -> None:
    p = sub.add_parser("models", parents=[parent], help="list model presets",
                       description="List the model presets with parameters, GFLOPs (a multiply-add "
                                   "counted as two FLOPs) and GMACs (multiply-adds, as most papers' "
                                   "tables count), for one image.")
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the head (default 1000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--pretrained", action="store_true",
                   help="list the released checkpoints `vitkit.load(NAME)` fetches instead")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.pretrained:
        return run_pretrained(args)
    rows = []
    for name in list_models():
        cfg = preset_config(name, image_size=args.image_size, num_classes=args.num_classes)
        flops = forward_flops(cfg)
        rows.append(dict(name=name, params=parameters_of(cfg), gflops=flops / 1e9, gmacs=flops / 2e9,
                         depth=cfg.depth, width=cfg.width, heads=cfg.num_heads, patch=cfg.patch_size,
                         stem=cfg.stem))
    if args.json:
        print_json({"image_size": args.image_size, "num_classes": args.num_classes, "models": rows})
        return 0
    print(f"{'model':<13}{'layers':>7}{'width':>7}{'heads':>6}{'params':>14}{'GFLOPs':>9}{'GMACs':>8}   "
          f"(image {args.image_size}, {args.num_classes} classes)")
    for r in rows:
        print(f"{r['name']:<13}{r['depth']:>7}{r['width']:>7}{r['heads']:>6}{r['params']:>14,}{r['gflops']:>9.2f}"
              f"{r['gmacs']:>8.2f}")
    print("GFLOPs count a multiply-add as two FLOPs; GMACs count it once, as most published tables do "
          "(ViT-B/16 at 224: 17.6 GMACs, 35.1 GFLOPs).")
    return 0


def run_pretrained(args) -> int:
    from vitkit.pretrained import RELEASES

    rows = [release.row() for release in RELEASES.values()]
    if args.json:
        print_json({"pretrained": rows})
        return 0
    table = [(r["name"], _builds(r["preset"], r["options"]),
              str(r["image_size"]), "" if r["num_classes"] is None else str(r["num_classes"]), r["params"] or "",
              r["licence"], r["data"], r["source"]) for r in rows]
    header = ("name", "builds", "res", "classes", "params", "licence", "data", "source")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        print("  ".join(cell.rjust(w) if i in (2, 3, 4) else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))) + "  " + row[-1])
    print("`vitkit.load(NAME)` (or NAME wherever a checkpoint is taken) downloads one once; --json adds "
          "each entry's preprocessing and the documents its facts come from (docs/formats.md).")
    return 0


def _builds(preset: str, options: dict) -> str:
    """The preset and the options that change what it builds, briefly (--json has them all)."""
    shown = {k: v for k, v in options.items() if k != "posemb_class_slot"
             and not (k == "patch_size" and options.get("stem") == "resnet")}
    return " ".join([preset, *(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                               for k, v in shown.items())])
