"""User-facing errors: one clear line naming the problem and the way out."""


class VitkitError(Exception):
    """A problem with the user's input. The CLI prints it as one line and exits 2."""


class ConfigError(VitkitError):
    """A configuration value that makes no sense."""


class DataError(VitkitError):
    """A dataset that cannot be read."""


class CheckpointError(VitkitError):
    """A checkpoint that cannot be read or does not fit the model."""
