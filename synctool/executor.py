"""What runs the shards: the interface the coordinator drives, and how one is chosen.

The coordinator cuts jobs into shards and hands them to an executor; the
executor runs them somewhere (worker processes on this host, or tasks on a
cluster) and hands back messages as they come. Everything else (retries,
the deletes-last rule, progress, the report) stays in the coordinator, so it
is the same whatever runs the shards. Modelled on s3transfer's bounded
executor: ``in_flight`` tells the coordinator how much it has handed over
and not yet heard back about, and the coordinator holds back the next
shard while that is high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from synctool.backends import BackendSpec
from workers.jobs import Job, WorkerSettings

#: (kind, worker id, payload), the kinds of workers.jobs (MSG_RESULT, MSG_BYTES, ...)
Message = tuple[str, int, Any]


class Executor(Protocol):
    #: Set when a worker could not open the backends: the run cannot go on.
    fatal: str | None
    #: Workers that died and were replaced; their writes may linger.
    replaced: int
    #: Names of jobs held by workers that died.
    lost: set[str]
    #: Peak resident memory of each worker, bytes.
    peaks: dict[int, int]

    def start(self, wanted: int | None = None) -> None:
        """Have up to ``wanted`` workers ready (all of them by default)."""

    def connect_ahead(self) -> None:
        """Have the workers open their connections before their first shard
        (the coordinator has logged in to both sides: the credentials work)."""

    def submit(self, shard: list[Job]) -> None:
        """Run these jobs; their results come back through :meth:`poll`."""

    def poll(self, timeout: float, wake: Sequence[Any] = ()) -> list[Message]:
        """Messages that arrived within ``timeout`` seconds, or before one of
        ``wake`` (objects with a ``fileno``) became readable; the jobs of a
        worker that died come back as failed, retryable results. Raises
        SyncError when nothing can run any more (a lost cluster)."""

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet answered."""

    def stop(self, cancel: bool = False) -> None:
        """End every worker: after their work (a sentinel), or at once."""


def open_executor(
    workers: int,
    src: BackendSpec,
    dst: BackendSpec,
    settings: WorkerSettings,
    log_level: int,
    scheduler: str | None = None,
) -> Executor:
    """The executor of this run: tasks on the Dask cluster of ``scheduler``,
    or else worker processes on this host."""
    # Imported here: multiprocess, distributed and the worker code cost a
    # start that a run with nothing to copy never needs.
    if scheduler:
        from synctool.dask_executor import DaskExecutor

        return DaskExecutor(scheduler, src, dst, settings, log_level)
    from synctool.pool import WorkerPool

    return WorkerPool(workers, src, dst, settings, log_level)
