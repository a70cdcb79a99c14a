"""Progress of long work, the same way for every job: a bar on a terminal, plain lines otherwise.

On a terminal (stderr is a tty) a tqdm bar, sized from the terminal; a terminal that reports
no width (a serial console, some containers and CI runners: `stty size` says 0 0) gets an
80-column bar, where tqdm's own sizing would trim the bar to nothing. Anywhere else (a log
file, a pipe) no bar: one line per finished phase ("checking images: 1,797 img in 0.4 s"),
one line per `milestone` (an epoch), and a line a minute while one phase runs longer.

    with Progress(len(paths), "checking images") as bar:    # unit "img": the bar shows img/s
        for path in paths:
            ...
            bar.update(1)
    for batch in track(batches, "features", unit="batch"):  # the same, around an iterable
        ...
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

FALLBACK_COLUMNS = 80
# Off a terminal, a phase that runs longer than this says how far it is, once per interval.
LOG_INTERVAL_S = 60.0

T = TypeVar("T")
_silenced = False


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No Progress shows anything within it, whatever its callers pass: `vitkit --quiet` runs
    its command in it, so that quiet reaches progress made deep inside the library."""
    global _silenced
    before, _silenced = _silenced, True
    try:
        yield
    finally:
        _silenced = before


def is_silenced() -> bool:
    """Whether a `silenced` block is running: for bars drawn by other libraries (the Hub's)."""
    return _silenced


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def terminal_shape(stream: TextIO) -> tuple[int, int]:
    """(columns, rows) usable by a bar: the terminal's, or 80 x 24 where it reports none."""
    try:
        columns, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        columns, rows = 0, 0
    return (columns or FALLBACK_COLUMNS) - 1, (rows or 24) - 1


class Progress:
    """Counts `total` units of work (None: unknown) under `description`. `quiet` shows nothing.

    update(n): n more units done. set_postfix(**values): shown at the end of the bar (and of
    the phase's closing line off a terminal). milestone(text): a finished unit of a long job (an
    epoch): on a terminal the bar shows it, elsewhere it is printed as a line. write(text): a
    line in both cases (above the bar on a terminal). close() (or leaving the `with`): the bar
    goes, or off a terminal the phase's line is printed."""

    def __init__(self, total: int | None, description: str, unit: str = "img", *, quiet: bool = False,
                 initial: int = 0, stream: TextIO | None = None):
        self.description, self.unit, self.quiet, self.total = description, unit, quiet or _silenced, total
        self.stream = sys.stderr if stream is None else stream
        self.count = initial
        self._initial, self._postfix, self._closed = initial, "", False
        self._start = self._last_line = time.perf_counter()
        self._bar = None
        if not self.quiet and is_terminal(self.stream):
            columns, rows = terminal_shape(self.stream)
            self._bar = tqdm(total=total, initial=initial, desc=description, unit=unit, file=self.stream,
                             ncols=columns, nrows=rows, leave=False, unit_scale=False)
            # tqdm re-reads the size at each refresh when given a function for it; ours never
            # returns a zero or negative width, so resizing works and the bar never vanishes.
            self._bar.dynamic_ncols = terminal_shape

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.quiet and time.perf_counter() - self._last_line >= LOG_INTERVAL_S:
            self._print(self._status(done=False))

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{key} {value}" for key, value in values.items())
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix)

    def milestone(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        elif not self.quiet:
            self._print(text)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        elif not self.quiet:
            self._print(text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.quiet and self.count > self._initial:
            self._print(self._status(done=True))

    def _status(self, done: bool) -> str:
        seconds = time.perf_counter() - self._start
        work = self.count - self._initial
        of = f"/{self.total:,}" if self.total is not None and not done else ""
        rate = f" ({_rate(work / seconds)} {self.unit}/s)" if seconds > 0 and work else ""
        text = f"{self.description}: {self.count:,}{of} {self.unit} in {seconds:.1f} s{rate}"
        return text + (f"; {self._postfix}" if self._postfix else "")

    def _print(self, text: str) -> None:
        self._last_line = time.perf_counter()
        print(text, file=self.stream, flush=True)


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"


def track(items: Iterable[T], description: str, unit: str = "img", *, quiet: bool = False,
          total: int | None = None) -> Iterator[T]:
    """`items`, one at a time, counted by a Progress (total: len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, description, unit, quiet=quiet) as bar:
        for item in items:
            yield item
            bar.update(1)
