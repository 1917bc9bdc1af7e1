"""Both sides' listings as streams: listed ahead in threads, retried without starting over.

A listing is a stream of entries in name order (see synctool/backends/walk.py),
never a list: the plan consumes it as it comes, and the copies start while it
goes on. Each side lists in a thread of its own, a bounded number of batches
ahead of the plan, so a slow server on one side never holds up the other and
a fast listing never outruns the copies by more than that window.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from synctool.backends import Backend, BackendError, Entry, NotFound
from synctool.doorbell import Doorbell
from synctool.errors import SyncError
from synctool.logs import RETRY
from synctool.retry import RetryPolicy

log = logging.getLogger("synctool")

BATCH = 512  # entries handed from a listing thread to the plan at a time
AHEAD = 16  # batches a listing may run ahead of the plan
CLOSE_WAIT_SECONDS = 10.0


class ListingStopped(Exception):
    """The consumer went away: the listing thread ends quietly."""


def entries(backend: Backend, side: str, retry: RetryPolicy, counted: Callable[[int], None]) -> Iterator[Entry]:
    """``backend``'s entries in order; a listing that fails midway resumes
    after the last name already given (the backend lists nothing before it
    again), so nothing is given twice. ``counted(n)`` hears of every ``n`` entries given."""
    last: str | None = None
    attempt = 0
    while True:
        try:
            batch: list[Entry] = []
            for entry in backend.list(start_after=last):
                if last is not None and entry.name <= last:
                    continue  # given before the listing broke off
                batch.append(entry)
                if len(batch) >= BATCH:
                    yield from batch
                    counted(len(batch))
                    last = batch[-1].name
                    batch = []
            yield from batch
            counted(len(batch))
            return
        except NotFound:
            raise SyncError(f"listing the {side} failed: {backend.display_url()} does not exist") from None
        except BackendError as exc:
            if not retry.allows(attempt, exc.retryable):
                raise SyncError(f"listing the {side} failed: {exc}") from None
            delay = retry.backoff(attempt)
            attempt += 1
            log.log(RETRY, "listing the %s failed (%s); resuming in %.1f s", side, exc, delay)
            time.sleep(delay)


class ReadAhead:
    """Run an iterator in a thread, up to ``AHEAD`` batches ahead of its reader.

    The reader gets the items in order, and the thread's exception at the
    point where it happened. A batch is handed over when it is full or
    ``FLUSH_SECONDS`` after its first item, whichever comes first, so the
    reader never waits long for an item the thread already has.
    :attr:`bell` rings at every hand-over, for a reader that waits on other
    things as well. :meth:`close` stops the thread at its next hand-over.
    """

    FLUSH_SECONDS = 0.05

    def __init__(self, items: Iterable, name: str):
        self._items = items
        self._queue: queue.Queue = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._ended = False
        self.bell = Doorbell()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        batch: list = []
        try:
            due = 0.0
            for item in self._items:
                if not batch:
                    due = time.monotonic() + self.FLUSH_SECONDS
                batch.append(item)
                if len(batch) >= BATCH or time.monotonic() >= due:
                    self._put(("items", batch))
                    batch = []
            self._put(("items", batch))
            self._put(("end", None))
        except ListingStopped:
            pass
        except BaseException as exc:  # handed to the reader after what came before it
            try:
                self._put(("items", batch))
                self._put(("error", exc))
            except ListingStopped:
                pass

    def _put(self, message: tuple) -> None:
        while True:
            if self._stop.is_set():
                raise ListingStopped
            try:
                self._queue.put(message, timeout=0.1)
                self.bell.ring()
                return
            except queue.Full:
                continue

    def take(self, timeout: float) -> list | None:
        """The next batch; ``[]`` when none came within ``timeout`` seconds, None at the end."""
        if self._ended:
            return None
        self.bell.clear()
        try:
            kind, value = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if not self._queue.empty():
            self.bell.ring()  # the clear above took the ring of what is still queued
        if kind == "error":
            self._ended = True
            raise value
        if kind == "end":
            self._ended = True
            return None
        return value

    def __iter__(self) -> Iterator:
        """Every item, for a reader in another thread: it stops, with
        :class:`ListingStopped`, once this one is closed."""
        while (batch := self.take(0.1)) is not None:
            if not batch and self._stop.is_set():
                raise ListingStopped
            yield from batch

    def stop(self) -> None:
        """Ask the thread to stop at its next hand-over, without waiting."""
        self._stop.set()

    def close(self) -> None:
        """Stop the thread. One blocked on a server is left to end by itself
        (it is a daemon, and its backend is closed next)."""
        self._stop.set()
        self._thread.join(CLOSE_WAIT_SECONDS)
        if not self._thread.is_alive():  # one still blocked may yet ring
            self.bell.close()
