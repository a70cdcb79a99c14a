"""Command-line flags generated from config dataclasses, so every config field can be set.

Flags default to "not given" (argparse.SUPPRESS): only what the user types overrides the
config file or the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _base_type(hint):
    """(element type, is_sequence) of a field's type hint, Optional stripped."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (args[0] if args else str), True
    return hint, False


def add_dataclass_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *,
                        dest_prefix: str, skip: tuple[str, ...] = (), help_text: dict | None = None) -> list[str]:
    """Add `--field-name` for each field of `cls`; values land in `args.<dest_prefix><field>`.
    Returns the field names added."""
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, sequence = _base_type(hints[f.name])
        if kind is dict:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        text = (help_text or {}).get(f.name, "")
        text = f"{text} (default: {default})" if text else f"default: {default}"
        kwargs = dict(dest=dest_prefix + f.name, default=argparse.SUPPRESS, help=text)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif sequence:
            parser.add_argument(flag, nargs="+", type=kind, metavar=kind.__name__.upper(), **kwargs)
        else:
            parser.add_argument(flag, type=kind, metavar=kind.__name__.upper(), **kwargs)
        added.append(f.name)
    return added


def collect(args: argparse.Namespace, dest_prefix: str) -> dict:
    """The flags the user gave for one dataclass, keyed by field name."""
    return {k[len(dest_prefix):]: v for k, v in vars(args).items() if k.startswith(dest_prefix)}


MODEL_FLAG_SKIP = ("image_size", "class_names", "name", "extra")

MAX_IMAGE_PIXELS_HELP = ("refuse image files with more pixels (decompression bombs); default "
                         "$VITKIT_MAX_IMAGE_PIXELS or 89478485, 0 for no limit")


def add_image_limit_flag(parser: argparse.ArgumentParser) -> None:
    """`--max-image-pixels N` for a command that reads image files; lands in `max_image_pixels`."""
    parser.add_argument("--max-image-pixels", type=int, default=None, metavar="N", help=MAX_IMAGE_PIXELS_HELP)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """`--width`, `--pool`, ... : every ModelConfig field a user sets, landing in `model_*`."""
    from vitkit.models.config import ModelConfig

    add_dataclass_flags(parser.add_argument_group("model options (override the picked or preset model)"),
                        ModelConfig, dest_prefix="model_", skip=MODEL_FLAG_SKIP)
