"""The C allocator's settings for a worker process.

glibc gives each thread that allocates its own arena (up to 8 per core), and
an arena keeps what was freed in it for reuse. A worker runs dozens of
threads that each allocate megabyte blocks (file chunks, S3 parts), so freed
blocks pile up. Measured on the mixed benchmark workload to S3 (1,000 files
up to 64 MiB), one worker's copying alone: ~250 MiB resident with glibc's
defaults, ~140 MiB with two arenas at the same speed (forcing large blocks
into mmap instead cost ~20% of the throughput); in a full run, trimming
after each job of a megabyte or more took the two workers from ~145 MiB to
~125 MiB each.
"""

from __future__ import annotations

import ctypes
import functools
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter number
ARENAS = 2


@functools.cache
def _glibc():
    """The C library's allocator functions, or None where they are not glibc's (macOS, musl)."""
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's arenas for the threads this process starts from now on.

    Left alone where MALLOC_ARENA_MAX is set (the user's choice wins).
    Returns whether the cap was applied.
    """
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc's malloc_trim).

    It walks every arena, so it is for after a large job, not every small one.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
