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

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from synctool.backends.base import Entry
from synctool.backends.sorter import RUN_SIZE, WALK_CODEC, ExternalSorter

Folder = TypeVar("Folder")
#: scan(prefix, folder) -> the folder's entries and its subfolders as
#: (prefix + "name/", folder), in any order and mixed, as a stream.
Scan = Callable[[str, Folder], Iterable[Any]]
#: Folder listings read ahead of the walk, at most, per thread.
AHEAD_PER_THREAD = 16
#: Entries of listings read ahead held in memory, at most, in all; a larger
#: listing read ahead waits on disk.
AHEAD_WINDOW = 65_536


def ordered_walk(
    scan: Scan, root: Folder, threads: int = 1, start_after: str | None = None, run_size: int = RUN_SIZE
) -> Iterator[Entry]:
    """Every entry below ``root`` in name order (see the module notes); with
    ``start_after``, only those whose names sort after it."""
    after = _After(start_after)
    ahead = _Ahead(scan, threads, run_size, after)
    stack: list[Iterator[Any]] = []
    try:
        stack.append(ahead.listing("", root))
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
            elif isinstance(item, Entry):
                if after.keeps(item.name):
                    yield item
            elif after.enters(item[0]):
                stack.append(ahead.listing(*item))
    finally:
        for listing in stack:
            getattr(listing, "close", lambda: None)()
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


class _Listing:
    """One folder's entries and subfolders in order, and its first few subfolders (to list ahead)."""

    def __init__(self, scan: Scan, prefix: str, folder: Any, run_size: int, firsts: int, stop: threading.Event):
        self.sorter = ExternalSorter(WALK_CODEC, run_size)
        self.firsts: list[tuple[str, Any]] = []
        try:
            for item in scan(prefix, folder):
                if stop.is_set():
                    raise _Stopped
                self.sorter.add(item)
                if firsts and not isinstance(item, Entry) and (
                    len(self.firsts) < firsts or item[0] < self.firsts[-1][0]
                ):
                    bisect.insort(self.firsts, item, key=_prefix_of)
                    del self.firsts[firsts:]
        except BaseException:
            self.sorter.close()
            raise


def _prefix_of(folder: tuple[str, Any]) -> str:
    return folder[0]


class _Ahead(Generic[Folder]):
    """Listings of folders the walk will reach, started early on a thread pool."""

    def __init__(self, scan: Scan, threads: int, run_size: int, after: _After):
        self.scan = scan
        self.run_size = run_size
        self.after = after
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="list") if threads > 1 else None
        self.limit = threads * AHEAD_PER_THREAD
        self.share = max(1, AHEAD_WINDOW // self.limit)
        self.started: dict[str, Future[_Listing]] = {}
        self.stop = threading.Event()

    def listing(self, prefix: str, folder: Folder) -> Iterator[Any]:
        """The folder's items in order; its first subfolders are requested ahead."""
        future = self.started.pop(prefix, None)
        listing = future.result() if future is not None else self._list(prefix, folder)
        self._request(listing.firsts)
        return iter(listing.sorter)

    def _list(self, prefix: str, folder: Folder) -> _Listing:
        return _Listing(self.scan, prefix, folder, self.run_size, self.limit if self.pool else 0, self.stop)

    def _list_ahead(self, prefix: str, folder: Folder) -> _Listing:
        listing = self._list(prefix, folder)
        if listing.sorter.held > self.share:
            listing.sorter.spill()  # it waits its turn on disk
        return listing

    def _request(self, folders: list[tuple[str, Folder]]) -> None:
        if self.pool is None:
            return
        for prefix, folder in folders:
            if len(self.started) >= self.limit:
                return
            if prefix not in self.started and self.after.wants(prefix):
                self.started[prefix] = self.pool.submit(self._list_ahead, prefix, folder)

    def close(self) -> None:
        self.stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for future in self.started.values():
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().sorter.close()
        self.started.clear()
