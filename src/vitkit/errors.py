"""User-facing errors: one clear line naming the problem and the way out."""


# Every character str.splitlines breaks at (and the other C0 controls), written as an escape.
_ESCAPED = {code: repr(chr(code))[1:-1] for code in [*range(32), 0x7F, 0x85, 0x2028, 0x2029]}


def printable(name: str) -> str:
    """A name read from the disk or a file (a class folder, a label in a checkpoint) as it can
    be shown on one line of any terminal, plot or JSON reader: line breaks and other controls
    escaped, and the bytes of a file name that is not UTF-8 (which Python keeps as lone
    surrogates) written as \\xNN. Plain names come back unchanged."""
    if name.isprintable():
        return name
    return "".join(_printable_char(c) for c in name)


def _printable_char(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape of the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return _ESCAPED.get(code, c)


class VitkitError(Exception):
    """A problem with the user's input. The CLI prints it as one line and exits 2."""

    def __str__(self) -> str:
        # Names read from a damaged file (a tensor, a zip member, an option) can hold line breaks.
        return printable(super().__str__())


class ConfigError(VitkitError):
    """A configuration value that makes no sense."""


class ConfigValueError(ConfigError, ValueError):
    """An argument of vitkit's Python API with a value it cannot take (a size of 0, a model
    too large for its checkpoint): also a ValueError, as Python's own functions raise."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument of vitkit's Python API of the wrong type (a string for a width, integer
    pixels for a model that takes floats): also a TypeError, as Python's own functions raise."""


class DataError(VitkitError):
    """A dataset that cannot be read."""


class CheckpointError(VitkitError):
    """A checkpoint that cannot be read or does not fit the model."""


class DownloadError(VitkitError):
    """Weights could not be fetched from the Hub or a URL (no network, no such repo or file, a
    server error, a corrupt download, offline with an empty cache); nothing partial is kept."""


class SaveError(VitkitError):
    """A file of a run could not be written (disk full, no permission); what was saved before
    is intact."""


class TrainingDiverged(VitkitError):
    """The training loss or the weights became NaN or infinite."""


class StoppedBySignal(VitkitError):
    """The run was asked to stop (SIGTERM, Ctrl-C), wrote a checkpoint and can be continued.

    Not a mistake of the user's: the CLI prints the message without "error" and exits with
    128 + the signal number, the code of a process ended by that signal."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
