"""The coordinator's side of the worker processes.

Each worker has its own job channel, so the coordinator always knows which jobs
a worker holds: when a worker dies (killed, out of memory), those jobs come
back as failures to retry and a replacement starts. Each worker also has its
own pipe for what it sends back, never a queue shared with the others: a
worker killed while writing to a shared queue dies holding that queue's lock,
and every other worker then waits for it forever. At most
``SHARDS_PER_WORKER`` shards are handed to a worker at a time (one running,
one waiting), which bounds what is in flight the way s3transfer's semaphores
do, and lets a fast worker take more of the remaining work. How a worker
process starts (forked, or a fresh interpreter) is synctool/worker_start.py's.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import pickle
import time
from collections.abc import Sequence
from typing import Any

from multiprocessing.connection import wait as wait_for_readable

from synctool.backends import BackendSpec
from synctool.worker_start import start_worker
from workers.jobs import CONNECT_AHEAD, MSG_FATAL, MSG_LOG, MSG_PEAK, MSG_READY, MSG_RESULT, Job, Result, WorkerSettings, pack, unpack

log = logging.getLogger("synctool.pool")
worker_log = logging.getLogger("synctool.worker")

SHARDS_PER_WORKER = 2
# How long a worker gets to finish its cleanup after SIGTERM before SIGKILL.
TERMINATE_GRACE_SECONDS = 8.0


@dataclasses.dataclass
class _Worker:
    id: int
    process: Any
    jobs: Any
    messages: Any  # the reading end of the worker's pipe; None once it ended
    outstanding: dict[int, Job] = dataclasses.field(default_factory=dict)
    shards: list[set[int]] = dataclasses.field(default_factory=list)

    def open_shards(self) -> int:
        self.shards = [s for s in self.shards if s & self.outstanding.keys()]
        return len(self.shards)


class WorkerPool:
    def __init__(
        self,
        size: int,
        src: BackendSpec,
        dst: BackendSpec,
        settings: WorkerSettings,
        log_level: int,
    ):
        self.size = size
        self.args = (src, dst, settings)
        self.log_level = log_level
        self.workers: dict[int, _Worker] = {}
        self.pending: collections.deque[list[Job]] = collections.deque()
        self.next_id = 0
        self.peaks: dict[int, int] = {}
        self.fatal: str | None = None
        self.replaced = 0
        self.lost: set[str] = set()  # names of jobs held by workers that died: their writes may linger
        self.ahead = False  # workers are told to connect before their first shard

    # -- life cycle --------------------------------------------------------
    def start(self, wanted: int | None = None) -> None:
        """Have ``wanted`` workers running (at most ``size``; all of them by default)."""
        wanted = self.size if wanted is None else min(wanted, self.size)
        while len(self.workers) < wanted:
            self._spawn()

    def _spawn(self) -> _Worker:
        wid = self.next_id
        self.next_id += 1
        started = start_worker(wid, self.args, self.log_level)
        log.debug("worker %d: process %d, by %s", wid, started.process.pid, started.how)
        worker = _Worker(wid, started.process, started.jobs, started.messages)
        self.workers[wid] = worker
        if self.ahead:
            worker.jobs.put(CONNECT_AHEAD)
        return worker

    def connect_ahead(self) -> None:
        """Tell every worker, and every one started later, to open its connections now."""
        self.ahead = True
        for worker in self.workers.values():
            worker.jobs.put(CONNECT_AHEAD)

    def stop(self, cancel: bool = False) -> None:
        """End every worker: politely (a sentinel), or at once (SIGTERM, then SIGKILL)."""
        for w in self.workers.values():
            if cancel:
                w.process.terminate()
            else:
                w.jobs.put(None)
        deadline = time.monotonic() + (TERMINATE_GRACE_SECONDS if cancel else 60)
        # Keep reading the result queue while waiting: a child blocked on a
        # full pipe never exits (the classic multiprocessing join deadlock).
        alive = list(self.workers.values())
        while alive and time.monotonic() < deadline:
            self._drain()
            alive[0].process.join(0.005)
            alive = [w for w in alive if w.process.is_alive()]
        for w in alive:
            w.process.kill()
            w.process.join(1)
        self._drain()
        for w in self.workers.values():
            self._close(w)
            self._drop_jobs(w)  # a stopped worker reads no more shards
        self.workers.clear()

    def _drain(self) -> None:
        for w in list(self.workers.values()):
            self._receive(w)

    def _receive(self, worker: _Worker) -> list[tuple[str, int, Any]]:
        """Every message the worker's pipe holds now, booked with :meth:`_note`."""
        messages: list[tuple[str, int, Any]] = []
        conn = worker.messages
        try:
            while conn is not None and conn.poll():
                message = unpack(conn.recv_bytes())
                self._note(*message)
                messages.append(message)
        except (EOFError, OSError, pickle.UnpicklingError):
            # The worker ended (a message cut short by its death included);
            # _reap sees its exit and hands back the jobs it still held.
            self._close(worker)
        return messages

    @staticmethod
    def _close(worker: _Worker) -> None:
        if worker.messages is not None:
            worker.messages.close()
            worker.messages = None

    @staticmethod
    def _drop_jobs(worker: _Worker) -> None:
        """Let go of a dead worker's job channel: no one will read it."""
        worker.jobs.abandon()

    def _note(self, kind: str, wid: int, payload: Any) -> None:
        """Book-keeping for every message; the coordinator sees results and bytes."""
        worker = self.workers.get(wid)
        if kind == MSG_RESULT and worker is not None:
            for result in payload:
                worker.outstanding.pop(result.job_id, None)
        elif kind == MSG_PEAK:
            self.peaks[wid] = payload
        elif kind == MSG_FATAL:
            self.fatal = payload
        elif kind == MSG_LOG:
            worker_log.log(payload[0], "%s", payload[1])
        elif kind == MSG_READY:
            log.debug("worker %d started as process %d", wid, payload)

    # -- work ----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self.pending) + sum(len(w.outstanding) for w in self.workers.values())

    def submit(self, shard: list[Job]) -> None:
        if shard:
            self.pending.append(shard)
            self._dispatch()

    def _dispatch(self) -> None:
        while self.pending:
            idle = [w for w in self.workers.values() if w.open_shards() < SHARDS_PER_WORKER]
            if not idle:
                return
            worker = min(idle, key=lambda w: len(w.outstanding))
            shard = self.pending.popleft()
            worker.outstanding.update((j.id, j) for j in shard)
            worker.shards.append({j.id for j in shard})
            worker.jobs.put(pack(shard))

    def poll(self, timeout: float, wake: Sequence[Any] = ()) -> list[tuple[str, int, Any]]:
        """Messages from the workers; a dead worker's jobs come back as failed results.

        Waits up to ``timeout`` for the first message, or until one of
        ``wake`` (objects with a ``fileno``) becomes readable.
        """
        readers = {w.messages: w for w in self.workers.values() if w.messages is not None}
        messages: list[tuple[str, int, Any]] = []
        if readers or wake:
            for conn in wait_for_readable([*readers, *wake], timeout):
                if conn in readers:
                    messages.extend(self._receive(readers[conn]))
        else:
            time.sleep(timeout)  # every pipe has ended: _reap starts the replacements
        messages.extend(self._reap())
        self._dispatch()
        return messages

    def _reap(self) -> list[tuple[str, int, Any]]:
        """Replace dead workers; hand their unfinished jobs back as retryable failures."""
        lost: list[tuple[str, int, Any]] = []
        for wid, worker in list(self.workers.items()):
            code = worker.process.exitcode
            if code is None:
                continue
            lost.extend(self._receive(worker))  # what it sent before it died still counts
            self._close(worker)
            self._drop_jobs(worker)
            del self.workers[wid]
            if self.fatal:
                continue  # it could not open its backends: the coordinator ends the run
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.warning(
                "worker %d (process %d) died (%s) holding %d job(s); starting a replacement",
                wid,
                worker.process.pid,
                how,
                len(worker.outstanding),
            )
            lost.append(
                (
                    MSG_RESULT,
                    wid,
                    [Result(j.id, False, error=f"{j.name}: worker process died ({how})") for j in worker.outstanding.values()],
                )
            )
            self.lost.update(j.name for j in worker.outstanding.values())
            self.replaced += 1
            self._spawn()
        return lost
