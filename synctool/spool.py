"""A list that lives on disk: what a run must hold until the end, in bounded memory.

Deletes and renames wait until every copy succeeded, copies blocked by a
destination-only entry wait for the removals, and a plan to be confirmed
waits for the answer. At millions of files none of that fits comfortably
in memory, so it is appended to an unlinked temporary file in pickled
batches and read back in the order it was written.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
BATCH = 1024  # records pickled together: one pickle per record costs far more


class Spool(Generic[T]):
    def __init__(self) -> None:
        self._file: Any = None  # created on the first record: most runs spool nothing
        self._batch: list[T] = []
        self.count = 0

    def append(self, item: T) -> None:
        self._batch.append(item)
        self.count += 1
        if len(self._batch) >= BATCH:
            self._flush()

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def _flush(self) -> None:
        if not self._batch:
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="synctool-spool-")
        self._file.seek(0, 2)
        pickle.dump(self._batch, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._batch = []

    def __iter__(self) -> Iterator[T]:
        """Every record in the order appended; appending while reading is not allowed."""
        if self._file is not None:
            self._file.seek(0)
            while True:
                try:
                    batch = pickle.load(self._file)
                except EOFError:
                    break
                position = self._file.tell()
                yield from batch
                self._file.seek(position)
        yield from list(self._batch)

    def batches(self, size: int) -> Iterator[list[T]]:
        batch: list[T] = []
        for item in self:
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._batch = []
        self.count = 0
