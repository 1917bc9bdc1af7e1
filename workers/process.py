"""The main loop of one worker process.

It opens its own backend connections once, after the process has started
(boto3 clients and SSH sessions must not cross a fork), then takes shards of
jobs from its queue and runs them with workers/shard.py's ShardRunner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from synctool.backends import Backend, BackendSpec, open_backend
from synctool.interrupts import unblock_stop_signals
from synctool.secrets import redact
from workers.jobs import CONNECT_AHEAD, MSG_FATAL, MSG_PEAK, MSG_READY, WorkerSettings, pack, unpack
from workers.memory import limit_malloc_arenas
from workers.shard import OutboxLogHandler, ShardRunner, peak_rss

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
            self.conn.send_bytes(pack(message))


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


class _PipeInbox:
    """The job pipe of a worker started by exec (see synctool/worker_start.py),
    read as the queue of a forked one: an empty message, or the coordinator
    gone, is the end."""

    def __init__(self, conn: Any):
        self.conn = conn

    def get(self) -> bytes | None:
        try:
            return self.conn.recv_bytes() or None
        except (EOFError, OSError):
            return None


def exec_main() -> None:
    """Entry point of a worker started as a fresh interpreter: the descriptors
    of its two pipes in the command line, its arguments the first message."""
    from multiprocessing.connection import Connection

    jobs = Connection(int(sys.argv[1]), writable=False)
    results = Connection(int(sys.argv[2]), readable=False)
    worker_id, src_spec, dst_spec, settings, log_level = jobs.recv()
    worker_main(worker_id, src_spec, dst_spec, settings, _PipeInbox(jobs), results, log_level)


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
    root.handlers[:] = [OutboxLogHandler(results, worker_id)]
    root.setLevel(log_level)
    root.propagate = False

    try:
        with stop.interruptible():
            src, dst = open_backend(src_spec), open_backend(dst_spec)
    except Exception as exc:
        results.put((MSG_FATAL, worker_id, redact(str(exc))))
        return
    runner = ShardRunner(src, dst, settings, cancel, results, worker_id, f"w{worker_id}")
    results.put((MSG_READY, worker_id, os.getpid()))
    ahead = _ConnectAhead(dst, src)
    try:
        while True:
            with stop.interruptible():
                packed = jobs.get()
            if packed is None:
                break
            if packed == CONNECT_AHEAD:
                ahead.start()
                continue
            runner.start(unpack(packed), stop.interruptible)
        runner.shutdown()
    except SystemExit:
        # Stopping: running jobs see `cancel` at their next chunk and abort
        # their writes; queued ones are dropped. A job stuck in a network
        # call gets a few seconds, then the process goes regardless.
        threading.Timer(STOP_GRACE_SECONDS, os._exit, (130,)).start()
        runner.shutdown(cancel=True)
        os._exit(130)
    finally:
        results.put((MSG_PEAK, worker_id, peak_rss()))
        for backend in (src, dst):
            # One still logging in was used by no job (a job would have
            # waited for that login), and closing it would wait for the login
            # (seconds across a slow network) for nothing.
            if backend is not ahead.connecting:
                backend.close()


class _ConnectAhead:
    """Backend.connect_ahead for each backend in turn, in a thread of its own, once."""

    def __init__(self, *backends: Backend):
        self.backends = backends
        self.connecting: Backend | None = None  # the one whose connect_ahead is under way
        self.thread = threading.Thread(target=self._run, name="connect-ahead", daemon=True)

    def start(self) -> None:
        if self.thread.ident is None:
            self.thread.start()

    def _run(self) -> None:
        for backend in self.backends:
            self.connecting = backend
            try:
                backend.connect_ahead()
            except Exception as exc:  # noqa: BLE001 - the first job connects again and says why
                logging.getLogger("synctool.worker").debug("connecting ahead failed: %s", redact(str(exc)))
        self.connecting = None
