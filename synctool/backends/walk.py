"""A folder tree listed in one order, for backends that list folder by folder.

Every listing yields its entries in the order of their full names (Python's
string order, which for valid UTF-8 is the byte order S3's ListObjectsV2
keeps). A backend that lists one folder at a time (local folders, SFTP,
WebDAV, FTP) gets that order by sorting each folder's names with a folder
compared as ``name/`` and walking depth first: ``a-b`` comes before the
folder ``a/`` and ``a0`` after it, as the full names ``a-b``, ``a/x``,
``a0`` do.

The plan merges two such streams as they come, so neither side is ever held
whole, and neither is one folder: a folder's listing streams into an
external sorter (sorter.py), which keeps a bounded run in memory and the
rest on disk. Folders can be listed ahead on a few threads; what is listed
ahead is bounded in folders and in entries held in memory.

A walk can resume after a name it already yielded (a listing that failed
midway): folders that hold only earlier names are not listed again, and the
folder the walk stopped in is listed again without its earlier names.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from synctool.backends.base import Entry
from synctool.backends import sorter
from synctool.backends.sorter import WALK_CODEC, ExternalSorter

Folder = TypeVar("Folder")
#: scan(prefix, folder) -> the folder's entries and its subfolders as
#: (prefix + "name/", folder), in any order and mixed, as a stream.
Scan = Callable[[str, Folder], Iterable[Any]]
#: Folder listings read ahead of the walk, at most, per thread.
AHEAD_PER_THREAD = 16
#: Entries of listings read ahead held in memory, at most, in all; a larger
#: listing read ahead waits on disk.
AHEAD_WINDOW = 131_072
#: Items of the folder being walked read early, at most, to find the
#: subfolders to list ahead.
LOOKAHEAD = 1_024


def ordered_walk(
    scan: Scan, root: Folder, threads: int = 1, start_after: str | None = None, run_size: int | None = None
) -> Iterator[Entry]:
    """Every entry below ``root`` in name order (see the module notes); with
    ``start_after``, only those whose names sort after it. ``run_size``:
    entries of one folder held in memory (default: sorter.RUN_SIZE)."""
    after = _After(start_after)
    ahead = _Ahead(scan, threads, run_size or sorter.RUN_SIZE, after)
    stack: list[_Lookahead] = []
    try:
        stack.append(_Lookahead(ahead.listing("", root)))
        while stack:
            top = stack[-1]
            ahead.request(top)
            item = top.next()
            if item is None:
                stack.pop().close()
            elif isinstance(item, Entry):
                if after.keeps(item.name):
                    yield item
            elif after.enters(item[0]):
                stack.append(_Lookahead(ahead.listing(*item)))
    finally:
        for listing in stack:
            listing.close()
        ahead.close()


class _After:
    """Which names a walk resumed after ``name`` still yields. Names arrive in
    order, so once one passes ``name``, every later one does."""

    def __init__(self, name: str | None):
        self.name = name

    def wants(self, prefix: str) -> bool:
        """Whether the folder ``prefix`` may hold a name after ``name``."""
        # Below a prefix greater than ``name`` every name is greater; below
        # one that ``name`` starts with, some may be.
        return self.name is None or prefix > self.name or self.name.startswith(prefix)

    def keeps(self, name: str) -> bool:
        if self.name is None:
            return True
        if name > self.name:
            self.name = None
            return True
        return False

    def enters(self, prefix: str) -> bool:
        if not self.wants(prefix):
            return False
        if self.name is not None and prefix > self.name:
            self.name = None
        return True


class _Stopped(Exception):
    """The walk ended while a folder was being listed ahead of it."""


def _listing(scan: Scan, prefix: str, folder: Any, run_size: int, stop: threading.Event) -> ExternalSorter:
    """One folder's entries and subfolders, sorted as they stream in."""
    sorter = ExternalSorter(WALK_CODEC, run_size)
    try:
        for item in scan(prefix, folder):
            if stop.is_set():
                raise _Stopped
            sorter.add(item)
    except BaseException:
        sorter.close()
        raise
    return sorter


class _Lookahead:
    """A folder's items in order, with the next few read early: the
    subfolders among them are the ones to list ahead."""

    def __init__(self, sorter: ExternalSorter):
        self.sorter = sorter
        self.items = iter(sorter)
        self.early: deque[Any] = deque()

    def next(self) -> Any:
        return self.early.popleft() if self.early else next(self.items, None)

    def peek(self) -> Any:
        """The next item not peeked at yet, None at the end."""
        item = next(self.items, None)
        if item is not None:
            self.early.append(item)
        return item

    def close(self) -> None:
        getattr(self.items, "close", lambda: None)()
        self.sorter.close()


class _Ahead(Generic[Folder]):
    """Listings of folders the walk will reach, started early on a thread pool."""

    def __init__(self, scan: Scan, threads: int, run_size: int, after: _After):
        self.scan = scan
        self.run_size = run_size
        self.after = after
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="list") if threads > 1 else None
        self.limit = threads * AHEAD_PER_THREAD
        self.share = max(1, AHEAD_WINDOW // self.limit)
        self.started: dict[str, Future[ExternalSorter]] = {}
        self.stop = threading.Event()

    def listing(self, prefix: str, folder: Folder) -> ExternalSorter:
        """The folder's items, sorted: listed ahead, or now."""
        future = self.started.pop(prefix, None)
        if future is not None:
            return future.result()
        return _listing(self.scan, prefix, folder, self.run_size, self.stop)

    def _list_ahead(self, prefix: str, folder: Folder) -> ExternalSorter:
        sorter = _listing(self.scan, prefix, folder, self.run_size, self.stop)
        if sorter.held > self.share:
            sorter.spill()  # it waits its turn on disk
        return sorter

    def request(self, top: _Lookahead) -> None:
        """Start listing the subfolders among the next items of ``top``, while there is room."""
        if self.pool is None:
            return
        while len(self.started) < self.limit and len(top.early) < LOOKAHEAD:
            item = top.peek()
            if item is None:
                return
            if not isinstance(item, Entry) and self.after.wants(item[0]):
                self.started[item[0]] = self.pool.submit(self._list_ahead, *item)

    def close(self) -> None:
        self.stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for future in self.started.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().close()
        self.started.clear()
