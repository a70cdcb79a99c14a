"""User-facing errors: one clear line naming the problem and the way out."""


# Every character str.splitlines breaks at (and the other C0 controls), written as an escape.
_ESCAPED = {code: repr(chr(code))[1:-1] for code in [*range(32), 0x7F, 0x85, 0x2028, 0x2029]}


class VitkitError(Exception):
    """A problem with the user's input. The CLI prints it as one line and exits 2."""

    def __str__(self) -> str:
        # Names read from a damaged file (a tensor, a zip member, an option) can hold line breaks.
        return super().__str__().translate(_ESCAPED)


class ConfigError(VitkitError):
    """A configuration value that makes no sense."""


class DataError(VitkitError):
    """A dataset that cannot be read."""


class CheckpointError(VitkitError):
    """A checkpoint that cannot be read or does not fit the model."""


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
