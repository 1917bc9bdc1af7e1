"""The small picklable records that travel between coordinator and workers."""

from __future__ import annotations

import dataclasses
import pickle

COPY = "copy"
COMPARE = "compare"


@dataclasses.dataclass(slots=True)
class Job:
    id: int
    kind: str  # COPY or COMPARE
    name: str
    size: int  # the source size the listing reported
    mtime: float
    keep_old_as: str | None = None
    dst_size: int = 0  # COMPARE: the destination size the listing reported
    attempt: int = 0
    new: bool = False  # COPY: the destination must not hold this name yet
    #: COPY: skip when the destination stored this very source mtime with the file
    unless_stored_mtime: bool = False
    reason: str = ""  # COPY: why the plan copies it (missing, size, newer, force, content), for the log
    #: COMPARE: a copy whose earlier attempt may have written it already: the
    #: same content there is that copy, other content is another writer's.
    rechecking: bool = False


@dataclasses.dataclass(slots=True)
class Result:
    job_id: int
    ok: bool
    bytes: int = 0
    digest: str | None = None  # BLAKE3 of the source bytes
    same: bool | None = None  # COMPARE: do both sides hash the same?
    verified: bool = False  # COPY: read back and matched (--verify-get-after-put)
    skipped: bool = False  # COPY: the destination already holds this version
    error: str | None = None
    retryable: bool = True
    conflict: str | None = None  # a name found taken that the job must not replace


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSettings:
    verify_get_after_put: bool = False
    threads: int = 0  # 0: as many as the backends want
    progress_step: int = 4 << 20  # report streamed bytes every this many


def pack(message: object) -> bytes:
    """A shard or a message as bytes for a worker's queue or pipe.

    Where workers are spawned, multiprocess pickles what it sends with
    dill, whose pickler is written in Python: for a shard of small jobs, or
    a batch of their results, that costs more than copying the files. These
    records need none of dill's reach, so the C pickler packs them, and the
    queue only passes the bytes on.
    """
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


unpack = pickle.loads


#: Down a worker's job channel, besides packed shards and the final None:
#: the coordinator has logged in, so open the connections now (Backend.connect_ahead).
CONNECT_AHEAD = b"connect-ahead"

# Messages on the result queue: (kind, worker_id, payload)
MSG_READY = "ready"  # payload: pid
MSG_RESULT = "result"  # payload: list[Result]
MSG_BYTES = "bytes"  # payload: (job id, bytes streamed since its last report)
MSG_LOG = "log"  # payload: (levelno, message)
MSG_PEAK = "peak"  # payload: peak resident memory of the worker, bytes
MSG_FATAL = "fatal"  # payload: message; the worker could not start
