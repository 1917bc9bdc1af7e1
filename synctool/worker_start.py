"""How a worker process starts: forked, or as a fresh interpreter.

fork starts a worker in milliseconds with everything imported, and the
coordinator holds no connection a worker would use (each opens its own).
But a fork copies the memory of threads it does not copy: a thread caught
inside a C library (awscrt's event loops, alive while S3 lists; OpenSSL
under a listing's connection) leaves that library's locks and state
half-owned in the child, which then hangs or crashes (it crashed in our
tests). So a worker is forked only from a process that runs no other
thread: the coordinator starts its pool before it connects to either side
(an SFTP connection runs a thread) and before its listing threads. A
replacement for a worker that died mid-run, or a pool started by a caller
that runs threads of its own, is a fresh interpreter instead (its imports
cost a few tenths of a second). It is started with a plain exec rather than
multiprocessing's spawn or fork server, which would add helper processes
(a fork server, a resource tracker) that can die on their own and print
tracebacks when they do.

Either way a worker gets two pipes: its shards come down one, and what it
says goes up the other, which only the worker may hold the sending end of,
so that the pipe ends when the worker dies, even in the middle of a message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from synctool.interrupts import stop_signals_blocked
from workers.process import worker_main


@dataclasses.dataclass
class Started:
    process: Any  # pid, exitcode, is_alive(), join(timeout), terminate(), kill()
    jobs: Any  # put(packed shard or None), abandon()
    messages: Any  # the reading end of the worker's own pipe
    how: str  # "fork", "exec" or "spawn"


def start_worker(worker_id: int, args: tuple, log_level: int) -> Started:
    """Start worker ``worker_id`` with ``args`` (source spec, destination spec, settings)."""
    if not sys.platform.startswith("linux"):
        # dill pickles the worker's arguments for a spawned interpreter;
        # a fork needs no pickling, and the standard library's module loads
        # in a fraction of the time, which every run pays before its first copy.
        import multiprocess

        return _by_multiprocess(multiprocess.get_context("spawn"), worker_id, args, log_level)
    if other_threads_alive():
        return _by_exec(worker_id, args, log_level)
    return _by_multiprocess(multiprocessing.get_context("fork"), worker_id, args, log_level)


def other_threads_alive() -> bool:
    """Whether this process runs a thread besides the calling one (Python's or a C library's)."""
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:
        return threading.active_count() > 1


# -- forked (or spawned, where there is no fork) -------------------------------
class _QueueJobs:
    def __init__(self, queue: Any):
        self.queue = queue

    def put(self, item: bytes | None) -> None:
        self.queue.put(item)

    def abandon(self) -> None:
        """Shards that no one will read may fill the pipe, and Python would
        wait at exit for them to be sent."""
        self.queue.cancel_join_thread()
        self.queue.close()


def _by_multiprocess(ctx: Any, worker_id: int, args: tuple, log_level: int) -> Started:
    jobs = ctx.Queue()
    messages, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=worker_main,
        args=(worker_id, *args, jobs, sender, log_level),
        name=f"synctool-worker-{worker_id}",
        daemon=True,
    )
    with stop_signals_blocked():
        process.start()
    sender.close()
    return Started(process, _QueueJobs(jobs), messages, ctx.get_start_method())


# -- a fresh interpreter ------------------------------------------------------------
class _PipeJobs:
    """Shards down a pipe. A worker holds at most a couple of shards at a
    time (see synctool/pool.py), so a send finds room, or waits briefly."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def put(self, item: bytes | None) -> None:
        with contextlib.suppress(OSError):  # the worker died: the pool notices its exit
            self.conn.send_bytes(b"" if item is None else item)

    def abandon(self) -> None:
        self.conn.close()


class _ExecProcess:
    """A worker started by exec, with the part of multiprocessing's Process that the pool uses."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()  # negative for a signal, as multiprocessing's

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()


def _by_exec(worker_id: int, args: tuple, log_level: int) -> Started:
    jobs_read, jobs_write = os.pipe()
    messages_read, messages_write = os.pipe()
    # The descriptors travel in the command line; the arguments (secrets
    # among them) down the job pipe, never in the process list.
    code = f"import sys; sys.path[:0] = {sys.path!r}; from workers.process import exec_main; exec_main()"
    try:
        with stop_signals_blocked():  # held back until the worker's handlers are in place
            popen = subprocess.Popen(
                [sys.executable, "-c", code, str(jobs_read), str(messages_write)],
                pass_fds=(jobs_read, messages_write),
                stdin=subprocess.DEVNULL,
            )
    finally:
        os.close(jobs_read)
        os.close(messages_write)
    jobs = Connection(jobs_write, readable=False)
    with contextlib.suppress(OSError):  # it died already: the pool notices its exit
        jobs.send((worker_id, *args, log_level))
    return Started(_ExecProcess(popen), _PipeJobs(jobs), Connection(messages_read, writable=False), "exec")
