"""A folder tree listed in one order, for backends that list folder by folder.

Every listing yields its entries in the order of their full names (Python's
string order, which for valid UTF-8 is the byte order S3's ListObjectsV2
keeps). A backend that lists one folder at a time (local folders, SFTP,
WebDAV, FTP) gets that order by sorting each folder's names with a folder
compared as ``name/`` and walking depth first: ``a-b`` comes before the
folder ``a/`` and ``a0`` after it, as the full names ``a-b``, ``a/x``,
``a0`` do.

The plan merges two such streams as they come, so neither side is ever held
whole. Folders can be listed ahead on a few threads where a listing waits
on a server; what is listed ahead is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from synctool.backends.base import Entry

Folder = TypeVar("Folder")
#: scan(prefix, folder) -> (entries of the folder, its subfolders as (prefix + "name/", folder))
Scan = Callable[[str, Folder], tuple[list[Entry], list[tuple[str, Folder]]]]
#: Folder listings read ahead of the walk, at most, per thread.
AHEAD_PER_THREAD = 16


def ordered_walk(scan: Scan, root: Folder, threads: int = 1) -> Iterator[Entry]:
    """Every entry below ``root`` in name order (see the module notes)."""
    ahead = _Ahead(scan, threads)
    try:
        files, folders = scan("", root)
        ahead.request(folders)
        stack = [_in_order(files, folders)]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
            elif isinstance(item, Entry):
                yield item
            else:
                files, folders = ahead.listing(*item)
                ahead.request(folders)
                stack.append(_in_order(files, folders))
    finally:
        ahead.close()


def _in_order(files: list[Entry], folders: list[tuple[str, Folder]]) -> Iterator[Entry | tuple[str, Folder]]:
    """A folder's entries and subfolders, each subfolder sorted as its ``name/``."""
    keyed: list[tuple[str, Entry | tuple[str, Folder]]] = [(e.name, e) for e in files]
    keyed += [(prefix, (prefix, folder)) for prefix, folder in folders]
    keyed.sort(key=lambda pair: pair[0])
    return (item for _, item in keyed)


class _Ahead(Generic[Folder]):
    """Listings of folders the walk will reach, started early on a thread pool."""

    def __init__(self, scan: Scan, threads: int):
        self.scan = scan
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="list") if threads > 1 else None
        self.limit = threads * AHEAD_PER_THREAD
        self.started: dict[str, Future] = {}

    def request(self, folders: list[tuple[str, Folder]]) -> None:
        if self.pool is None:
            return
        for prefix, folder in sorted(folders, key=lambda pair: pair[0]):
            if len(self.started) >= self.limit:
                return
            self.started[prefix] = self.pool.submit(self.scan, prefix, folder)

    def listing(self, prefix: str, folder: Folder) -> tuple[list[Entry], list[tuple[str, Folder]]]:
        future = self.started.pop(prefix, None)
        return future.result() if future is not None else self.scan(prefix, folder)

    def close(self) -> None:
        for future in self.started.values():
            future.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
