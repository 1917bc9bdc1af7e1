"""Listing a folder tree with several folders asked for at once.

Over SFTP or FTP, listing one folder is a round trip or more of waiting on the
server: a tree of many folders lists much faster when several are in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypeVar

from synctool.backends.base import Entry

#: Where a folder is, as the backend names it (a path, or None for the root).
Folder = TypeVar("Folder")
#: ``scan(prefix, folder, is_root)`` lists one folder: its files (names
#: starting with ``prefix``) and its subfolders as (their prefix, folder).
Scan = Callable[[str, Folder, bool], tuple[list[Entry], list[tuple[str, Folder]]]]


def walk(scan: Scan, root: Folder, threads: int, name: str) -> Iterator[Entry]:
    """Every file below ``root``, listing up to ``threads`` folders at once
    (threads named ``name``). Closing the iterator early stops the walk."""
    with ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:
        pending = {pool.submit(scan, "", root, True)}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    files, folders = future.result()
                    yield from files
                    pending |= {pool.submit(scan, prefix, folder, False) for prefix, folder in folders}
        finally:
            for future in pending:
                future.cancel()
