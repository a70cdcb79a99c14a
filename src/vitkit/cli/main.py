"""`vitkit` command: argparse front-end; each sub-command lives in its own module.

A command module defines `register(subparsers)`, which adds its parser and sets
`func=run`; `run(args)` returns the exit code. User errors raise VitkitError: printed as one
line, exit code 2, traceback only with --debug. A run stopped by a signal after saving a
checkpoint (StoppedBySignal) prints its line and exits 128 + the signal number, as a process
ended by that signal would: a scheduler sees it did not finish (docs/reliability.md). A reader
that closes the pipe early (`vitkit models | head`) ends the command quietly with the status a
shell gives a process killed by SIGPIPE (141).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys

from vitkit.allocator import keep_freed_memory
from vitkit.cli.options import CommandParser
from vitkit.errors import StoppedBySignal, VitkitError
from vitkit.progress import silenced

COMMANDS = ["train", "eval", "predict", "models", "convert", "fewshot", "probe", "analyze",
            "experiment", "bench", "pretrain", "shard", "explore"]


def common_flags() -> argparse.ArgumentParser:
    """Flags every sub-command accepts."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parent.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="vitkit", description="Vision Transformers: train, evaluate, analyse, convert.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parent = common_flags()
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vitkit.cli.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name == f"vitkit.cli.{name}_cmd":
                continue
            raise
        module.register(sub, parent)
    return parser


def _version() -> str:
    from vitkit import __version__

    return f"vitkit {__version__}"


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


def _which_process() -> str:
    """Under torchrun each process that meets an error prints it: " (rank N)" says which one."""
    return f" (rank {os.environ['RANK']})" if "RANK" in os.environ and "WORLD_SIZE" in os.environ else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    keep_freed_memory()
    try:
        with silenced() if getattr(args, "quiet", False) else contextlib.nullcontext():
            status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return status
    except BrokenPipeError:
        # Nobody reads the rest. Point stdout at /dev/null so that the interpreter's own flush at
        # exit does not fail again, and end as `head`'s other writers do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + getattr(signal, "SIGPIPE", 13)
    except StoppedBySignal as e:
        print(f"vitkit {args.command}{_which_process()}: {e}", file=sys.stderr)
        return 128 + e.signal_number
    except VitkitError as e:
        if getattr(args, "debug", False):
            raise
        print(f"vitkit {args.command}: error{_which_process()}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
