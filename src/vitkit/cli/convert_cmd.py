"""`vitkit convert SRC DST --to vitkit|hf|timm|npz|onnx`: read any supported checkpoint, write it
in another format, and report the largest relative logit difference between the two."""

from __future__ import annotations

from vitkit.cli.main import print_json
from vitkit.formats.convert import TARGETS, convert


def register(sub, parent) -> None:
    p = sub.add_parser("convert", parents=[parent], help="convert a checkpoint to another format",
                       description="Read a checkpoint (vitkit, Google/big_vision .npz, timm .pth/.safetensors, "
                                   "Hugging Face directory), write it in another format, and check the "
                                   "written file against the source on a random batch.")
    p.add_argument("src", help="checkpoint file or Hugging Face directory")
    p.add_argument("dst", help="output file (a directory for --to hf)")
    p.add_argument("--to", required=True, choices=TARGETS, help="target format")
    p.add_argument("--num-heads", type=int, help="attention heads, where the file cannot say (fused qkv)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="PX",
                   help="resample position embeddings for this input size (H or H W)")
    p.add_argument("--source-image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="the checkpoint's own input size, for a non-square grid")
    p.add_argument("--patch-size", type=int, help="resize the patch kernel (FlexiViT pseudo-inverse)")
    p.add_argument("--num-classes", type=int, help="replace the head with a zero-initialised one")
    p.add_argument("--act", choices=("gelu", "gelu_tanh"), help="override the GELU form")
    p.add_argument("--no-strict", action="store_true", help="skip tensors that do not fit (listed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = {}
    for name in ("num_heads", "patch_size", "num_classes", "act"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.image_size:
        overrides["image_size"] = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size[:2])
    if args.source_image_size:
        overrides["source_image_size"] = tuple(args.source_image_size)
    report = convert(args.src, args.dst, args.to, strict=not args.no_strict, **overrides)
    if args.json:
        print_json(report)
        return 0
    print(f"{report['src']} ({report['from']}) -> {report['dst']} ({report['to']})")
    print(f"max relative logit difference {report['max_rel_diff']:.3g}, checked with {report['checked_with']}")
    for note in report["notes"]:
        print(f"note: {note}")
    return 0
