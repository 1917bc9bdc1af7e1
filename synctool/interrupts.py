"""Hold Ctrl-C and SIGTERM back while the coordinator is inside multiprocessing internals.

A KeyboardInterrupt raised at an arbitrary bytecode inside a queue's
``get``/``put`` leaves a lock held or a message half read; stopping the pool
afterwards then blocks forever on that lock or on a read for bytes that never
come. Inside :func:`deferred_interrupts` the signal is only noted, and raised
as KeyboardInterrupt at the next ``check()`` or when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts(reraise: bool = True) -> Iterator[Callable[[], None]]:
    """Defer SIGINT/SIGTERM Python handlers; ``reraise=False`` drops them (a stop in progress)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    pending: list[int] = []

    def note(signum: int, frame: object) -> None:
        pending.append(signum)

    def check() -> None:
        if pending and reraise:
            pending.clear()
            raise KeyboardInterrupt

    saved = {}
    for sig in SIGNALS:
        if callable(signal.getsignal(sig)):  # only Python handlers raise mid-bytecode
            saved[sig] = signal.signal(sig, note)
    try:
        yield check
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    check()


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back in the kernel, not only in Python: for a fork.

    A forked child runs the parent's Python handlers until it installs its
    own, and the coordinator's would note a SIGTERM meant to stop the child
    and forget it. Blocked, the signal waits in the child until it calls
    :func:`unblock_stop_signals` with its own handlers in place.
    """
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
