"""Errors a user can cause, reported as one clear paragraph instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: names the file, key or value at fault and what would be accepted.

    The command line prints ``str(error)`` and exits with status 2; library callers can
    catch it like any exception.
    """

    exit_code = 2


class ConfigError(UserError):
    """A configuration file, key or value that cannot be used."""


class DataError(UserError):
    """A dataset folder or image file that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, foreign or does not match the model."""


class DistributedError(UserError):
    """A process group or world size the model cannot use."""
