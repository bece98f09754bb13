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


#: Advice written in library terms, and how each command line spells it. A message keeps the
#: library spelling; :func:`cli_advice` rewrites it for the command that printed it, using the
#: first spelling whose flag that command accepts, else the config-file spelling (last).
ADVICE: tuple[tuple[str, tuple[tuple[str | None, str], ...]], ...] = (
    ("run with resume=False", (("--no-resume", "rerun with --no-resume"),)),
    (
        "pass --download (DataSpec.download=True)",
        (
            ("--download", "pass --download"),
            ("--set", "pass --set data.download=true"),
            (None, "set data.download = true in the config"),
        ),
    ),
    (
        "with --download",
        (
            ("--download", "with --download"),
            ("--set", "with --set data.download=true"),
            (None, "with data.download = true in the config"),
        ),
    ),
    (
        "set verify_md5=False",
        (
            ("--set", "pass --set data.verify_md5=false"),
            (None, "set data.verify_md5 = false in the config"),
        ),
    ),
)


def cli_advice(message: str, flags: set[str] | frozenset[str]) -> str:
    """``message`` with each library phrase of :data:`ADVICE` replaced by the spelling of a flag
    in ``flags`` (the options of the command that prints it); unchanged when none applies.

    ``cli_advice("... or run with resume=False ...", {"--no-resume"})`` names ``--no-resume``;
    for ``sweep`` (no ``--download``) "pass --download" becomes "pass --set data.download=true".
    """
    out = message
    for library, spellings in ADVICE:
        if library in out:
            choice = next((t for f, t in spellings if f is None or f in flags), None)
            if choice is not None:
                out = out.replace(library, choice)
    return out


class GfverifyWarning(UserWarning):
    """Something the user should know that does not stop the command (printed as one line,
    ``gfverify: warning: ...``, by the CLI)."""
