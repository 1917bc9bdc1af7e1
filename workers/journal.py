"""What a worker has written but not yet read back, recorded at the destination.

--verify-get-after-put reads every copy back. A backend that renames a
temporary file into place reads it back before the rename, so nothing
unverified ever carries its final name. Others (S3) can read an object only
once it is visible under its name: a run stopped between the write and the
read-back would leave a file that the next run takes as good.

So on such a backend the worker stores a journal naming a shard's files
before it writes the first of them, and removes the journal once every one
has been read back. A shard with a failed or cancelled job keeps its journal
(an object that fails its read-back is removed by the backend, but that
removal can fail too). A journal still there at the next run names files whose
contents that run compares with the source before it trusts them; the
coordinator removes the journal once they all check out.
"""

from __future__ import annotations

import json
import logging

from synctool.backends.base import Backend, BackendError, journal_name
from workers.jobs import COPY, Job

log = logging.getLogger("synctool.journal")


class Journal:
    def __init__(self, dst: Backend, name: str):
        self.dst = dst
        self.name = name

    @classmethod
    def start(cls, dst: Backend, shard: list[Job], verifying: bool) -> "Journal | None":
        """Record the shard's copies before any is written; None when no record is needed.

        A BackendError means the record could not be made: the shard must not run.
        """
        names = [job.name for job in shard if job.kind == COPY]
        if not (verifying and names and not dst.verifies_before_commit):
            return None
        journal = cls(dst, journal_name())
        data = encode(names)
        dst.write(journal.name, [data], len(data), overwrite=False)
        return journal

    def finish(self) -> None:
        """Every file of the shard has been read back or has failed: the record goes."""
        try:
            self.dst.delete([self.name])
        except BackendError as exc:
            # Harmless: the next run compares those files once more, then removes it.
            log.warning("could not remove the journal %s: %s", self.name, exc)


def encode(names: list[str]) -> bytes:
    return json.dumps({"unverified": names}, ensure_ascii=False).encode()


def decode(data: bytes) -> list[str]:
    """The names in a journal; ValueError when it is not one."""
    record = json.loads(data.decode())
    names = record.get("unverified") if isinstance(record, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("not a journal of unverified files")
    return names
