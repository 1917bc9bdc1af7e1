"""A bucket's (or container's) keys in key order, several key ranges listed at once.

An object store lists a page of keys a request (S3's ListObjectsV2, Azure's
List Blobs), and each request needs the last one's continuation token: one
listing is a chain of round trips. So
the keys below the root are split at their common prefixes, which a listing
with ``Delimiter='/'`` names, going a level deeper while there are fewer
than :data:`SPLIT_FACTOR` prefixes per thread. Each prefix is a key range listed in its own thread;
the ranges are read back one after the other, so the result is one stream
in key order, as one chain would give (s5cmd and rclone split the same way).

Bounded memory: at most ``threads`` ranges are listed at once, each holding
at most :data:`PAGES_AHEAD` pages not yet read.

The first page is asked for without a delimiter: when it is the only one,
the listing is done in one round trip; otherwise the split goes on from its
last key.

Resuming after a key: ranges below it are not listed, and the range that
holds it starts after it (S3's StartAfter; a store without one skips what
it lists again, in its page function).

Objects are dicts with at least ``Key``, as boto3 gives them; the rest is
the backend's.
"""

from __future__ import annotations

import dataclasses
import heapq
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor


@dataclasses.dataclass
class Page:
    objects: list[dict]  # as boto3 gives them: Key, Size, LastModified
    prefixes: list[str]  # CommonPrefixes (a delimited listing only)
    token: str | None  # the next page's continuation token; None: the last page


#: page(prefix, start_after, token, delimited) -> one listing page;
#: ``delimited`` asks for Delimiter='/'. start_after comes with the first
#: page only: the continuation token carries on from there.
PageOf = Callable[[str, "str | None", "str | None", bool], Page]

#: Pages of a range listed ahead and not yet read, at most, per range.
PAGES_AHEAD = 2
#: Levels of common prefixes gone down, at most, to find enough ranges.
MAX_DEPTH = 2
#: Ranges wanted per thread: below that many prefixes, go a level deeper.
#: Many short ranges keep every thread busy to the end, where a few long
#: ones leave the last of them listing alone.
SPLIT_FACTOR = 16
#: Keys and ranges found by the delimited listings and not yet read, at most.
PIECES_AHEAD = 2_000


def ordered_keys(page: PageOf, prefix: str, start_after: str | None = None, threads: int = 4) -> Iterator[dict]:
    """Every object whose key starts with ``prefix`` (and sorts after
    ``start_after``, a full key), in key order."""
    stop = threading.Event()
    if threads <= 1:
        for objects in _Range(page, prefix, start_after, stop).pages():
            yield from objects
        return
    # One plain page first: a listing that fits in it (a small bucket, or a
    # few thousand keys below the prefix) then takes one round trip instead
    # of a walk down the common prefixes. A longer one goes on from its last key.
    first = page(prefix, start_after, None, False)
    yield from first.objects
    if first.token is None:
        return
    if first.objects:
        start_after = first.objects[-1]["Key"]
    with ThreadPoolExecutor(threads, thread_name_prefix="key-range") as pool:
        ahead = _Ahead(_pieces(page, prefix, start_after, threads, 0), pool, threads, page, start_after, stop)
        try:
            while (piece := ahead.next()) is not None:
                if isinstance(piece, _Range):
                    yield from piece
                    ahead.ranges -= 1
                else:
                    yield piece
        finally:
            stop.set()  # ranges still listing ahead end at their next page


class _Ahead:
    """Pieces read ahead of the reader: objects, and ranges started in order,
    at most ``threads`` of them, so that each has a thread of its own."""

    def __init__(self, pieces, pool, threads, page, start_after, stop):
        self.pieces, self.pool, self.threads = pieces, pool, threads
        self.page, self.start_after, self.stop = page, start_after, stop
        self.pending: deque[dict | _Range] = deque()
        self.ranges = 0  # started and not read to their end

    def next(self) -> dict | _Range | None:
        while self.ranges < self.threads and len(self.pending) < PIECES_AHEAD:
            piece = next(self.pieces, None)
            if piece is None:
                break
            if isinstance(piece, str):
                inside = self.start_after if self.start_after is not None and self.start_after.startswith(piece) else None
                listing = _Range(self.page, piece, inside, self.stop)
                self.pool.submit(listing.run)
                self.ranges += 1
                piece = listing
            self.pending.append(piece)
        return self.pending.popleft() if self.pending else None


def _wanted(prefix: str, start_after: str | None) -> bool:
    """Whether the range below ``prefix`` may hold a key after ``start_after``."""
    return start_after is None or prefix > start_after or start_after.startswith(prefix)


def _pieces(page: PageOf, prefix: str, start_after: str | None, threads: int, depth: int) -> Iterator[dict | str]:
    """The objects right below ``prefix`` and the ranges (common prefixes) to
    list apart, in key order, leaving out what sorts before ``start_after``."""
    first = None
    if start_after is not None and start_after.startswith(prefix):
        # Cut at the next '/': servers differ in whether a prefix holding
        # start_after is named after it (rclone's is not).
        slash = start_after.find("/", len(prefix))
        first = start_after if slash < 0 else start_after[:slash]
    token: str | None = None
    while True:
        got = page(prefix, first if token is None else None, token, True)
        token = got.token
        split_further = depth < MAX_DEPTH and token is None and len(got.prefixes) < threads * SPLIT_FACTOR
        keyed = heapq.merge(((o["Key"], o) for o in got.objects), ((p, p) for p in got.prefixes), key=_first)
        for key, piece in keyed:
            if isinstance(piece, dict):
                if start_after is None or key > start_after:
                    yield piece
            elif _wanted(key, start_after):
                if split_further:
                    yield from _pieces(page, key, start_after, threads, depth + 1)
                else:
                    yield key
        if token is None:
            return


def _first(pair: tuple[str, object]) -> str:
    return pair[0]


class _End:
    """The last item a range puts in its queue."""


class _Stopped(Exception):
    """The listing ended before this range was read."""


class _Range:
    """The keys below one prefix, listed page after page in a thread of their own."""

    def __init__(self, page: PageOf, prefix: str, start_after: str | None, stop: threading.Event):
        self.page, self.prefix, self.start_after, self.stop = page, prefix, start_after, stop
        self.waiting: queue.Queue = queue.Queue(PAGES_AHEAD)

    def run(self) -> None:
        try:
            for objects in self.pages():
                self._put(objects)
            self._put(_End)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the reader, raised there
            try:
                self._put(exc)
            except _Stopped:
                pass

    def pages(self) -> Iterator[list[dict]]:
        """The range's pages, listed in the calling thread."""
        token = None
        while not self.stop.is_set():
            got = self.page(self.prefix, self.start_after if token is None else None, token, False)
            yield got.objects
            token = got.token
            if token is None:
                return
        raise _Stopped

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.waiting.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def __iter__(self) -> Iterator[dict]:
        while True:
            item = self.waiting.get()
            if item is _End:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
