"""A process's budget of bytes held in memory, shared by the jobs on its threads.

Counting parts or jobs does not bound memory when their sizes vary: 32 jobs
each holding a 5 MiB object weigh as much as 32 parts. A writer takes its
block's size from the budget before it reads a byte and gives it back once
the block is sent, so a process never holds more than the budget, whatever
mix of files it is copying (s3transfer bounds its memory the same way).
"""

from __future__ import annotations

import collections
import threading


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
