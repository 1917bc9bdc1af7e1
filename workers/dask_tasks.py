"""What runs on the workers of a Dask cluster: one run's backends, and its shards as tasks.

The run's backend specs (URLs and options, secrets included) reach each
worker once, inside a :class:`RunPlugin` that the coordinator registers with
the scheduler; tasks name the plugin by an opaque id, so no secret travels
with a task or shows in its key. Each worker opens the backends on first
use, keeps them for every task of the run, and closes them when the plugin
is removed (the run ends) or the worker shuts down.

Everything a task has to say (results, progress, log lines) goes to the
coordinator as events on the run's own topic, a batch at a time; the last
event of a task is ``MSG_END``.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from typing import Any

from distributed import WorkerPlugin, get_worker
from distributed.utils import sync

from synctool.backends import BackendSpec, NotFound, backend_class, open_backend
from synctool.secrets import redact, register, register_options
from workers.jobs import MSG_FATAL, MSG_PEAK, Job, WorkerSettings
from workers.shard import OutboxLogHandler, ShardRunner, peak_rss

#: (task key, outcome): a task ended; the jobs it did not answer come back failed.
MSG_END = "end"
DONE = "done"
#: An earlier run of this very task died with its worker: the coordinator
#: retries what it held, so this one must not run it a second time at once.
LOST = "lost"
FATAL = "fatal"  # the backends could not be opened here
STOPPED = "stopped"  # the run ended while this task ran or waited

# Once the run is cancelled, how long running jobs get to abandon their
# writes (remove temporary files, abort multipart uploads) before the
# backends close under them.
STOP_GRACE_SECONDS = 5.0
WAIT_STEP_SECONDS = 0.5
SIDES = ("source", "destination")


class _EventOutbox:
    """Messages to the coordinator as events on the run's topic.

    ``log_event`` hands them to the worker's connection to the scheduler,
    which relays them in order to the coordinator's client, a batch per
    round trip. The worker's address stands in for a worker number.
    """

    def __init__(self, worker: Any, topic: str):
        self.worker, self.topic = worker, topic

    def put(self, message: tuple) -> None:
        kind, _, payload = message
        self.worker.log_event(self.topic, pickle.dumps((kind, self.worker.address, payload)))


class _Session:
    """The run's backends on this worker, open, and what runs shards on them."""

    def __init__(self, plugin: "RunPlugin", outbox: _EventOutbox):
        opened = []
        try:
            for side, spec in zip(SIDES, (plugin.src, plugin.dst)):
                backend = open_backend(spec)
                opened.append(backend)
                prepare(backend, side, spec, outbox.worker.address)
        except BaseException:
            for backend in opened:
                backend.close()
            raise
        self.src, self.dst = opened
        self.runner = ShardRunner(self.src, self.dst, plugin.settings, plugin.cancel, outbox, 0, "synctool-job")

    def close(self) -> None:
        try:
            self.runner.shutdown(cancel=True)
        finally:
            self.src.close()
            self.dst.close()


def prepare(backend: Any, side: str, spec: BackendSpec, address: str) -> None:
    """Check that this worker reaches ``side``'s root, as the coordinator did.

    The root exists by now (the coordinator creates a missing destination
    before the first shard), so a folder missing here is one this worker
    cannot see: a clear error, not a run that copies into nowhere. A
    server's destination may still read as missing (an S3 prefix with
    nothing under it yet): every worker sees the server the coordinator saw.
    """
    try:
        backend.prepare(create=False)
    except NotFound as exc:
        if side == "destination" and spec.location.scheme != "file":
            return
        raise _unreachable(side, spec, address, exc) from None
    except Exception as exc:
        raise _unreachable(side, spec, address, exc) from None


def _unreachable(side: str, spec: BackendSpec, address: str, exc: Exception) -> RuntimeError:
    hint = ""
    if spec.location.scheme == "file":
        hint = "; a local folder must be reachable at the same path on every Dask worker"
    return RuntimeError(f"Dask worker {address} cannot open the {side}: {exc}{hint}")


class RunPlugin(WorkerPlugin):
    """One run's backends on every worker, registered once per run."""

    def __init__(self, token: str, src: BackendSpec, dst: BackendSpec, settings: WorkerSettings, log_level: int):
        self.token = token
        self.name = f"synctool-{token}"
        self.topic = f"synctool-{token}"
        self.src, self.dst, self.settings, self.log_level = src, dst, settings, log_level

    def __repr__(self) -> str:  # never the specs: they hold the secrets
        return f"<RunPlugin {self.name}>"

    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.outbox = _EventOutbox(worker, self.topic)
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.session: _Session | None = None
        for spec in (self.src, self.dst):
            backend_class(spec.location.scheme)  # its option table names its secret keys
            register(spec.location.password)
            register_options(spec.options)
        self.log_handler = OutboxLogHandler(self.outbox, 0)
        root = logging.getLogger("synctool")
        root.addHandler(self.log_handler)
        root.setLevel(self.log_level)
        root.propagate = False  # the worker's own log never gets a file name or an error of ours

    async def teardown(self, worker: Any) -> None:
        self.cancel.set()
        logging.getLogger("synctool").removeHandler(self.log_handler)
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self.lock:
            session, self.session = self.session, None
        if session is not None:
            closing = threading.Thread(target=session.close, daemon=True)
            closing.start()
            closing.join(STOP_GRACE_SECONDS)

    def open(self) -> _Session:
        """The run's backends on this worker, opened on first use."""
        with self.lock:
            if self.cancel.is_set():
                raise RuntimeError("the run has ended")
            if self.session is None:
                self.session = _Session(self, self.outbox)
            return self.session

    def send(self, kind: str, payload: Any) -> None:
        self.outbox.put((kind, 0, payload))

    def claim(self, key: str) -> bool:
        """Whether this is the first run of task ``key``.

        Dask runs a task again elsewhere when its worker dies. Its jobs may
        be half written, and the coordinator hands them out again itself,
        with its retry rules: a second run must not write them too. The
        scheduler's metadata remembers each task that started; one that
        died before the mark started no job.
        """
        path = ["synctool", self.token, key]
        scheduler = self.worker.scheduler
        if sync(self.worker.loop, scheduler.get_metadata, keys=path, default=None):
            return False
        sync(self.worker.loop, scheduler.set_metadata, keys=path, value=True)
        return True

    def run(self, key: str, shard: list[Job]) -> str:
        if not self.claim(key):
            return self.end(key, LOST)
        try:
            session = self.open()
        except Exception as exc:
            self.send(MSG_FATAL, redact(str(exc)))
            return self.end(key, FATAL)
        done = threading.Event()
        session.runner.start(shard, on_done=done.set)
        outcome = DONE
        while not done.wait(WAIT_STEP_SECONDS):
            if self.cancel.is_set():
                outcome = STOPPED
                break
        self.send(MSG_PEAK, peak_rss())
        return self.end(key, outcome)

    def check(self, key: str) -> str:
        try:
            self.open()
        except Exception as exc:
            self.send(MSG_FATAL, redact(str(exc)))
            return self.end(key, FATAL)
        return self.end(key, DONE)

    def end(self, key: str, outcome: str) -> str:
        self.send(MSG_END, (key, outcome))
        return outcome


def _plugin(name: str) -> RunPlugin | None:
    return get_worker().plugins.get(name)  # type: ignore[return-value]


def run_shard(plugin_name: str, shard: list[Job]) -> str:
    """The task of one shard: run its jobs on this worker's open backends."""
    worker = get_worker()
    key = worker.get_current_task()
    plugin = _plugin(plugin_name)
    if plugin is None:  # the run that submitted it has ended
        return STOPPED
    return plugin.run(key, shard)


def check_worker(plugin_name: str) -> str:
    """The task that opens the run's backends on one worker before any shard runs there."""
    worker = get_worker()
    plugin = _plugin(plugin_name)
    if plugin is None:
        return STOPPED
    return plugin.check(worker.get_current_task())
