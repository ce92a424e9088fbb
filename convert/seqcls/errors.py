"""Errors a user can cause, each one sentence with the fix, and the exit code the CLI maps it to."""

from __future__ import annotations


class SeqclsError(Exception):
    """Base class: a clear, one-sentence message that the CLI prints without a traceback."""

    exit_code = 2


class UsageError(SeqclsError):
    """Bad input, arguments or files (exit code 2)."""

    exit_code = 2


class CheckFailed(SeqclsError):
    """A check ran and failed: parity, recipe validation, publishing preconditions (exit code 1)."""

    exit_code = 1
