"""One retry policy for everything a run retries: listings, copies, renames, deletes.

Duplicati's three settings (backend-retries, backend-retry-delay,
backend-retry-with-exponential-backoff) decide how often and how long to
wait; full jitter around the delay keeps workers that failed together from
retrying together (as rclone's pacer and the AWS SDKs do).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from collections.abc import Callable
from typing import TypeVar

from synctool.backends.base import AlreadyExists, BackendError

MAX_BACKOFF_SECONDS = 60.0
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    delay: float = 1.0
    exponential: bool = True

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        base = self.delay * (2**attempt if self.exponential else 1)
        return min(MAX_BACKOFF_SECONDS, base * random.uniform(0.5, 1.5))

    def allows(self, attempt: int, retryable: bool = True) -> bool:
        """Whether a failure of try number ``attempt`` (from 0) is tried again."""
        return retryable and attempt < self.retries

    def call(self, fn: Callable[[], T], on_retry: Callable[[BackendError, float], None] | None = None) -> T:
        """``fn()``, tried again with backoff while it fails with a retryable
        :class:`BackendError`; the last error is raised. :class:`AlreadyExists`
        is never retried: the caller decides what a taken name means."""
        for attempt in itertools.count():
            try:
                return fn()
            except AlreadyExists:
                raise
            except BackendError as exc:
                if not self.allows(attempt, exc.retryable):
                    raise
                wait = self.backoff(attempt)
                if on_retry:
                    on_retry(exc, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")
