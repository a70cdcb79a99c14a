"""`vitkit shard`: write a dataset as WebDataset-style tar shards for streaming."""

from __future__ import annotations

import sys

from vitkit.cli.main import print_json
from vitkit.cli.options import add_data_flags, data_spec
from vitkit.data.shard_writer import DEFAULT_SHARD_SIZE, index_shards, shard_data
from vitkit.errors import ConfigError


def register(sub, parent) -> None:
    p = sub.add_parser("shard", parents=[parent], help="write a dataset as tar shards for streaming",
                       description="Write an image folder (one sub-folder per class, or train/ val/ test/ "
                                   "holding them; also digits, CIFAR or .npz) as tar shards plus dataset.json, "
                                   "which `vitkit train --data DIR` streams instead of reading into memory. "
                                   "Every image is checked; each stores its file's own bytes.")
    p.add_argument("source", metavar="FOLDER", help="image folder (or digits, a CIFAR folder, an .npz)")
    p.add_argument("--out", help="folder for the shards and dataset.json (empty or new)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"images per shard (default {DEFAULT_SHARD_SIZE})")
    add_data_flags(p, source=False)
    p.add_argument("--overwrite", action="store_true", help="replace the shards of a non-empty --out")
    p.add_argument("--json", action="store_true", help="print dataset.json as one JSON object")
    foreign = p.add_argument_group("shards written by another tool")
    foreign.add_argument("--index", action="store_true",
                         help="FOLDER holds WebDataset tar shards (train-*.tar, val-*.tar, test-*.tar; each sample "
                              "an image and a .cls label): write its dataset.json so vitkit can stream it")
    foreign.add_argument("--class-names", help="with --index: comma-separated class names (default 0..largest label)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.index:
        if args.out:
            raise ConfigError("--index writes dataset.json into FOLDER itself; drop --out")
        names = [name.strip() for name in args.class_names.split(",")] if args.class_names else None
        index = index_shards(args.source, names, max_image_pixels=data_spec(args, args.source).max_image_pixels,
                             quiet=args.quiet)
        return _report(index, args.source, args.json)
    if args.class_names:
        raise ConfigError("--class-names goes with --index; an image folder names its classes by its sub-folders")
    if not args.out:
        raise ConfigError("give --out DIR, the folder to write the shards into")
    index = shard_data(data_spec(args, args.source), args.out, shard_size=args.shard_size,
                       overwrite=args.overwrite, quiet=args.quiet)
    return _report(index, args.out, args.json)


def _report(index: dict, out: str, as_json: bool) -> int:
    for note in index["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    if as_json:
        print_json(index)
        return 0
    splits = index["splits"]
    parts = ", ".join(f"{name} {split['samples']} ({len(split['shards'])} shard{'s' * (len(split['shards']) != 1)})"
                      for name, split in splits.items())
    total = sum(split["samples"] for split in splits.values())
    height, width = index["image_size"]
    print(f"{total} images of {len(index['class_names'])} classes in {out}: {parts}; most common size "
          f"{height}x{width}, {'grey' if index['channels'] == 1 else 'RGB'}")
    print(f"train on them with: vitkit train --data {out}")
    return 0


__all__ = ["register", "run"]
