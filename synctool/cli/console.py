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
import threading
import time
import types

from synctool.errors import ExitCode
from synctool.interrupts import deferred_interrupts


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A stop signal that landed where Python cannot raise it is raised again.

    A KeyboardInterrupt raised inside a weak reference's callback or a
    ``__del__`` (importlib's module locks have one) cannot propagate: Python
    prints "Exception ignored" with a traceback and forgets the stop. The
    signal is sent again once the main thread has left this hook (sent from
    here, it would land inside the hook), and reaches the handler current
    then, at a point where it can be raised or noted.
    """
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    threading.Thread(target=_resend_stop, args=(threading.main_thread().ident,), daemon=True).start()


def _resend_stop(main: int) -> None:
    while _inside_hook(sys._current_frames().get(main)):
        time.sleep(0.001)
    signal.pthread_kill(main, signal.SIGINT)


def _inside_hook(frame: types.FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code is _unraisable.__code__:
            return True
        frame = frame.f_back
    return False


def entry() -> None:
    """Console script: SIGTERM behaves like Ctrl-C, so workers are stopped and cleaned up."""
    sys.unraisablehook = _unraisable
    try:
        # Inside the try: a signal that comes as the handler is being set
        # is raised as soon as that call returns, still on this line.
        signal.signal(signal.SIGTERM, _sigterm)
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
    _forget_caught_interrupts()
    sys.exit(code)


def _ignore_stop_signals() -> None:
    """The run is over and its exit code known: a late Ctrl-C or SIGTERM changes nothing."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except KeyboardInterrupt:  # one already pending runs its handler first
            signal.signal(sig, signal.SIG_IGN)


def _forget_caught_interrupts() -> None:
    """Clear CPython's note of an interrupt raised inside exec() of a string.

    CPython takes a KeyboardInterrupt that leaves code run by exec() of a
    string for an unhandled one, even when a caller catches it; dataclasses
    and namedtuple build their methods that way, so a stop during an import
    can land there. Started with ``python -m``, the program then ends killed
    by SIGINT, whatever exit code it chose. The next exec() of a string
    clears the note, and with the stop signals ignored nothing sets it again.
    """
    exec("")
