"""Running a shard of jobs on a process's open backends: one code path for
the worker processes of this host and for the tasks on a Dask cluster.

Jobs run on a few threads (network and disk waits release the GIL, so
several small files stay in flight at once); every result, progress step and
log line goes out through an *outbox*, whatever carries it (a pipe to the
coordinator, or the Dask scheduler's events).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from synctool.backends.base import AlreadyExists, Backend, BackendError
from synctool.secrets import redact
from workers.jobs import COMPARE, MSG_BYTES, MSG_LOG, MSG_RESULT, Job, Result, WorkerSettings
from workers.journal import Journal
from workers.memory import release_free_memory
from workers.transfer import compare_file, copy_file

# A job that moved this much leaves megabyte blocks freed in its thread's
# arena; they go back to the system when it ends.
TRIM_AFTER_BYTES = 1 << 20


class Outbox(Protocol):
    def put(self, message: tuple) -> None:
        """Send (kind, worker id, payload) to the coordinator; safe from any thread."""


class OutboxLogHandler(logging.Handler):
    """Send log records to the coordinator, which owns the log file and stderr."""

    def __init__(self, outbox: Outbox, worker_id: int):
        super().__init__()
        self.outbox = outbox
        self.worker_id = worker_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.outbox.put((MSG_LOG, self.worker_id, (record.levelno, redact(record.getMessage()))))
        except Exception:  # a closing channel must not kill a job
            pass


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes (Linux VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _ByteMeter:
    """Progress of one job's stream, reported every ``step`` bytes.

    The job's result carries its total; these messages only keep a large
    transfer's progress moving, so a small file sends none.
    """

    def __init__(self, outbox: Outbox, worker_id: int, job_id: int, step: int):
        self.outbox, self.worker_id, self.job_id, self.step = outbox, worker_id, job_id, step
        self.pending = 0

    def __call__(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.step:
            self.outbox.put((MSG_BYTES, self.worker_id, (self.job_id, self.pending)))
            self.pending = 0


class _ResultBatch:
    """Results go back a batch at a time: one message per result costs more
    (pickling, a pipe write, a thread hand-off) than copying a small file."""

    MAX_RESULTS = 64
    MAX_DELAY = 0.1  # seconds a finished result may wait for company

    def __init__(self, outbox: Outbox, worker_id: int):
        self.outbox, self.worker_id = outbox, worker_id
        self.items: list[Result] = []
        self.oldest = 0.0
        self.lock = threading.Lock()

    def add(self, result: Result, shard_done: bool) -> None:
        with self.lock:
            if not self.items:
                self.oldest = time.monotonic()
            self.items.append(result)
            due = shard_done or len(self.items) >= self.MAX_RESULTS or time.monotonic() - self.oldest > self.MAX_DELAY
            if not due:
                return
            items, self.items = self.items, []
        self.outbox.put((MSG_RESULT, self.worker_id, items))


def run_job(job: Job, src, dst, settings: WorkerSettings, cancel: threading.Event, outbox: Outbox, worker_id: int) -> Result:
    meter = _ByteMeter(outbox, worker_id, job.id, settings.progress_step)
    try:
        if job.kind == COMPARE:
            digest, same = compare_file(job, src, dst, cancel=cancel)
            return Result(job.id, True, bytes=job.size + job.dst_size, digest=digest, same=same)
        copied = copy_file(job, src, dst, verify=settings.verify_get_after_put, cancel=cancel, on_bytes=meter)
        return Result(
            job.id, True, bytes=copied.bytes, digest=copied.digest, verified=copied.verified, skipped=copied.skipped
        )
    except Exception as exc:  # every failure becomes a report, never a dead worker
        message = str(exc) if getattr(exc, "args", None) else type(exc).__name__
        if job.name not in message:
            message = f"{job.name}: {message}"
        return Result(
            job.id,
            False,
            error=redact(message),
            retryable=getattr(exc, "retryable", True),
            conflict=exc.name if isinstance(exc, AlreadyExists) else None,
        )


class _Countdown:
    """The jobs of one shard still running; the last one ends its journal.

    Only a shard whose every copy was read back ends it: a failed or
    cancelled job may have left an object that no one read back (its
    removal can fail too), and the next run compares what the journal names.
    """

    def __init__(self, n: int, journal: Journal | None):
        self.n = n
        self.journal = journal
        self.all_ok = True
        self.lock = threading.Lock()

    def tick(self, result: Result) -> bool:
        """Count ``result``'s job done; True for the last (whose result is not sent yet)."""
        with self.lock:
            self.n -= 1
            self.all_ok = self.all_ok and result.ok
            last = self.n == 0
        if last and self.all_ok and self.journal is not None:
            self.journal.finish()
        return last


class ShardRunner:
    """Runs shards on one process's backends; every result goes out through ``outbox``.

    Backends that gain nothing from threads (local disks) run jobs inline,
    in the caller's thread: handing each small file to a thread costs more
    than copying it.
    """

    def __init__(
        self,
        src: Backend,
        dst: Backend,
        settings: WorkerSettings,
        cancel: threading.Event,
        outbox: Outbox,
        worker_id: int,
        thread_prefix: str,
    ):
        self.src, self.dst, self.settings, self.cancel = src, dst, settings, cancel
        # A write whose blocks are still being sent when the stop comes must not commit them.
        src.stopping = dst.stopping = cancel
        self.outbox, self.worker_id = outbox, worker_id
        self.batch = _ResultBatch(outbox, worker_id)
        threads = settings.threads or max(src.concurrency, dst.concurrency)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=thread_prefix) if threads > 1 else None

    def start(
        self,
        shard: list[Job],
        interruptible: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Run ``shard``: on the threads (this returns at once), or inline (this
        returns when it is done, each job inside ``interruptible()``).
        ``on_done`` runs once the shard's last result is sent."""
        done = on_done or (lambda: None)
        try:
            journal = Journal.start(self.dst, shard, self.settings.verify_get_after_put)
        except BackendError as exc:
            for i, job in enumerate(shard):
                failed = Result(job.id, False, error=redact(f"{job.name}: cannot record it as unverified: {exc}"))
                self.batch.add(failed, shard_done=i == len(shard) - 1)
            done()
            return
        left = _Countdown(len(shard), journal)
        if self.pool is None:
            for job in shard:
                # No other thread shares this one's locks, and a write cut
                # short by SystemExit removes its temporary file.
                with interruptible():
                    result = self._run(job)
                self._book(result, left, done)
            return
        for job in shard:
            self.pool.submit(self._run, job).add_done_callback(functools.partial(self._booked, left=left, done=done))

    def _run(self, job: Job) -> Result:
        result = run_job(job, self.src, self.dst, self.settings, self.cancel, self.outbox, self.worker_id)
        if job.size >= TRIM_AFTER_BYTES:
            release_free_memory()  # the job's blocks are free now: see workers/memory.py
        return result

    def _book(self, result: Result, left: _Countdown, done: Callable[[], None]) -> None:
        last = left.tick(result)
        self.batch.add(result, shard_done=last)
        if last:
            done()

    def _booked(self, future: Future, left: _Countdown, done: Callable[[], None]) -> None:
        if future.cancelled():  # dropped by a stop: no one waits for its result
            return
        self._book(future.result(), left, done)

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for the running jobs; with ``cancel`` drop the queued ones."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)
