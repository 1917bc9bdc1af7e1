"""Exit codes, and the exceptions that map onto them (one place, as httpie does)."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    SUCCESS = 0  # mirror complete (dry run and --parse-arguments-only included)
    FATAL = 1  # a listing failed, a backend unreachable, deletes refused by --max-delete
    USAGE = 2  # bad command line or option value
    PARTIAL = 3  # finished, but some files failed (the summary names them)
    DECLINED = 4  # the user answered no at the prompt
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


class SyncError(Exception):
    """An error that ends the run with ``exit_code``; its message is for the user."""

    exit_code = ExitCode.FATAL


class UsageError(SyncError):
    exit_code = ExitCode.USAGE


class Declined(SyncError):
    exit_code = ExitCode.DECLINED


class Interrupted(SyncError):
    exit_code = ExitCode.INTERRUPTED
