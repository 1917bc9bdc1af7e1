"""The ``synctool`` console script, which takes the stop signals first.

Importing the command line (click, the coordinator, the backends) takes a
good part of a second on a busy machine. Until something handles them, a
Ctrl-C there ends the program with Python's traceback, and a SIGTERM with
no exit code at all; so this module imports only what handling them needs,
and the command line is imported once they are taken.
"""

from __future__ import annotations

import signal
import sys

from synctool.errors import ExitCode
from synctool.interrupts import deferred_interrupts


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def entry() -> None:
    """Console script: SIGTERM behaves like Ctrl-C, so workers are stopped and cleaned up."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        # Held back, not raised: a KeyboardInterrupt inside some library's
        # import code can come out as another error (3.11 wraps it in a
        # RuntimeError inside class creation), or go unseen.
        with deferred_interrupts():
            from synctool.cli import main as cli
        code = cli.main()
    except KeyboardInterrupt:
        # The signal landed outside main()'s own handling: while the command
        # line was imported, or as main() returned. Left to Python, an
        # uncaught KeyboardInterrupt ends the process by SIGINT, whatever the
        # signal was, and the caller sees no exit code.
        code = ExitCode.INTERRUPTED
    _ignore_stop_signals()
    sys.exit(code)


def _ignore_stop_signals() -> None:
    """The run is over and its exit code known: a late Ctrl-C or SIGTERM changes nothing."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except KeyboardInterrupt:  # one already pending runs its handler first
            signal.signal(sig, signal.SIG_IGN)
