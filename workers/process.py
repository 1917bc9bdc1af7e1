"""The main loop of one worker process.

It opens its own backend connections once, after the process has started
(boto3 clients and SSH sessions must not cross a fork), then takes shards of
jobs from its queue and runs them on a few threads: network and disk waits
release the GIL, so several small files stay in flight at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from synctool.backends import BackendSpec, open_backend
from synctool.backends.base import AlreadyExists, BackendError
from synctool.interrupts import unblock_stop_signals
from synctool.secrets import redact
from workers.jobs import (
    COMPARE,
    MSG_BYTES,
    MSG_FATAL,
    MSG_LOG,
    MSG_PEAK,
    MSG_READY,
    MSG_RESULT,
    Job,
    Result,
    WorkerSettings,
)
from workers.journal import Journal
from workers.memory import limit_malloc_arenas, release_free_memory
from workers.transfer import compare_file, copy_file

# A job that moved this much leaves megabyte blocks freed in its thread's
# arena; they go back to the system when it ends.
TRIM_AFTER_BYTES = 1 << 20
# Once told to stop, how long running jobs get to abandon their writes
# (remove temporary files, abort multipart uploads) before the process exits.
STOP_GRACE_SECONDS = 5.0


class _Outbox:
    """This worker's end of its own pipe to the coordinator.

    Several threads send (results, progress, log lines), so they take
    turns; the lock is this process's own, and dies with it.
    """

    def __init__(self, conn: Any):
        self.conn = conn
        self.lock = threading.Lock()

    def put(self, message: tuple) -> None:
        with self.lock:
            self.conn.send(message)


class _QueueLogHandler(logging.Handler):
    """Send log records to the coordinator, which owns the log file and stderr."""

    def __init__(self, queue: Any, worker_id: int):
        super().__init__()
        self.queue = queue
        self.worker_id = worker_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put((MSG_LOG, self.worker_id, (record.levelno, redact(record.getMessage()))))
        except Exception:  # a closing queue must not kill a job
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

    def __init__(self, queue: Any, worker_id: int, job_id: int, step: int):
        self.queue, self.worker_id, self.job_id, self.step = queue, worker_id, job_id, step
        self.pending = 0

    def __call__(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.step:
            self.queue.put((MSG_BYTES, self.worker_id, (self.job_id, self.pending)))
            self.pending = 0


class _ResultBatch:
    """Results go back a batch at a time: one queue message per result costs
    more (pickling, a pipe write, a thread hand-off) than copying a small file."""

    MAX_RESULTS = 64
    MAX_DELAY = 0.1  # seconds a finished result may wait for company

    def __init__(self, queue: Any, worker_id: int):
        self.queue, self.worker_id = queue, worker_id
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
        self.queue.put((MSG_RESULT, self.worker_id, items))


def run_job(job: Job, src, dst, settings: WorkerSettings, cancel: threading.Event, results: Any, worker_id: int) -> Result:
    meter = _ByteMeter(results, worker_id, job.id, settings.progress_step)
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


class _StopSignal:
    """SIGTERM from the coordinator: every job sees ``cancel`` at its next chunk.

    The main thread is stopped at once (SystemExit) only inside
    :meth:`interruptible` blocks: opening the backends, waiting for a shard,
    or running a job itself. Elsewhere it may hold a lock the jobs' threads need (the
    pipe's, the thread pool's); a SystemExit there leaves it held, and the
    stop hangs on it until the grace timer kills the process, jobs mid-write
    included. There the stop waits for the next block.
    """

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.may_raise = False

    def handler(self, signum: int, frame: object) -> None:
        self.cancel.set()
        if self.may_raise:
            raise SystemExit(130)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.may_raise = True
        try:
            if self.cancel.is_set():  # the signal came before the block
                raise SystemExit(130)
            yield
        finally:
            self.may_raise = False


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


def worker_main(
    worker_id: int,
    src_spec: BackendSpec,
    dst_spec: BackendSpec,
    settings: WorkerSettings,
    jobs: Any,
    results: Any,
    log_level: int,
) -> None:
    """Entry point of a worker process; ``results`` is the sending end of its pipe."""
    results = _Outbox(results)
    # Ctrl-C reaches the whole process group; the coordinator decides what
    # happens and tells the workers with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = _StopSignal()
    cancel = stop.cancel
    signal.signal(signal.SIGTERM, stop.handler)
    unblock_stop_signals()  # blocked while the coordinator forked this process
    limit_malloc_arenas()  # before any thread starts: see workers/memory.py

    root = logging.getLogger("synctool")
    root.handlers[:] = [_QueueLogHandler(results, worker_id)]
    root.setLevel(log_level)
    root.propagate = False

    try:
        with stop.interruptible():
            src, dst = open_backend(src_spec), open_backend(dst_spec)
    except Exception as exc:
        results.put((MSG_FATAL, worker_id, redact(str(exc))))
        return
    # A write whose blocks are still being sent when the stop comes must not commit them.
    src.stopping = dst.stopping = cancel
    threads = settings.threads or max(src.concurrency, dst.concurrency)
    batch = _ResultBatch(results, worker_id)
    results.put((MSG_READY, worker_id, os.getpid()))

    def run(job: Job) -> Result:
        result = run_job(job, src, dst, settings, cancel, results, worker_id)
        if job.size >= TRIM_AFTER_BYTES:
            release_free_memory()  # the job's blocks are free now: see workers/memory.py
        return result

    def book(future: Future, left: _Countdown) -> None:
        if future.cancelled():  # dropped by a stop: no one waits for its result
            return
        result = future.result()
        batch.add(result, shard_done=left.tick(result))

    # Backends that gain nothing from threads (local disks) run jobs inline:
    # handing each small file to a thread costs more than copying it.
    pool = ThreadPoolExecutor(threads, thread_name_prefix=f"w{worker_id}") if threads > 1 else None
    try:
        while True:
            with stop.interruptible():
                shard = jobs.get()
            if shard is None:
                break
            try:
                journal = Journal.start(dst, shard, settings.verify_get_after_put)
            except BackendError as exc:
                for i, job in enumerate(shard):
                    failed = Result(job.id, False, error=redact(f"{job.name}: cannot record it as unverified: {exc}"))
                    batch.add(failed, shard_done=i == len(shard) - 1)
                continue
            left = _Countdown(len(shard), journal)
            if pool is None:
                for job in shard:
                    # No other thread shares this one's locks, and a write
                    # cut short by SystemExit removes its temporary file.
                    with stop.interruptible():
                        result = run(job)
                    batch.add(result, shard_done=left.tick(result))
                continue
            for job in shard:
                pool.submit(run, job).add_done_callback(functools.partial(book, left=left))
        if pool is not None:
            pool.shutdown(wait=True)
    except SystemExit:
        # Stopping: running jobs see `cancel` at their next chunk and abort
        # their writes; queued ones are dropped. A job stuck in a network
        # call gets a few seconds, then the process goes regardless.
        threading.Timer(STOP_GRACE_SECONDS, os._exit, (130,)).start()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        os._exit(130)
    finally:
        results.put((MSG_PEAK, worker_id, peak_rss()))
        src.close()
        dst.close()
