"""Exception tree and the one message template every user-facing error goes through.

A CotuneError is a problem with the user's input, not a bug: the CLI prints its message on one
line and exits with code 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2  # bad input: config, data, names, files
EXIT_INTERRUPTED = 130


class CotuneError(Exception):
    """Base of every error caused by user input. str(err) is a complete one-line message."""
    exit_code = EXIT_USER_ERROR


class ConfigError(CotuneError):
    """A config key, value or override is invalid."""


class DataError(CotuneError):
    """A data source is missing, unreadable, empty or inconsistent with the config."""


class ModelError(CotuneError):
    """An unknown model family or a family that does not fit the data."""


class BundleError(CotuneError):
    """A saved run directory is missing files or cannot be loaded."""


class DamagedFileError(BundleError):
    """A file cotune wrote in a run or search directory (config.json, fit.json, model.json, ...) no longer parses."""


class ConfigValueError(ConfigError, ValueError):
    """A ConfigError raised by cotune.sklearn's estimators: scikit-learn's callers (pipelines, cross-validation,
    its estimator checks) expect bad parameters and bad input to be ValueErrors."""


class DataValueError(DataError, ValueError):
    """A DataError raised by cotune.sklearn's estimators, a ValueError for scikit-learn's callers likewise."""


def fmt_choices(choices) -> str:
    return "{" + ", ".join(repr(c) for c in choices) + "}"


def invalid(what: str, expected: str, got, fix: str | None = None) -> str:
    """The one template: name the parameter, what it must be, what was received, and the fix.

    >>> invalid("'train.lr'", "a number > 0", -1.0, "pass e.g. --set train.lr=3e-3")
    "'train.lr' must be a number > 0. Got -1.0 instead; pass e.g. --set train.lr=3e-3."
    """
    msg = f"{what} must be {expected}. Got {got!r} instead"
    return msg + (f"; {fix}." if fix else ".")


def one_line(msg: str) -> str:
    """Fold a message onto one line (library messages sometimes carry newlines)."""
    return " ".join(str(msg).split())
