"""The shards of a run as tasks on a Dask cluster (``--scheduler ADDRESS``).

The coordinator lists, plans, retries and deletes exactly as on one host;
this executor only carries shards to the cluster's workers and their
results back. What runs there is workers/dask_tasks.py.

- The backend specs travel once, in the run's worker plugin; a task names
  it by an opaque id, and task keys are ``synctool-shard-<run>-<n>``.
- Results, progress and log lines come back as events on the run's topic
  as the jobs finish; each task's last event says how it ended.
- A worker that dies takes its running tasks with it: their unanswered jobs
  come back as failed, retryable results, as a dead worker process's do,
  and the coordinator retries them under new keys (Dask's own re-run of the
  task refuses to run them a second time; see ``RunPlugin.claim``).
- A lost scheduler ends the run with an error before anything is deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import pickle
import queue
import secrets
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as wait_for_readable
from typing import Any

import distributed

from synctool.backends import BackendSpec, open_backend
from synctool.doorbell import Doorbell
from synctool.errors import SyncError
from workers.dask_tasks import DONE, FATAL, LOST, MSG_END, STOP_GRACE_SECONDS, RunPlugin, check_worker, run_shard
from workers.jobs import MSG_BYTES, MSG_FATAL, MSG_LOG, MSG_PEAK, MSG_RESULT, Job, Result, WorkerSettings

log = logging.getLogger("synctool.dask")
worker_log = logging.getLogger("synctool.worker")

CONNECT_SECONDS = 10.0
# How long a run waits for a first worker to join the scheduler.
WORKER_WAIT_SECONDS = 20.0
# A clean-up call to the cluster that takes longer is given up: the run ends regardless.
CLEANUP_SECONDS = STOP_GRACE_SECONDS + 5.0
_DONE_CALLBACK = "future-done"


@dataclasses.dataclass
class _Task:
    key: str
    future: Any
    jobs: dict[int, Job]  # the jobs not answered yet


def absolute(spec: BackendSpec) -> BackendSpec:
    """A local folder as an absolute file:// URL: each worker resolves the
    path itself, from its own working directory."""
    if spec.location.scheme != "file":
        return spec
    return BackendSpec(pathlib.Path(open_backend(spec).root).as_uri(), spec.options)


class DaskExecutor:
    def __init__(self, address: str, src: BackendSpec, dst: BackendSpec, settings: WorkerSettings, log_level: int):
        self.address = address
        self.token = secrets.token_hex(4)
        self.plugin = RunPlugin(self.token, absolute(src), absolute(dst), settings, log_level)
        self.client: distributed.Client | None = None
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.inbox_bell = Doorbell()  # rung by the client's threads after each put
        self.tasks: dict[str, _Task] = {}
        self.owner: dict[int, str] = {}  # job id -> key of the task holding it
        self.count = 0
        self.workers_checked = False
        self.worker_ids: dict[str, int] = {}
        self.peaks: dict[int, int] = {}
        self.fatal: str | None = None
        self.replaced = 0
        self.lost: set[str] = set()
        self.quieted: Callable[[], None] = lambda: None

    # -- life cycle --------------------------------------------------------
    def start(self, wanted: int | None = None) -> None:
        """Connect to the scheduler and hand the run's backends to every worker."""
        if self.client is not None:
            return
        if self.address.startswith("tls://") and distributed.Security().get_connection_args("client").get("ssl_context") is None:
            raise SyncError(f"cannot reach the Dask scheduler at {self.address}: TLS is not set up for this client; "
                            "set DASK_DISTRIBUTED__COMM__TLS__CA_FILE, __CLIENT__CERT and __CLIENT__KEY (see README.md)")  # fmt: skip
        # Dask's own log lines (a reconnection's tracebacks) are not this
        # run's output: the run says in its own words what went wrong.
        self.quieted = _quiet("distributed")
        try:
            self.client = distributed.Client(self.address, timeout=CONNECT_SECONDS, set_as_default=False)
        except Exception as exc:
            raise SyncError(f"cannot reach the Dask scheduler at {self.address}: {exc}") from None
        self.client.subscribe_topic(self.plugin.topic, self._on_event)
        answers = self.client.register_plugin(self.plugin, name=self.plugin.name)
        for address, answer in (answers or {}).items():
            if isinstance(answer, dict) and answer.get("status") == "error":
                raise SyncError(f"Dask worker {address} cannot run synctool's tasks (is synctool installed there?): "
                                f"{answer.get('exception_text') or answer.get('text') or answer}")  # fmt: skip
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except TimeoutError:
            raise SyncError(f"no Dask worker joined the scheduler at {self.address} within {WORKER_WAIT_SECONDS:.0f} s") from None
        log.info("running shards on the Dask cluster at %s (run %s)", self.address, self.token)

    def stop(self, cancel: bool = False) -> None:
        """Drop the run from the cluster: cancel its tasks (with ``cancel``),
        remove its plugin (each worker closes the backends), disconnect."""
        client, self.client = self.client, None
        try:
            if client is not None:
                self._leave(client, cancel)
        finally:
            self.tasks.clear()
            self.owner.clear()
            self.quieted()
            self.inbox_bell.close()

    def _leave(self, client: distributed.Client, cancel: bool) -> None:
        try:
            if client.status == "running":
                if cancel and self.tasks:
                    client.cancel([t.future for t in self.tasks.values()], force=True)
                _bounded(client.unsubscribe_topic, self.plugin.topic)
                # The plugin's teardown gives running jobs time to abandon their writes.
                _bounded(client.unregister_worker_plugin, self.plugin.name)
                _bounded(client.set_metadata, ["synctool", self.token], None)
        finally:
            _bounded(client.close, CONNECT_SECONDS)

    # -- work ----------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self.owner)

    def connect_ahead(self) -> None:
        """Nothing: a task opens its backends where and when it runs."""

    def submit(self, shard: list[Job]) -> None:
        if not shard:
            return
        self._connected()
        if not self.workers_checked:
            self._check_workers()
        self.count += 1
        key = f"synctool-shard-{self.token}-{self.count}"
        future = self.client.submit(run_shard, self.plugin.name, shard, key=key, pure=False)
        self.tasks[key] = _Task(key, future, {j.id: j for j in shard})
        self.owner.update((j.id, key) for j in shard)
        future.add_done_callback(self._on_done)

    def _check_workers(self) -> None:
        """Open the backends on every worker before its first shard: one that
        cannot reach a side (a local folder missing there) ends the run."""
        self.workers_checked = True
        workers = list(self.client.scheduler_info()["workers"])
        for i, address in enumerate(workers):
            key = f"synctool-check-{self.token}-{i}"
            future = self.client.submit(check_worker, self.plugin.name, key=key, pure=False,
                                        workers=[address], allow_other_workers=False)  # fmt: skip
            self.tasks[key] = _Task(key, future, {})
            future.add_done_callback(self._on_done)

    def poll(self, timeout: float, wake: Sequence[Any] = ()) -> list[tuple[str, int, Any]]:
        self._connected()
        messages: list[tuple[str, int, Any]] = []
        self.inbox_bell.clear()
        if self.inbox.empty():
            wait_for_readable([self.inbox_bell, *wake], timeout)
        try:
            while True:
                messages.extend(self._handle(self.inbox.get_nowait()))
        except queue.Empty:
            pass
        return messages

    def _connected(self) -> None:
        if self.client is None or self.client.status != "running":
            raise SyncError(
                f"lost the connection to the Dask scheduler at {self.address}: the run stops, nothing is deleted"
            )

    # -- what comes back -----------------------------------------------------
    def _on_event(self, event: tuple[float, bytes]) -> None:
        """In the client's thread: hand the event to :meth:`poll`."""
        self.inbox.put(event[1])
        self.inbox_bell.ring()

    def _on_done(self, future: Any) -> None:
        """In a thread of the client: a task ended; only a failed one has news."""
        if future.status in ("error", "cancelled"):
            error = future.exception() if future.status == "error" else None
            self.inbox.put((_DONE_CALLBACK, future.key, future.status, error))
            self.inbox_bell.ring()

    def _handle(self, item: Any) -> list[tuple[str, int, Any]]:
        if isinstance(item, tuple):
            _, key, status, error = item
            if isinstance(error, distributed.KilledWorker):
                return self._end(key, LOST)
            return self._end(key, f"the task {status}: {error}" if error else f"the task was {status}")
        kind, address, payload = pickle.loads(item)
        wid = self.worker_ids.setdefault(address, len(self.worker_ids))
        if kind == MSG_RESULT:
            fresh = [r for r in payload if self._answered(r.job_id)]
            return [(kind, wid, fresh)] if fresh else []
        if kind == MSG_BYTES:
            return [(kind, wid, payload)] if payload[0] in self.owner else []
        if kind == MSG_END:
            return self._end(*payload)
        if kind == MSG_LOG:
            worker_log.log(payload[0], "%s", payload[1])
        elif kind == MSG_PEAK:
            self.peaks[wid] = max(payload, self.peaks.get(wid, 0))
        elif kind == MSG_FATAL:
            self.fatal = payload
        return [(kind, wid, payload)]

    def _answered(self, job_id: int) -> bool:
        """Book a job's result; False for one already booked (or not ours)."""
        key = self.owner.pop(job_id, None)
        if key is None:
            return False
        task = self.tasks.get(key)
        if task is not None:
            task.jobs.pop(job_id, None)
        return True

    def _end(self, key: str, outcome: str) -> list[tuple[str, int, Any]]:
        """A task ended: the jobs it left unanswered come back as failed, retryable results."""
        task = self.tasks.pop(key, None)
        if task is None or not task.jobs:
            return []
        if outcome == LOST:
            why = "the Dask worker running it died"
            self.replaced += 1
            self.lost.update(j.name for j in task.jobs.values())
            log.warning("a Dask worker died holding %d job(s); they will be retried", len(task.jobs))
        elif outcome == FATAL:
            why = "the Dask worker could not open the backends"
        elif outcome == DONE:
            why = "no result came back from the Dask worker"
        else:
            why = outcome
        for job_id in task.jobs:
            self.owner.pop(job_id, None)
        failed = [Result(j.id, False, error=f"{j.name}: {why}") for j in task.jobs.values()]
        return [(MSG_RESULT, -1, failed)]


def _quiet(name: str) -> Callable[[], None]:
    """Silence logger ``name`` and those below it (Dask gives several their
    own handler); returns what gives them their voice back."""
    saved = []
    names = [n for n in list(logging.root.manager.loggerDict) if n == name or n.startswith(name + ".")]
    for logger in map(logging.getLogger, names):
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers[:] = [logging.NullHandler()]
        logger.propagate = False

    def restore() -> None:
        for logger, handlers, propagate in saved:
            logger.handlers[:] = handlers
            logger.propagate = propagate

    return restore


def _bounded(call: Any, *args: Any) -> None:
    """Run a clean-up call to the cluster for at most CLEANUP_SECONDS; its failure is only logged."""

    def run() -> None:
        try:
            call(*args)
        except Exception as exc:  # the cluster may be gone: the run ends all the same
            log.debug("Dask clean-up %s failed: %s", getattr(call, "__name__", call), exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(CLEANUP_SECONDS)
