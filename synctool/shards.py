"""Cut the job list into shards balanced by bytes and by count.

Many small files go together (each is one round trip, so a worker overlaps
them on its threads); a large file travels alone. Largest first, so the long
transfers start early and the small ones fill the gaps at the end.
"""

from __future__ import annotations

import math

from workers.jobs import Job

MAX_SHARD_BYTES = 64 << 20
MAX_SHARD_FILES = 64
MIN_SHARD_FILES = 4
# Aim for this many shards per worker so the last ones even out the load.
SHARDS_PER_WORKER_TARGET = 4


def make_shards(jobs: list[Job], workers: int) -> list[list[Job]]:
    if not jobs:
        return []
    per_shard = math.ceil(len(jobs) / max(1, workers * SHARDS_PER_WORKER_TARGET))
    max_files = max(MIN_SHARD_FILES, min(MAX_SHARD_FILES, per_shard))
    shards: list[list[Job]] = []
    current: list[Job] = []
    current_bytes = 0
    for job in sorted(jobs, key=lambda j: j.size, reverse=True):
        if job.size >= MAX_SHARD_BYTES:
            shards.append([job])
            continue
        if current and (len(current) >= max_files or current_bytes + job.size > MAX_SHARD_BYTES):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(job)
        current_bytes += job.size
    if current:
        shards.append(current)
    return shards
