"""Command-line flags generated from config dataclasses, so every config field can be set, and
the parser class of `vitkit` and every sub-command.

Flags default to "not given" (argparse.SUPPRESS): only what the user types overrides the
config file or the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing


class CommandParser(argparse.ArgumentParser):
    """argparse, with mistakes reported as vitkit reports every user error: one line naming the
    problem and the way out, exit code 2. A sub-command reports its own unknown flags (plain
    argparse hands them up to `vitkit`, which prints the top-level usage), with the closest
    known flag; nobody gets the whole usage printed before the error, only a pointer to --help.
    Sub-parsers are of this class too (argparse makes them of their parent's class)."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestions(extras)}")
        return namespace, extras

    def _flags(self) -> list[str]:
        return [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]

    def _suggestions(self, args: list[str]) -> str:
        hints = []
        for arg in args:
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, self._flags(), n=1, cutoff=0.6) if name.startswith("--") else []
            if close:
                hints.append(f"{name}: did you mean {close[0]}?")
        return f" ({'; '.join(hints)})" if hints else ""

    def _unknown_flags(self) -> list[str]:
        """The `--flags` given that are neither a flag of this command nor a unique abbreviation of one."""
        given = getattr(self, "_given", [])
        given = given[:given.index("--")] if "--" in given else given
        flags = self._flags()
        return [arg for arg in given if arg.startswith("--") and len(
            [flag for flag in flags if flag.startswith(arg.split("=", 1)[0])]) != 1
            and arg.split("=", 1)[0] not in flags]

    def error(self, message: str) -> typing.NoReturn:
        # Another mistake (a missing argument) stops argparse before it reaches an unknown flag,
        # which is often its cause (a misspelt --out): both are named.
        unknown = self._unknown_flags() if self._subparsers is None else []
        if unknown and not message.startswith("unrecognized arguments"):
            message += f"; unrecognized arguments: {' '.join(unknown)}{self._suggestions(unknown)}"
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _base_type(hint):
    """(element type, is_sequence) of a field's type hint, Optional stripped."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (args[0] if args else str), True
    if origin is dict:  # dict[str, Any]: no flag (set in a config file)
        return dict, False
    return hint, False


# "(default: picked from the data)", "(default runs/<timestamp>)", "; default: best with ...", "unset: 3"
_SAYS_DEFAULT = re.compile(r"\(default\b|\bdefault:|\bunset\b", re.IGNORECASE)


def _shown_default(value) -> str:
    """A default as the user would type it on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(map(_shown_default, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def flag_help(text: str, default, show_default: bool = True) -> str | None:
    """Help text with its default appended once: not where the text already says what happens by
    default, not for None (a default the text explains: "picked from the data", "unset: ..."),
    not for an empty sequence, and not where the command's real default is not the field's
    (`show_default=False`: options picked from the data or a preset)."""
    says_default = _SAYS_DEFAULT.search(text) is not None
    if not show_default or says_default or default is None or default == ():
        return text or None
    shown = f"default: {_shown_default(default)}"
    return f"{text} ({shown})" if text else shown


def add_dataclass_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *,
                        dest_prefix: str, skip: tuple[str, ...] = (), help_text: dict | None = None,
                        show_defaults: bool = True) -> list[str]:
    """Add `--field-name` for each field of `cls`; values land in `args.<dest_prefix><field>`.
    `show_defaults=False` where the command's defaults are not the dataclass's (picked from the
    data, or a preset's). Returns the field names added."""
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
        text = flag_help((help_text or {}).get(f.name, ""), default, show_defaults)
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


# How a release resizes its images is read from its files, not set by hand.
MODEL_FLAG_SKIP = ("image_size", "class_names", "name", "extra", "interpolation", "crop_pct", "crop_mode")
MODEL_HELP = {
    "patch_size": "side of the square patches, in pixels",
    "in_chans": "input channels: 1 (grey) or 3 (RGB)",
    "num_classes": "classes of the head",
    "width": "token width D",
    "depth": "encoder blocks L",
    "num_heads": "attention heads per block (the width must divide by it)",
    "mlp_dim": "hidden width of each block's MLP",
    "pool": "token (class token), gap (mean of the patch tokens) or map (attention pooling)",
    "posemb": "position embeddings: none, learned1d, learned2d, sincos2d or relative",
    "posemb_where": "stem (added once), every_layer, or every_layer_shared",
    "posemb_class_slot": "the class token gets a position embedding too (Google's layout)",
    "norm_after_pool": "LayerNorm on the pooled vector instead of on the tokens (timm's fc_norm)",
    "representation_size": "width of a pre-logits layer (Linear + tanh) before the head; unset: none",
    "distill_token": "a DeiT distillation token and its head",
    "dropout": "dropout after the dense layers",
    "attn_dropout": "dropout on the attention weights",
    "drop_path": "stochastic depth rate of the last block (linear in depth)",
    "act": "MLP activation: gelu (exact) or gelu_tanh",
    "norm_eps": "LayerNorm epsilon",
    "qkv_bias": "biases on the query, key and value projections",
    "stem": "patch (linear patch embedding) or resnet (hybrid: patches of a ResNet's feature map)",
    "resnet_layers": "hybrid stem: units per ResNet stage",
    "resnet_width": "hybrid stem: width of the ResNet root",
    "dynamic_image_size": "resample the position embeddings on the fly for other input sizes",
    "input_mean": "normalisation of [0, 1] pixels: (x - mean) / std, one value or one per channel",
    "input_std": "normalisation of [0, 1] pixels: (x - mean) / std, one value or one per channel",
}

MAX_IMAGE_PIXELS_HELP = ("refuse image files with more pixels (decompression bombs); default "
                         "$VITKIT_MAX_IMAGE_PIXELS or 89478485, 0 for no limit")


def add_image_limit_flag(parser: argparse.ArgumentParser) -> None:
    """`--max-image-pixels N` for a command that reads image files; lands in `max_image_pixels`."""
    parser.add_argument("--max-image-pixels", type=int, default=None, metavar="N", help=MAX_IMAGE_PIXELS_HELP)


def add_model_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """`--width`, `--pool`, ... : every ModelConfig field a user sets (but those in `skip`),
    landing in `model_*`."""
    from vitkit.models.config import ModelConfig

    add_dataclass_flags(parser.add_argument_group("model options (override the picked or preset model)"),
                        ModelConfig, dest_prefix="model_", skip=(*MODEL_FLAG_SKIP, *skip), help_text=MODEL_HELP,
                        show_defaults=False)


DATA_HELP = {
    "source": "digits (bundled), an image folder (one sub-folder per class, or train/ val/ test/ holding "
              "them), a CIFAR-10/100 python folder, an .npz with x and y, or a folder written by "
              "`vitkit shard` (whose split is the one `vitkit shard` made)",
    "split_seed": "seed of the train/val/test split",
    "val_fraction": "validation share of the images, when the data has no val split",
    "test_fraction": "test share of the images, when the data has no test split",
    "skip_bad_images": "leave out unreadable images (counted in a warning) instead of stopping",
    "max_image_pixels": MAX_IMAGE_PIXELS_HELP,
}


def add_data_flags(parser: argparse.ArgumentParser, *, source: bool = True) -> None:
    """The dataset flags of every command that reads one, landing in `data_*`: `--data` (the
    source; left out where a command takes it as its positional argument), `--split-seed`,
    `--val-fraction`, `--test-fraction`, `--skip-bad-images`, `--max-image-pixels`."""
    from vitkit.data.spec import DataSpec

    group = parser.add_argument_group("data")
    if source:
        group.add_argument("--data", dest="data_source", default=argparse.SUPPRESS, metavar="SPEC",
                           help=DATA_HELP["source"] + " (default: digits)")
    add_dataclass_flags(group, DataSpec, dest_prefix="data_", skip=("source",), help_text=DATA_HELP)


def data_spec(args: argparse.Namespace, base=None, **fixed):
    """The DataSpec of the flags given, on top of `base` (a spec or source; default: DataSpec())."""
    from vitkit.data.spec import DataSpec

    return DataSpec.of(base if base is not None else DataSpec(), **{**collect(args, "data_"), **fixed})
