"""Logging: Duplicati's level names on Python's logging, secrets masked everywhere."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TextIO

from synctool.errors import UsageError
from synctool.secrets import redact

for _level, _name in ((1, "ExplicitOnly"), (5, "Profiling"), (15, "Retry"), (25, "DryRun")):
    logging.addLevelName(_level, _name)

DRYRUN = 25
RETRY = 15

#: The logger of per-file records (copied, renamed, deleted, verified): the
#: log file keeps them from Information on, but stderr shows them only at
#: Verbose or below, so a large run does not flood the terminal.
FILES = "synctool.files"
#: The logger of what the command line also prints on stdout (the dry run's
#: lines, the summary, the exit code): the log file keeps it, and stderr
#: never repeats it.
OUTPUT = "synctool.output"


class RedactingFormatter(logging.Formatter):
    """Masks the whole line, a traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def printable(text: str) -> str:
    """``text`` as one line without control characters, each shown as its escape.

    File names come from listings: one with a NUL, a line break or a terminal
    escape sequence must neither forge a log line nor garble the terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _redacting_record_factory(base):
    """Records of the ``synctool`` loggers carry their message already masked
    (and on one printable line).

    A program that calls :func:`synctool.sync` sees them through handlers of
    its own, which know nothing of our secrets; masking when the record is
    made covers every handler. Only records of enabled levels are made, so
    quiet levels cost nothing.
    """

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        if record.name == "synctool" or record.name.startswith("synctool."):
            record.msg, record.args = printable(redact(record.getMessage())), None
        return record

    factory.synctool_redacts = True
    return factory


if not getattr(logging.getLogRecordFactory(), "synctool_redacts", False):
    logging.setLogRecordFactory(_redacting_record_factory(logging.getLogRecordFactory()))


def create_private_file(path: str, what: str) -> None:
    """Create ``path`` (and its folder) readable by its owner only, or raise
    :class:`UsageError` saying why ``what`` ("log file", "report file") cannot
    be written there. Called before anything is listed, so a run never ends
    without the record it was asked to leave."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        blocker = _file_in_the_way(folder)
        reason = f"{blocker} is a file, not a folder" if blocker else f"cannot create its folder {folder} ({exc.strerror})"
        raise UsageError(f"cannot write the {what} {path}: {reason}") from None
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as exc:
        reason = "it is a folder" if isinstance(exc, IsADirectoryError) else exc.strerror
        raise UsageError(f"cannot write the {what} {path}: {reason}") from None


def _file_in_the_way(folder: str) -> str | None:
    """The nearest existing ancestor of ``folder`` (itself included), when it is not a folder."""
    while not os.path.isdir(folder):
        if os.path.lexists(folder):
            return folder
        folder = os.path.dirname(folder)
    return None


class LogFile(logging.FileHandler):
    """The log file. A write that fails (its disk full, say) is told once as
    an error, not as a traceback per record, and kept in :attr:`problem`:
    the record asked for is incomplete, which the run's exit code shows."""

    problem: str | None = None

    def handleError(self, record: logging.LogRecord | None) -> None:
        if self.problem is None:
            exc = sys.exc_info()[1]
            self.problem = f"cannot write the log file {self.baseFilename}: {getattr(exc, 'strerror', None) or exc}"
            logging.getLogger("synctool").error("%s; it misses the rest of the run", self.problem)

    def close(self) -> None:
        try:
            super().close()  # flushes what is left
        except OSError:
            self.handleError(None)


def log_file_problem(handlers: list[logging.Handler]) -> str | None:
    """Why the log file among ``handlers`` could not be written to the end, if it could not."""
    return next((h.problem for h in handlers if isinstance(h, LogFile) and h.problem), None)


def log_file_handler(path: str) -> LogFile:
    """Append to ``path``, creating it (and its folder) readable by its owner only."""
    create_private_file(path, "log file")
    handler = LogFile(path, mode="a", encoding="utf-8")
    handler.setFormatter(RedactingFormatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    return handler


class _ConsoleFilter(logging.Filter):
    """Keeps stdout's lines off stderr, and per-file lines unless the level is Verbose or below."""

    def __init__(self, level: int):
        super().__init__()
        self.per_file = level <= logging.DEBUG

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == OUTPUT:
            return False
        return self.per_file or record.name != FILES


#: The ``synctool`` logger's level before each :func:`setup` not yet torn down.
_levels_before_setup: list[int] = []


def setup(level: int, log_file: str | None, stderr: TextIO | None = None) -> list[logging.Handler]:
    """Route the ``synctool`` loggers to stderr and the log file; returns the handlers added.

    Raises :class:`UsageError` when the log file cannot be written.
    """
    handlers: list[logging.Handler] = [log_file_handler(log_file)] if log_file else []
    logger = logging.getLogger("synctool")
    _levels_before_setup.append(logger.level)
    logger.setLevel(level)
    logger.propagate = False
    console = logging.StreamHandler(stderr or sys.stderr)
    console.setFormatter(RedactingFormatter("%(levelname)s: %(message)s"))
    console.addFilter(_ConsoleFilter(level))
    handlers.append(console)
    for h in handlers:
        h.setLevel(level)
        logger.addHandler(h)
    # A record costs its making even when every handler drops it: without a
    # log file, the per-file and stdout records need not be made at all.
    off = logging.CRITICAL + 1
    logging.getLogger(OUTPUT).setLevel(logging.NOTSET if log_file else off)
    logging.getLogger(FILES).setLevel(logging.NOTSET if log_file or level <= logging.DEBUG else off)
    return handlers


@contextlib.contextmanager
def for_library_call(level: int | None, handler: logging.Handler | None, file_level: int = logging.INFO) -> Iterator[None]:
    """Logging for one ``synctool.sync()`` call.

    A library leaves the console to its caller: records still reach the
    caller's own handlers, and nothing is printed to stderr. A ``level`` the
    caller passed sets the ``synctool`` logger's level for the call; a
    ``handler`` (the caller's log file, from :func:`log_file_handler`) is
    added for the call and closed after it. Without a ``level``, the log
    file still records from ``file_level`` on, as the command line's does,
    while the caller's handlers get only what its own set-up lets through.
    """
    logger = logging.getLogger("synctool")
    before, propagate = logger.level, logger.propagate
    forward = None
    if handler is not None:
        logger.addHandler(handler)
        caller_level = logger.getEffectiveLevel()
        if level is None and file_level < caller_level:
            handler.setLevel(file_level)
            logger.setLevel(file_level)
            forward = _Forward(caller_level)
            logger.addHandler(forward)
            logger.propagate = False
    if level is not None:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
        logger.propagate = propagate
        if forward is not None:
            logger.removeHandler(forward)
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()


class _Forward(logging.Handler):
    """Hands the caller's handlers the records its logging set-up lets
    through, as propagation would, while the log file takes more."""

    def emit(self, record: logging.LogRecord) -> None:
        root = logging.getLogger()
        if not root.disabled and root.filter(record):
            root.callHandlers(record)


def teardown(handlers: list[logging.Handler]) -> None:
    logger = logging.getLogger("synctool")
    for name in (OUTPUT, FILES):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for h in handlers:
        logger.removeHandler(h)
        h.close()
    # setup() kept the run's records from the root logger's handlers; a
    # program (a test) that runs the command line in-process gets them back,
    # and its own level for them: a later synctool.sync() logs as it set.
    logger.propagate = True
    if _levels_before_setup:
        logger.setLevel(_levels_before_setup.pop())
