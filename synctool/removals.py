"""Renames and deletes at the destination: gathered during the run, applied last.

They wait on disk (a :class:`~synctool.spool.Spool`) until every copy has
succeeded, then run: renames on a few threads (each is one request), deletes
in batches (S3 and Azure remove up to a thousand names per request).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time

from synctool import secrets
from synctool.backends import AlreadyExists, Backend, BackendError, DeleteError
from synctool.logs import FILES, RETRY
from synctool.plan import MAX_NAME_CONFLICTS, RetentionNames, basename
from synctool.progress import Progress
from synctool.report import Report
from synctool.retry import RetryPolicy
from synctool.spool import Spool

log = logging.getLogger("synctool")
file_log = logging.getLogger(FILES)

DELETE_BATCH = 1000
RENAME_THREADS = 8


class Removals:
    def __init__(self) -> None:
        self.renames: Spool[tuple[str, str]] = Spool()
        self.deletes: Spool[str] = Spool()

    def __len__(self) -> int:
        """Files that leave their name at the destination: renames plus deletes."""
        return len(self.renames) + len(self.deletes)

    def close(self) -> None:
        self.renames.close()
        self.deletes.close()

    def apply(self, dst: Backend, retry: RetryPolicy, names: RetentionNames, report: Report, progress: Progress) -> None:
        if self.renames:
            progress.start("renaming", len(self.renames))
            with cf.ThreadPoolExecutor(RENAME_THREADS, thread_name_prefix="rename") as ex:
                for batch in self.renames.batches(RENAME_THREADS * 64):
                    for (old, _), (new, error) in zip(batch, ex.map(lambda p: rename(dst, retry, names, *p), batch)):
                        if error:
                            report.add_failure(old, f"{old}: rename to {new} failed: {error}")
                        else:
                            report.renamed += 1
                            file_log.info("renamed %s -> %s", old, new)
                        progress.add(files=1)
            progress.finish()
        if self.deletes:
            progress.start("deleting", len(self.deletes))
            for batch in self.deletes.batches(DELETE_BATCH):
                failures = delete(dst, retry, batch)
                report.deleted += len(batch) - len(failures)
                if file_log.isEnabledFor(logging.INFO):
                    for name in batch:
                        if name not in failures:
                            file_log.info("deleted %s", name)
                for name, reason in failures.items():
                    report.add_failure(name, f"{name}: delete failed: {reason}")
                progress.add(files=len(batch))
            progress.finish()


def rename(dst: Backend, retry: RetryPolicy, names: RetentionNames, old: str, new: str) -> tuple[str, str | None]:
    """Rename ``old`` to the retention name ``new``, or to the next free one
    when another writer took ``new``. Returns (the name used, the last error).

    The next name stays in ``new``'s folder: a file moved aside with its
    folder (``a/x`` -> ``<stamp>.old.a/x``) must still leave ``a/``.
    """
    for _ in range(MAX_NAME_CONFLICTS):
        try:
            retry.call(lambda: dst.rename(old, new))
            return new, None
        except AlreadyExists as exc:
            names.mark_taken(new)
            folder, slash, _ = new.rpartition("/")
            new = names.name_for(folder + slash + basename(old))
            log.log(RETRY, "%s; keeping %s as %s instead", exc, old, new)
        except BackendError as exc:
            return new, secrets.redact(str(exc))
    return new, f"{old}: every retention name tried was taken"


def delete(dst: Backend, retry: RetryPolicy, batch: list[str]) -> dict[str, str]:
    """Delete ``batch``; the names that could not be deleted, with why."""
    remaining = list(batch)
    failures: dict[str, str] = {}
    attempt = 0
    while True:
        try:
            dst.delete(remaining)
            return {}
        except DeleteError as exc:
            failures = exc.failures
            retryable = True
        except BackendError as exc:
            failures = {name: str(exc) for name in remaining}
            retryable = exc.retryable
        if not retry.allows(attempt, retryable):
            break
        remaining = list(failures)
        time.sleep(retry.backoff(attempt))
        attempt += 1
    return {k: secrets.redact(v) for k, v in failures.items()}
