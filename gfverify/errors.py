"""User-facing errors: each carries a one-line message; the CLI prints it and exits non-zero."""


class GfverifyError(Exception):
    """Base class for errors caused by user input (configs, models, data, checkpoints)."""


class ConfigError(GfverifyError, ValueError):
    """A config key or value is wrong (unknown key, bad type, out-of-range value)."""


class ModelError(GfverifyError, ValueError):
    """A model cannot be built, imported, scored or pruned as asked."""


class DataError(GfverifyError):
    """A dataset is missing, malformed or inconsistent with the model."""


class CheckpointError(GfverifyError):
    """A checkpoint is corrupt, truncated or does not match the config."""


class NonFiniteLossError(GfverifyError, FloatingPointError):
    """The loss became NaN or infinite."""
