"""A process's budget of bytes held in memory, shared by the jobs on its threads.

Counting parts or jobs does not bound memory when their sizes vary: 32 jobs
each holding a 5 MiB object weigh as much as 32 parts. A writer takes its
block's size from the budget before it reads a byte and gives it back once
the block is sent, so a process never holds more than the budget, whatever
mix of files it is copying (s3transfer bounds its memory the same way).

:func:`store` writes a file within the budget: in one request when it fits
one block, else in blocks (S3's multipart upload, Azure's staged blocks),
the source's chunks made into blocks (:func:`regroup`) and sent several at
once (:func:`send_blocks`).
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

import blake3

from synctool.backends.base import BackendError

T = TypeVar("T")
MiB = 1 << 20


class ByteBudget:
    """Up to ``capacity`` bytes taken at once; takers wait their turn, first come first served."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self.free = self.capacity
        self._turns: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    def take(self, n: int) -> int:
        """Wait until ``n`` bytes are free and take them; returns what to :meth:`give` back.

        A request larger than the whole budget waits for all of it, so one
        oversized block still goes through, alone. First come, first served:
        a large request is not starved by a stream of small ones.
        """
        n = min(max(n, 0), self.capacity)
        turn = object()
        with self._changed:
            self._turns.append(turn)
            try:
                while self._turns[0] is not turn or self.free < n:
                    self._changed.wait()
            finally:
                self._turns.remove(turn)
                self._changed.notify_all()  # the next in line may fit now
            self.free -= n
        return n

    def give(self, n: int) -> None:
        with self._changed:
            self.free += n
            self._changed.notify_all()


def regroup(chunks: Iterable[bytes], block_size: int, hasher) -> Iterator[bytearray]:
    """Regroup chunks into blocks of at least ``block_size`` (only the last is shorter).

    Chunks are never split: S3 parts and Azure blocks need not be equal.
    Each chunk is hashed and copied into its block as it comes and let go,
    so a block never exists twice (as its chunks and joined). The iterator
    is drained to its end before the last block is yielded.
    """
    box = [bytearray()]
    yielded = False
    for chunk in chunks:
        hasher.update(chunk)
        box[0] += chunk
        if len(box[0]) >= block_size:
            yielded = True
            yield _take(box)
    if box[0] or not yielded:
        yield _take(box)  # the tail, or the one empty block of an empty file


def _take(box: list[bytearray]) -> bytearray:
    """The block in ``box``, an empty one put in its place.

    A generator suspended at ``yield block`` keeps ``block`` alive while the
    caller uploads it, and after: the block must pass through no local name.
    """
    block, box[0] = box[0], bytearray()
    return block


def send_blocks(
    first: tuple[list[bytearray], int],
    blocks: Iterator[bytearray],
    budget: ByteBudget,
    pool: Executor,
    send: Callable[[int, bytearray], T],
    limit: int,
) -> tuple[list[T], int]:
    """Send blocks as they arrive, several at once in ``pool``, within ``budget``.

    ``first`` is the first block, in a list this empties, and the budget it
    holds. ``send(number, block)`` sends one block (numbered from 1) and
    returns what the commit needs of it. Returns those, in order, and the
    total size. On any failure, blocks still being sent finish (or are
    cancelled) before the exception is raised, so the caller's clean-up
    comes after the last of them.
    """
    futures: list[Future] = []
    failed: list[BaseException] = []
    size = 0
    block: bytearray | None = first[0].pop()
    held = first[1]
    share = len(block)  # what each further block takes: the block size, or a chunk more
    try:
        while block is not None:
            if len(futures) == limit:
                budget.give(held)
                raise BackendError(f"more than {limit} blocks: the file grew while being copied")
            size += len(block)
            futures.append(_submit(pool, budget, send, len(futures) + 1, block, held, failed))
            del block  # the pool holds it now; let it go once sent
            if failed:
                raise failed[0]
            # Take the next block's share before filling it, not after:
            # backpressure, and blocks being filled count against the budget too.
            held = budget.take(share)
            try:
                block = next(blocks, None)
            except BaseException:
                budget.give(held)
                raise
        budget.give(held)  # the share taken for a block that never came
        return [f.result() for f in futures], size
    except BaseException:
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()
        raise


def _submit(pool: Executor, budget: ByteBudget, send, number: int, block: bytearray, held: int, failed: list) -> Future:
    """Send one block in the pool; the ``held`` budget goes back when it is done."""
    try:
        future = pool.submit(send, number, block)
    except BaseException:
        budget.give(held)
        raise

    def done(f: Future) -> None:
        budget.give(held)
        if not f.cancelled() and f.exception() is not None:
            failed.append(f.exception())  # seen by the feeding loop: stop early

    future.add_done_callback(done)
    return future


def block_size_for(size: int, configured: int, headroom: int) -> int:
    """``configured``, grown (in whole MiB) so that ``size`` fits in ``headroom`` blocks.

    The headroom stays below the service's most blocks (parts), in case the
    file grew since it was listed.
    """
    needed = math.ceil(max(size, 0) / headroom)
    return max(configured, math.ceil(needed / MiB) * MiB)


def store(
    chunks: Iterable[bytes],
    size: int,
    block_size: int,
    budget: ByteBudget,
    whole: Callable[[bytearray, str], T],
    in_blocks: Callable[[tuple[list[bytearray], int], Iterator[bytearray], object], T],
) -> T:
    """Write ``chunks`` (``size`` bytes as listed) within ``budget``, hashing them with BLAKE3.

    Content that fits one block goes to ``whole(block, digest)`` in one
    request; a larger file to ``in_blocks(first, blocks, hasher)``, where
    ``first`` is as :func:`send_blocks` takes it.
    """
    hasher = blake3.blake3(max_threads=1)
    blocks = regroup(chunks, block_size, hasher)
    held = budget.take(min(size, block_size))  # before a byte is read: the memory bound
    try:
        first = next(blocks, bytearray())
    except BaseException:
        budget.give(held)
        raise
    if len(first) < block_size:
        # A short first block is also the last: the whole content is here.
        try:
            return whole(first, hasher.hexdigest())
        finally:
            budget.give(held)
    # Handed over in a list that the block upload empties: a local name
    # here would keep the block alive until the whole file is sent.
    handed, first = [first], None
    return in_blocks((handed, held), blocks, hasher)
