"""Sorting more listing entries than memory should hold (rclone's fs/list/sorter, s5cmd's sort).

Items are gathered in runs of at most ``run_size``; a full run is sorted and
written to an anonymous temporary file in a compact binary form (a few
fixed-width fields and the name's UTF-8 bytes, no pickling of entries), and
reading the result merges the runs with :func:`heapq.merge`. A listing that
fits in one run never touches the disk. At most :data:`MAX_FAN_IN` runs are
merged at once: past that, the oldest runs are first merged into one longer
run, so a huge listing never holds more than that many files open.

Keys are the items' names compared as Python strings, which for UTF-8 text
is the byte order S3 keeps (see walk.py). Names are stored with
``surrogatepass``, so a local name of undecodable bytes comes back the same.
"""

from __future__ import annotations

import heapq
import io
import pickle
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Generic, TypeVar

from synctool.backends.base import Entry

T = TypeVar("T")

#: Items held in memory by one sorter before a run goes to disk: an Entry
#: with its name weighs some 200 bytes, so a run is a few tens of MB.
RUN_SIZE = 100_000
#: Runs merged at once (each an open file with its read buffer).
MAX_FAN_IN = 64
_BUFFER = 64 << 10

# A record: flags, size, mtime, name length, extra length; then the name
# and the extra bytes (a walk's folder handle).
_HEAD = struct.Struct("<BqdII")
_LINK, _FOLDER, _PICKLED = 1, 2, 4


class Codec(Generic[T]):
    """How one kind of item is keyed, written and read back."""

    def key(self, item: T) -> str:
        raise NotImplementedError

    def write(self, item: T, out: BinaryIO) -> None:
        raise NotImplementedError

    def read(self, src: BinaryIO) -> T | None:
        """The next item, None at the end of the file."""
        raise NotImplementedError


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _read_record(src: BinaryIO) -> tuple[int, int, float, str, bytes] | None:
    head = src.read(_HEAD.size)
    if not head:
        return None
    flags, size, mtime, name_len, extra_len = _HEAD.unpack(head)
    name = _decode(src.read(name_len))
    return flags, size, mtime, name, src.read(extra_len) if extra_len else b""


class EntryCodec(Codec[Entry]):
    """Plain entries: a flat listing."""

    def key(self, item: Entry) -> str:
        return item.name

    def write(self, item: Entry, out: BinaryIO) -> None:
        name = _encode(item.name)
        out.write(_HEAD.pack(_LINK if item.link else 0, item.size, item.mtime, len(name), 0) + name)

    def read(self, src: BinaryIO) -> Entry | None:
        record = _read_record(src)
        if record is None:
            return None
        flags, size, mtime, name, _ = record
        return Entry(name, size, mtime, link=bool(flags & _LINK))


class WalkCodec(Codec[Any]):
    """A folder's listing as walk.py sorts it: entries, and subfolders as
    ``(prefix ending in '/', handle)``; a handle that is not text is pickled."""

    def key(self, item: Any) -> str:
        return item.name if isinstance(item, Entry) else item[0]

    def write(self, item: Any, out: BinaryIO) -> None:
        if isinstance(item, Entry):
            ENTRY_CODEC.write(item, out)
            return
        prefix, handle = item
        name = _encode(prefix)
        flags = _FOLDER if isinstance(handle, str) else _FOLDER | _PICKLED
        extra = _encode(handle) if isinstance(handle, str) else pickle.dumps(handle)
        out.write(_HEAD.pack(flags, 0, 0.0, len(name), len(extra)) + name + extra)

    def read(self, src: BinaryIO) -> Any:
        record = _read_record(src)
        if record is None:
            return None
        flags, size, mtime, name, extra = record
        if not flags & _FOLDER:
            return Entry(name, size, mtime, link=bool(flags & _LINK))
        return name, pickle.loads(extra) if flags & _PICKLED else _decode(extra)


ENTRY_CODEC = EntryCodec()
WALK_CODEC = WalkCodec()


class ExternalSorter(Generic[T]):
    """Add items in any order, then iterate them once in key order.

    Memory holds at most ``run_size`` items (plus one buffered item per run
    while merging); the rest waits in temporary files, removed by the
    system as soon as they are closed.
    """

    def __init__(self, codec: Codec[T], run_size: int = RUN_SIZE, folder: str | None = None):
        self.codec = codec
        self.run_size = max(1, run_size)
        self.folder = folder
        self.run: list[T] = []
        self.spilled: list[BinaryIO] = []
        self.count = 0

    def add(self, item: T) -> None:
        self.run.append(item)
        self.count += 1
        if len(self.run) >= self.run_size:
            self.spill()

    def extend(self, items: Iterable[T]) -> "ExternalSorter[T]":
        for item in items:
            self.add(item)
        return self

    @property
    def held(self) -> int:
        """Items held in memory now."""
        return len(self.run)

    def spill(self) -> None:
        """Write the items held in memory to disk as one sorted run."""
        if not self.run:
            return
        self.run.sort(key=self.codec.key)
        self._write_run(self.run)
        self.run = []
        if len(self.spilled) > MAX_FAN_IN:
            merged = self._merge(self.spilled[:MAX_FAN_IN])
            rest = self.spilled[MAX_FAN_IN:]
            self.spilled = []
            self._write_run(merged)
            self.spilled += rest

    def _write_run(self, items: Iterable[T]) -> None:
        out = tempfile.TemporaryFile(prefix="synctool-sort-", dir=self.folder)
        try:
            writer = io.BufferedWriter(out, _BUFFER)  # type: ignore[arg-type]
            write = self.codec.write
            for item in items:
                write(item, writer)
            writer.flush()
            writer.detach()
        except BaseException:
            out.close()
            raise
        self.spilled.append(out)  # type: ignore[arg-type]

    def _merge(self, runs: list[BinaryIO]) -> Iterator[T]:
        return heapq.merge(*(self._read_run(run) for run in runs), key=self.codec.key)

    def _read_run(self, run: BinaryIO) -> Iterator[T]:
        try:
            run.seek(0)
            src = io.BufferedReader(run, _BUFFER)  # type: ignore[arg-type]
            read = self.codec.read
            while (item := read(src)) is not None:
                yield item
        finally:
            run.close()

    def __iter__(self) -> Iterator[T]:
        """Every item added, in key order; the sorter is spent afterwards."""
        self.run.sort(key=self.codec.key)
        run, self.run = self.run, []
        runs, self.spilled = self.spilled, []
        if not runs:
            return iter(run)
        return heapq.merge(*(self._read_run(r) for r in runs), iter(run), key=self.codec.key)

    def close(self) -> None:
        """Drop what was added and not read (a walk stopped early)."""
        for run in self.spilled:
            run.close()
        self.spilled = []
        self.run = []


def sort_bounded(items: Iterable[T], codec: Codec[T], run_size: int = RUN_SIZE) -> Iterator[T]:
    """``items`` in key order, holding at most ``run_size`` of them in memory."""
    sorter = ExternalSorter(codec, run_size)
    try:
        sorter.extend(items)
        yield from sorter
    finally:
        sorter.close()

