"""The streaming copy and the content comparison, with BLAKE3 on the bytes as they pass."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator

import blake3

from synctool.backends.base import Backend, BackendError, Stopped
from workers.jobs import Job

# Above this size BLAKE3's multithreaded mode pays for its thread hand-off.
MULTITHREAD_HASH_FROM = 64 << 20


class SourceChanged(BackendError):
    """The source file's size no longer matches its listing: it changed under us."""

    retryable = True


class VerifyMismatch(BackendError):
    """Get-after-put read back different bytes from what was sent."""

    retryable = True


def new_hasher(size: int) -> "blake3.blake3":
    if size >= MULTITHREAD_HASH_FROM:
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return blake3.blake3()


def hash_stream(chunks: Iterable[bytes], size: int, cancel: threading.Event) -> tuple[str, int]:
    """BLAKE3 hex digest and length of a stream."""
    hasher = new_hasher(size)
    count = 0
    for chunk in chunks:
        if cancel.is_set():
            raise Stopped("stopped")
        hasher.update(chunk)
        count += len(chunk)
    return hasher.hexdigest(), count


class _Metered:
    """Pass chunks through, hashing and counting them, and check the length.

    The length check runs inside the iteration, so a source that grew or
    shrank since it was listed aborts the write before it completes.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        job: Job,
        cancel: threading.Event,
        on_bytes: Callable[[int], None],
        expected: str | None = None,
    ):
        self.chunks = chunks
        self.job = job
        self.cancel = cancel
        self.on_bytes = on_bytes
        self.hasher = new_hasher(job.size)
        self.count = 0
        self.expected = expected  # the BLAKE3 a reading ahead found, which the write was told

    def __iter__(self) -> Iterator[bytes]:
        expected = self.job.size
        for chunk in self.chunks:
            if self.cancel.is_set():
                raise Stopped("stopped")
            self.count += len(chunk)
            if self.count > expected:
                raise SourceChanged(f"{self.job.name}: source changed while copying (now larger than the listed {expected} bytes)")
            self.hasher.update(chunk)
            self.on_bytes(len(chunk))
            yield chunk
        if self.count != expected:
            raise SourceChanged(
                f"{self.job.name}: source changed while copying ({self.count} bytes read, {expected} listed)"
            )
        if self.expected is not None and self.hasher.hexdigest() != self.expected:
            raise SourceChanged(f"{self.job.name}: source changed while copying (its BLAKE3 differs from a moment before)")


@dataclasses.dataclass(frozen=True, slots=True)
class Copied:
    digest: str | None  # BLAKE3 of the bytes sent
    bytes: int
    verified: bool = False  # read back and matched
    skipped: bool = False  # the destination already held this version: nothing sent


def copy_file(
    job: Job,
    src: Backend,
    dst: Backend,
    *,
    verify: bool,
    cancel: threading.Event,
    on_bytes: Callable[[int], None],
) -> Copied:
    """Stream ``job.name`` from ``src`` to ``dst``, read back first with ``verify``."""
    if job.unless_stored_mtime:
        stored = dst.stored_mtime(job.name)
        if stored is not None and abs(stored - job.mtime) <= src.mtime_precision:
            return Copied(None, 0, skipped=True)
    # A destination that stores the hash from the start gets it from a first
    # reading, where reading twice is cheap; the copy's own hash must match it.
    digest = None
    if src.rereads_cheaply and dst.digest_first(job.size):
        digest, _ = hash_stream(src.read_sized(job.name, job.size), job.size, cancel)
    metered = _Metered(src.read_sized(job.name, job.size), job, cancel, on_bytes, digest)

    def check(stored: Iterator[bytes]) -> None:
        """Read the stored copy back (before it takes its name where the
        destination can) and compare it with what was sent."""
        digest = metered.hasher.hexdigest()
        back, count = hash_stream(stored, job.size, cancel)
        if back != digest or count != metered.count:
            raise VerifyMismatch(
                f"{job.name}: read back {count} bytes with BLAKE3 {back[:16]}…, sent {metered.count} with {digest[:16]}…"
            )

    dst.write(
        job.name,
        iter(metered),
        job.size,
        mtime=job.mtime,
        keep_old_as=job.keep_old_as,
        overwrite=not job.new,
        check=check if verify else None,
        **({"digest": digest} if digest is not None else {}),
    )
    return Copied(metered.hasher.hexdigest(), metered.count, verified=verify)


def compare_file(job: Job, src: Backend, dst: Backend, *, cancel: threading.Event) -> tuple[str, bool]:
    """Hash both sides of a seemingly equal pair; return (source digest, same?)."""
    src_digest, _ = hash_stream(src.read_sized(job.name, job.size), job.size, cancel)
    dst_digest, _ = hash_stream(dst.read_sized(job.name, job.dst_size), job.dst_size, cancel)
    return src_digest, src_digest == dst_digest
