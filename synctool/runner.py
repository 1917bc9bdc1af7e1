"""Run jobs on an executor as they come: shards cut from a bounded window, results booked, failures retried.

The plan hands jobs over one at a time, while the listing is still going on.
They gather into a shard until it is full (many small files go together, a
large one travels alone), or until a worker would otherwise sit idle. At most
``max_in_flight`` jobs are handed to the executor and not yet answered: past
that :attr:`has_room` is False and the caller stops taking jobs from the plan,
which stops the plan taking entries from the listings (the backpressure of
s3transfer's bounded executor). Memory therefore holds a window of jobs,
whatever the number of files.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from synctool.errors import SyncError
from synctool.executor import Executor
from synctool.logs import RETRY
from synctool.plan import MAX_NAME_CONFLICTS
from synctool.retry import RetryPolicy
from workers.jobs import COMPARE, COPY, MSG_BYTES, MSG_RESULT, Job, Result

log = logging.getLogger("synctool")

MAX_SHARD_BYTES = 64 << 20
MAX_SHARD_FILES = 64
# Shards a worker holds (running and waiting) before the runner stops taking jobs.
SHARDS_AHEAD_PER_WORKER = 4


class JobRunner:
    """Hands jobs to ``executor`` and calls back with each one's final outcome.

    ``on_success(job, result)`` for a job done; ``on_failure(job, error)`` for
    one that failed for good; ``on_bytes(n)`` as bytes stream;
    ``retention_name(name, taken)`` gives the next free retention name when
    another writer took the one chosen.
    """

    def __init__(
        self,
        executor: Executor,
        workers: int,
        retry: RetryPolicy,
        on_success: Callable[[Job, Result], None],
        on_failure: Callable[[Job, str], None],
        on_bytes: Callable[[int], None],
        retention_name: Callable[[str, str], str],
    ):
        self.executor = executor
        self.workers = workers
        self.retry = retry
        self.on_success = on_success
        self.on_failure = on_failure
        self.on_bytes = on_bytes
        self.retention_name = retention_name
        self.max_in_flight = workers * SHARDS_AHEAD_PER_WORKER * MAX_SHARD_FILES
        self.ids = itertools.count(1)
        self.waiting: dict[int, Job] = {}  # handed over (or due for a retry), not yet settled
        self.retry_at: list[tuple[float, int, Job]] = []
        self.streamed: dict[int, int] = {}  # job id -> bytes reported while in flight
        self.shard: list[Job] = []
        self.shard_bytes = 0
        self.retries = 0
        self.retrying = True  # False once the run is ending: a failure is then final

    # -- taking jobs ---------------------------------------------------------
    def add(self, kind: str, name: str, size: int, mtime: float, keep_old_as: str | None = None, **fields) -> Job:
        """A new job, gathered into the shard being cut."""
        job = Job(next(self.ids), kind, name, size, mtime, keep_old_as, **fields)
        self.waiting[job.id] = job
        if size >= MAX_SHARD_BYTES:
            self._submit([job])
            return job
        if self.shard and (len(self.shard) >= MAX_SHARD_FILES or self.shard_bytes + size > MAX_SHARD_BYTES):
            self.flush()
        self.shard.append(job)
        self.shard_bytes += size
        return job

    def flush(self) -> None:
        """Hand over the shard being cut, however small."""
        if self.shard:
            self._submit(self.shard)
            self.shard, self.shard_bytes = [], 0

    def _submit(self, shard: list[Job]) -> None:
        self.executor.submit(shard)

    @property
    def has_room(self) -> bool:
        return self.executor.in_flight + len(self.shard) < self.max_in_flight

    @property
    def hungry(self) -> bool:
        """Whether a worker may be idle: the shard being cut should go now."""
        return self.executor.in_flight < self.workers * MAX_SHARD_FILES

    @property
    def busy(self) -> bool:
        return bool(self.waiting)

    # -- results -------------------------------------------------------------
    def pump(self, timeout: float, wake: Sequence[Any] = ()) -> None:
        """Wait up to ``timeout`` seconds for results (or for one of ``wake``
        to become readable, see Executor.poll), and book those that came."""
        now = time.monotonic()
        due = []
        while self.retry_at and self.retry_at[0][0] <= now:
            due.append(heapq.heappop(self.retry_at)[2])
        if due:
            self._submit(due)
        if self.executor.fatal:
            raise SyncError(f"a worker could not open the backends: {self.executor.fatal}")
        if self.retry_at:
            timeout = min(timeout, max(0.0, self.retry_at[0][0] - now))
        for kind, _wid, payload in self.executor.poll(timeout, wake):
            if kind == MSG_BYTES:
                job_id, n = payload
                self.streamed[job_id] = self.streamed.get(job_id, 0) + n
                self.on_bytes(n)
            elif kind == MSG_RESULT:
                for result in payload:
                    job = self.waiting.get(result.job_id)
                    if job is not None:
                        # The result's own count replaces what was streamed.
                        self.on_bytes(result.bytes - self.streamed.pop(job.id, 0))
                        self._settle(job, result, now)

    def drain(self, check: Callable[[], None]) -> None:
        """Hand over what is left and wait until every job is settled."""
        self.flush()
        while self.waiting:
            check()
            self.pump(0.2)

    def stop_retrying(self, why: str) -> None:
        """The run is ending: a job waiting to be tried again fails with ``why``,
        and one that fails from now on fails for good."""
        self.retrying = False
        for _, _, job in self.retry_at:
            del self.waiting[job.id]
            self.on_failure(job, why)
        self.retry_at.clear()

    def _settle(self, job: Job, result: Result, now: float) -> None:
        """Book a job's result: done, to retry after a backoff, or failed for good."""
        if result.ok:
            del self.waiting[job.id]
            self.on_success(job, result)
        elif not self.retrying:
            del self.waiting[job.id]
            self.on_failure(job, result.error or "failed")
        elif result.conflict is not None and result.conflict == job.keep_old_as and job.attempt < MAX_NAME_CONFLICTS:
            # Another writer took the chosen retention name since the listing:
            # keep the old version under the next free one instead.
            job.attempt += 1
            job.keep_old_as = self.retention_name(job.name, result.conflict)
            log.log(RETRY, "%s; keeping the old version as %s instead", result.error, job.keep_old_as)
            heapq.heappush(self.retry_at, (now, job.id, job))
        elif result.conflict is not None and result.conflict == job.name and job.kind == COPY and job.attempt > 0:
            # An earlier attempt may have written it, its result lost with a
            # dead worker or a dropped connection: the same content there is
            # that copy; anything else is another writer's, and stays.
            job.kind, job.dst_size = COMPARE, job.size
            job.rechecking = True
            heapq.heappush(self.retry_at, (now, job.id, job))
        elif self.retry.allows(job.attempt, result.retryable):
            job.attempt += 1
            self.retries += 1
            delay = self.retry.backoff(job.attempt - 1)
            log.log(RETRY, "%s; retry %d of %d in %.1f s", result.error, job.attempt, self.retry.retries, delay)
            heapq.heappush(self.retry_at, (now + delay, job.id, job))
        else:
            del self.waiting[job.id]
            self.on_failure(job, result.error or "failed")
