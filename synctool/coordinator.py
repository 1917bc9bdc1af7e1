"""One sync run: list, plan, confirm, copy on the worker pool, then rename and delete.

The coordinator decides everything and moves no file content itself; the
workers do the streaming. It never imports a concrete backend: it opens
backends through the registry by URL scheme.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import heapq
import itertools
import logging
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

from synctool import secrets
from synctool.backends import (
    AlreadyExists,
    Backend,
    BackendError,
    BackendSpec,
    DeleteError,
    Entry,
    NotFound,
    backend_class,
)
from synctool.backends.base import is_journal
from synctool.errors import Declined, ExitCode, Interrupted, SyncError, UsageError
from synctool.interrupts import deferred_interrupts
from synctool.logs import DRYRUN, FILES, OUTPUT, RETRY, printable
from synctool.options import SyncOptions
from synctool.plan import Copy, DestinationTraits, Plan, blocked_copies, make_plan
from synctool.progress import Progress
from synctool.report import Report, human_bytes
from synctool.shards import make_shards
from workers import journal
from workers.jobs import COMPARE, COPY, MSG_BYTES, MSG_RESULT, Job, Result, WorkerSettings

if TYPE_CHECKING:
    from synctool.executor import Executor

log = logging.getLogger("synctool")
file_log = logging.getLogger(FILES)
output_log = logging.getLogger(OUTPUT)

DELETE_BATCH = 1000
LIST_BATCH = 4096  # entries between progress updates of a listing in the calling thread
RENAME_THREADS = 8
# Retention names tried for one file before giving up: each one taken means
# another writer is busy at the destination.
MAX_NAME_CONFLICTS = 100
MAX_BACKOFF_SECONDS = 60.0


@dataclasses.dataclass
class Env:
    """The streams a run talks to, so tests can call it without a subprocess (as httpie does)."""

    stdin: TextIO | None = None
    stdout: TextIO | None = None
    stdin_isatty: bool = False
    stdout_isatty: bool = False

    @classmethod
    def from_process(cls) -> "Env":
        return cls(sys.stdin, sys.stdout, _isatty(sys.stdin), _isatty(sys.stdout))


def _isatty(stream: TextIO | None) -> bool:
    try:
        return bool(stream and stream.isatty())
    except (ValueError, AttributeError):
        return False


def register_secrets(spec: BackendSpec) -> None:
    """Mask the secrets of ``spec``: its URL's password and the values of secret keys."""
    secrets.register(spec.location.password)
    secrets.register_options(spec.options)


def open_side(spec: BackendSpec, side: str) -> Backend:
    """The backend of ``side``, not yet connected."""
    try:
        with deferred_interrupts():  # an import cut short by Ctrl-C fails as another error
            cls = backend_class(spec.location.scheme)
    except BackendError as exc:
        raise UsageError(f"{side}: {exc}") from None
    register_secrets(spec)
    try:
        return cls(spec)
    except BackendError as exc:
        # A backend's constructor only reads the URL and the options (it
        # connects in prepare): what it refuses is a bad argument.
        raise UsageError(f"{side}: {exc}") from None


def refuse_overlap(src: Backend, dst: Backend) -> None:
    """Refuse a source and a destination of which one holds the other.

    A destination inside the source would be copied into itself, one level
    deeper at every run; a source inside the destination would have
    everything around it deleted (or renamed, with --retention).
    """
    a, b = src.root_place(), dst.root_place()
    if a is None or b is None:
        return
    if a == b:
        raise UsageError(f"the source and the destination are the same folder, {a.shown}: nothing to mirror")
    if a.contains(b):
        raise UsageError(
            f"the destination {b.shown} is inside the source {a.shown}: every run would copy it into "
            "itself; choose a destination outside the source"
        )
    if b.contains(a):
        raise UsageError(
            f"the source {a.shown} is inside the destination {b.shown}: the mirror would delete everything "
            "around it; choose a destination that does not hold the source"
        )


def refuse_without_room(dst: Backend, plan: Plan, opts: SyncOptions) -> None:
    """Duplicati's free-space check: stop before anything is written when the
    destination says it has less room than the copies need.

    Conservative and simple: the bytes of every copy, with nothing taken off
    for what the plan removes, since removals come after the copies (and
    with --retention free nothing), and a replaced file keeps its old
    content until the new one is complete. quota-disable=true skips it.
    """
    if opts.quota_disable or not plan.copies:
        return
    free = dst.free_bytes()
    if free is not None and plan.copy_bytes > free:
        raise SyncError(
            f"not enough free space at the destination: the copies need {human_bytes(plan.copy_bytes)}, "
            f"{human_bytes(free)} is free; nothing was written (quota-disable=true skips this check)"
        )


class Coordinator:
    def __init__(self, opts: SyncOptions, env: Env | None = None):
        self.opts = opts
        self.env = env or Env()
        self.report = Report(dry_run=opts.dry_run)
        self.progress = Progress(self.env.stdout if opts.progress else None, self.env.stdout_isatty)
        self.started_at = time.time()
        self.stamp = datetime.fromtimestamp(self.started_at, timezone.utc).strftime("%Y%m%d%H%M%S")
        self.pool: Executor | None = None
        self.src: Backend | None = None
        self.dst: Backend | None = None
        self.ids = itertools.count(1)
        self.plan: Plan | None = None
        self.copy_failures = 0
        self.create_destination = False  # the destination root is missing: create it before copying
        self.confirmed = False  # past the last question: from here on the destination changes

    # -- the run -------------------------------------------------------------
    def run(self) -> Report:
        started = time.monotonic()
        try:
            self._run()
        except KeyboardInterrupt:
            self._stop_pool(cancel=True)
            self._error(
                "interrupted: workers stopped, unfinished writes abandoned"
                if self.confirmed
                else "interrupted before anything was changed"
            )
            self.report.exit_code = Interrupted.exit_code
        except SyncError as exc:
            self._error(str(exc))
            self.report.exit_code = exc.exit_code
        finally:
            self._stop_pool(cancel=self.report.exit_code != 0)
            self.progress.finish()
            for backend in (self.src, self.dst):
                if backend is not None:
                    backend.close()
            self.report.elapsed = time.monotonic() - started
        return self.report

    def _run(self) -> None:
        opts = self.opts
        src_spec, dst_spec = opts.spec("source"), opts.spec("destination")
        self.src = self._open(src_spec, "source")
        self.dst = self._open(dst_spec, "destination")
        self._on_both_sides(self._prepare)
        refuse_overlap(self.src, self.dst)  # after prepare: an SFTP root may be known only then
        self.report.source, self.report.destination = self.src.display_url(), self.dst.display_url()
        if not opts.dry_run and self.create_destination:
            # Everything will be copied: let the workers' start-up and logins
            # overlap the listing. Otherwise they start only once the plan
            # shows work, so a sync with nothing to do starts none.
            self._start_pool(opts.workers)
        src_entries, dst_entries = self._list_both()
        window = max(self.src.mtime_precision, self.dst.mtime_precision)
        plan = make_plan(
            src_entries,
            dst_entries,
            stamp=self.stamp,
            force=opts.force,
            retention=opts.retention,
            verify_contents=opts.verify_contents and not opts.force,
            mtime_window=window,
            now=self.started_at,
            target=DestinationTraits.of(self.dst),
            recheck=self._unverified(dst_entries),
            ordered=True,  # every backend lists in name order
            source_is_temporary=self.src.is_temporary,
        )
        self.plan = plan
        del src_entries, dst_entries
        self._account_plan(plan)
        refuse_without_room(self.dst, plan, opts)
        if opts.dry_run:
            self._describe_dry_run(plan)
        else:
            self._execute(plan)
        self._set_exit_code()

    def _open(self, spec: BackendSpec, side: str) -> Backend:
        backend = open_side(spec, side)
        for key in sorted(spec.options):
            if not backend.declares(key):
                msg = f"option {key!r} is not known to the {spec.location.scheme}:// backend ({side}); ignored"
                log.warning("%s", msg)
                self.report.warnings.append(msg)
        return backend

    def _prepare(self, backend: Backend, side: str, _tick: Callable[[], None] | None = None) -> None:
        try:
            backend.prepare(create=False)
        except NotFound as exc:
            if side == "source" or not self.opts.auto_create_folders:
                raise SyncError(f"{side}: {exc}") from None
            # Created only once the plan is confirmed (never in a dry run or
            # when declined); until then its listing is simply empty.
            self.create_destination = True
        except BackendError as exc:
            raise SyncError(f"{side}: {exc}") from None

    def _on_both_sides(
        self,
        action: Callable[[Backend, str, Callable[[], None] | None], None],
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Run ``action(backend, side, tick)`` for the source, then the destination.

        When either side waits on a server, both run at once in two threads
        and ``tick`` runs every 0.2 s in this one; otherwise they run here one
        after the other and ``action`` calls ``tick`` when it likes. An error
        of the source is raised before one of the destination.
        """
        sides = ((self.src, "source"), (self.dst, "destination"))
        if not any(backend.waits_on_network for backend, _ in sides):
            for backend, side in sides:
                action(backend, side, tick)
            return
        with cf.ThreadPoolExecutor(2, thread_name_prefix="both-sides") as ex:
            futures = [ex.submit(action, backend, side, None) for backend, side in sides]
            pending = set(futures)
            while pending:
                _, pending = cf.wait(pending, timeout=0.2)
                if tick:
                    tick()
        for future in futures:
            future.result()

    # -- listing ---------------------------------------------------------------
    def _list_both(self) -> tuple[list[Entry], list[Entry]]:
        self.progress.start("listing")
        found: dict[str, list[Entry]] = {"source": [], "destination": []}

        def draw() -> None:
            self.progress.files_done = len(found["source"]) + len(found["destination"])
            self.progress.draw()

        self._on_both_sides(lambda backend, side, tick: self._list(backend, found[side], side, tick), draw)
        self.progress.finish()
        log.info(
            "listed %d file(s) at the source, %d at the destination",
            len(found["source"]),
            len(found["destination"]),
        )
        return found["source"], found["destination"]

    def _list(
        self, backend: Backend, into: list[Entry], side: str, each_batch: Callable[[], None] | None = None
    ) -> None:
        for attempt in itertools.count():
            if side == "destination" and self.create_destination:
                return
            try:
                # A retry goes on after the last name listed (in order).
                entries = iter(backend.list(start_after=into[-1].name if into else None))
                while batch := list(itertools.islice(entries, LIST_BATCH)):
                    into.extend(batch)
                    if each_batch:
                        each_batch()
                return
            except NotFound:
                raise SyncError(f"listing the {side} failed: {backend.display_url()} does not exist") from None
            except BackendError as exc:
                if not exc.retryable or attempt >= self.opts.retry:
                    raise SyncError(f"listing the {side} failed: {exc}") from None
                delay = self._backoff(attempt)
                log.log(RETRY, "listing the %s failed (%s); retrying in %.1f s", side, exc, delay)
                time.sleep(delay)

    def _unverified(self, dst_entries: list[Entry]) -> frozenset[str]:
        """Files that an interrupted --verify-get-after-put run wrote but never
        read back, as its journals at the destination name them."""
        names: set[str] = set()
        for entry in dst_entries:
            if not is_journal(entry.name):
                continue
            try:
                names.update(journal.decode(self.dst.read_small(entry.name)))
            except (BackendError, ValueError) as exc:
                raise SyncError(
                    f"cannot read {entry.name}, the list of files an interrupted run wrote but did not "
                    f"read back ({exc}); without it those files cannot be told from verified ones"
                ) from None
        if names:
            log.warning("%d file(s) written by an interrupted run were never read back: comparing them", len(names))
        return frozenset(names)

    # -- planning and confirming -------------------------------------------
    def _account_plan(self, plan: Plan) -> None:
        r = self.report
        r.planned_copies, r.planned_bytes = len(plan.copies), plan.copy_bytes
        r.planned_renames = len(plan.renames) + sum(1 for c in plan.copies if c.keep_old_as)
        r.planned_deletes = len(plan.deletes)
        r.planned_verifies = len(plan.compares)
        r.unchanged, r.kept = plan.unchanged, plan.kept
        for name, problem in plan.refused:
            log.error("%s", problem)
            r.failed.append((name, problem))
        warnings = [f"destination entry {name!r} has an unsafe name; left alone" for name in plan.ignored]
        warnings += [f"{name} at the destination is a symbolic link: left alone, never followed" for name in plan.links]
        warnings += [f"skipping symbolic link {name} at the source (links are never followed)" for name in plan.skipped_links]
        warnings += [
            f"{name} is dated in the future at the source; it is compared by size and its stored time only"
            for name in plan.future
        ]
        for msg in warnings:
            log.warning("%s", msg)
            r.warnings.append(msg)

    def _describe_dry_run(self, plan: Plan) -> None:
        for c in plan.copies:
            self._tell(f"would copy {c.entry.name} ({human_bytes(c.entry.size)}, {c.reason})")
            if c.keep_old_as:
                self._tell(f"would keep the old {c.entry.name} as {c.keep_old_as}")
        for c in plan.compares:
            self._tell(f"would verify {c.source.name}")
        for old, new in plan.renames:
            self._tell(f"would rename {old} -> {new}")
        for name in plan.deletes:
            self._tell(f"would delete {name}")
        if self.opts.max_delete is not None and plan.removals > self.opts.max_delete:
            self._refuse_max_delete(plan)

    def _tell(self, line: str) -> None:
        """A line of the dry run: the output asked for, on stdout (and in the log file)."""
        output_log.log(DRYRUN, "%s", line)
        if self.env.stdout is not None:
            self.env.stdout.write(printable(secrets.redact(line)) + "\n")

    def _confirm(self, question: str) -> None:
        """Ask on the terminal; no terminal means no."""
        if self.opts.confirm:
            return
        out, stdin = self.env.stdout or sys.stdout, self.env.stdin
        asked = time.monotonic()
        try:
            out.write(secrets.redact(question) + " [y/N] ")
            out.flush()
            if stdin is None or not self.env.stdin_isatty:
                out.write("\n")
                raise Declined("no terminal to confirm on: pass -y (--confirm) to run without asking")
            answer = stdin.readline().strip().lower()
        except KeyboardInterrupt:
            out.write("\n")  # the error goes below the question, not after it
            raise
        finally:
            # Waiting for an answer is not part of the work the throughput measures.
            self.report.prompt_seconds += time.monotonic() - asked
        if answer not in ("y", "yes"):
            raise Declined("declined: nothing was changed")

    def _plan_question(self, plan: Plan) -> str:
        src, dst = self.report.source, self.report.destination
        lines = []
        if plan.removals:
            lines.append(
                f"Rename {len(plan.renames)} and delete {len(plan.deletes)} file(s) from {dst}"
                if self.opts.retention
                else f"Delete {len(plan.deletes)} file(s) from {dst}"
            )
        if plan.copies:
            kept = sum(1 for c in plan.copies if c.keep_old_as)
            lines.append(
                f"Copy {len(plan.copies)} file(s), {human_bytes(plan.copy_bytes)}, from {src} to {dst}"
                + (f" (keeping {kept} overwritten version(s))" if kept else "")
            )
        return "\n".join(lines) + "\nContinue?"

    # -- executing ---------------------------------------------------------------
    def _execute(self, plan: Plan) -> None:
        if plan.compares:
            self._confirm(
                f"Verify {len(plan.compares)} file(s) that seem equal by reading both sides "
                f"({human_bytes(plan.compare_bytes)})?"
            )
            plan.copies.extend(self._verify(plan))
            self.report.planned_copies, self.report.planned_bytes = len(plan.copies), plan.copy_bytes
            self.report.planned_renames = len(plan.renames) + sum(1 for c in plan.copies if c.keep_old_as)
        if plan.copies or plan.removals:
            self._confirm(self._plan_question(plan))
        self.confirmed = True
        if self.create_destination:
            try:
                self.dst.prepare(create=True)
            except BackendError as exc:
                raise SyncError(f"destination: {exc}") from None
        blocked = blocked_copies(plan)
        self._copy([c for c in plan.copies if c.entry.name not in blocked])
        self._apply_removals(plan)
        if blocked and self.copy_failures:
            for name in sorted(blocked):
                self._failed(name, f"{name}: a destination-only file or folder is in its way, and was not removed")
        elif blocked:
            # The removals just made room for these.
            self._copy([c for c in plan.copies if c.entry.name in blocked])
        if self.pool is not None and self.pool.replaced:
            self._sweep_debris()
        self._stop_pool()
        if plan.journals and not self.copy_failures:
            # Every file they named was compared (and copied where it differed).
            failures = self._delete_batch(plan.journals)
            for name, reason in failures.items():
                log.warning("could not remove %s: %s", name, reason)

    def _sweep_debris(self) -> None:
        """Remove what workers that died mid-write (SIGKILL, out of memory) left behind.

        The plan's listing predates their temporary files, and no job of this
        run is in flight now, so every temporary file at the destination is
        debris; so are the unfinished uploads of the jobs they held.
        """
        assert self.pool is not None
        try:
            debris = [e.name for e in self.dst.list() if self.dst.is_temporary(e.name)]
            if debris:
                self.dst.delete(debris)
            self.dst.abort_unfinished_writes(sorted(self.pool.lost))
        except BackendError as exc:
            log.warning("could not remove what a dead worker left behind: %s", exc)

    def _copy(self, copies: list[Copy]) -> None:
        jobs = [
            Job(next(self.ids), COPY, c.entry.name, c.entry.size, c.entry.mtime, c.keep_old_as,
                new=c.new, unless_stored_mtime=c.unless_stored_mtime, reason=c.reason)  # fmt: skip
            for c in copies
        ]
        self.progress.start("copying", len(jobs), sum(c.entry.size for c in copies))
        self._run_jobs(jobs, self._on_copied)
        self.progress.finish()

    def _verify(self, plan: Plan) -> list[Copy]:
        """Hash both sides of every seemingly equal pair; return copies for those that differ."""
        differing: list[Copy] = []
        by_id: dict[int, Copy] = {}
        jobs = []
        for c in plan.compares:
            job = Job(next(self.ids), COMPARE, c.source.name, c.source.size, c.source.mtime, c.keep_old_as, c.destination.size)
            by_id[job.id] = Copy(c.source, "content", c.keep_old_as)
            jobs.append(job)

        def on_compared(job: Job, result: Result) -> None:
            self.report.verified += 1
            file_log.info("verified %s: %s", job.name, "same" if result.same else "differs from the source, to be copied")
            if not result.same:
                self.report.verify_mismatches += 1
                differing.append(by_id[job.id])
            self.progress.add(files=1)

        self.progress.start("verifying", len(jobs), plan.compare_bytes)
        self._run_jobs(jobs, on_compared)
        self.progress.finish()
        return differing

    def _on_copied(self, job: Job, result: Result) -> None:
        r = self.report
        if result.skipped:
            r.unchanged += 1
            log.debug("%s: the destination holds this version already (its stored time matches)", job.name)
            self.progress.add(files=1)
            return
        if job.kind == COMPARE:  # see _settle: what an earlier attempt may have written
            if not result.same:
                self._failed(job.name, f"{job.name} appeared at the destination during the run with other content: not replaced")
                return
            result.bytes, result.verified = job.size, self.opts.verify_get_after_put
        r.copied += 1
        r.copied_bytes += result.bytes
        r.renamed += 1 if job.keep_old_as else 0
        r.verified_after_put += 1 if result.verified else 0
        if file_log.isEnabledFor(logging.INFO):  # most runs log no per-file line: skip the formatting
            file_log.info(
                "copied %s (%s, %s)%s%s", job.name, human_bytes(result.bytes), job.reason,
                f", the old version renamed {job.name} -> {job.keep_old_as}" if job.keep_old_as else "",
                ", read back: verified" if result.verified else "",
            )  # fmt: skip
        self.progress.add(files=1)

    def _run_jobs(self, jobs: list[Job], on_success: Callable[[Job, Result], None]) -> None:
        """Run ``jobs`` on the pool; retry failures with backoff; record what never worked."""
        # Ctrl-C lands between two polls (0.2 s at most), never inside a queue.
        with deferred_interrupts() as check:
            self._run_jobs_deferred(jobs, on_success, check)

    def _run_jobs_deferred(
        self, jobs: list[Job], on_success: Callable[[Job, Result], None], check: Callable[[], None]
    ) -> None:
        if not jobs:
            return
        shards = make_shards(jobs, self.opts.workers)
        # A worker without a shard would only cost its start and logins.
        pool = self._start_pool(len(shards))
        waiting = {j.id: j for j in jobs}
        retry_at: list[tuple[float, int, Job]] = []
        streamed: dict[int, int] = {}  # job id -> bytes reported while in flight
        for shard in shards:
            pool.submit(shard)
        while waiting:
            check()
            now = time.monotonic()
            due = []
            while retry_at and retry_at[0][0] <= now:
                due.append(heapq.heappop(retry_at)[2])
            pool.submit(due)
            if pool.fatal:
                raise SyncError(f"a worker could not open the backends: {pool.fatal}")
            timeout = min(0.2, max(0.0, retry_at[0][0] - now)) if retry_at else 0.2
            for kind, _wid, payload in pool.poll(timeout):
                if kind == MSG_BYTES:
                    job_id, n = payload
                    streamed[job_id] = streamed.get(job_id, 0) + n
                    self.progress.add(nbytes=n)
                elif kind == MSG_RESULT:
                    for result in payload:
                        job = waiting.get(result.job_id)
                        if job is not None:
                            # The result's own count replaces what was streamed.
                            self.progress.add(nbytes=result.bytes - streamed.pop(job.id, 0))
                            self._settle(job, result, waiting, retry_at, now, on_success)
            self.progress.draw()

    def _settle(
        self,
        job: Job,
        result: Result,
        waiting: dict[int, Job],
        retry_at: list[tuple[float, int, Job]],
        now: float,
        on_success: Callable[[Job, Result], None],
    ) -> None:
        """Book a job's result: done, to retry after a backoff, or failed for good."""
        if result.ok:
            del waiting[job.id]
            on_success(job, result)
        elif result.conflict is not None and result.conflict == job.keep_old_as and job.attempt < MAX_NAME_CONFLICTS:
            # Another writer took the chosen retention name since the listing:
            # keep the old version under the next free one instead.
            job.attempt += 1
            job.keep_old_as = self._next_retention_name(job.name, result.conflict)
            log.log(RETRY, "%s; keeping the old version as %s instead", result.error, job.keep_old_as)
            heapq.heappush(retry_at, (now, job.id, job))
        elif result.conflict is not None and result.conflict == job.name and job.kind == COPY and job.attempt > 0:
            # An earlier attempt may have written it, its result lost with a
            # dead worker or a dropped connection: the same content there is
            # that copy; anything else is another writer's, and stays.
            job.kind, job.dst_size = COMPARE, job.size
            heapq.heappush(retry_at, (now, job.id, job))
        elif result.retryable and job.attempt < self.opts.retry:
            job.attempt += 1
            self.report.retries += 1
            delay = self._backoff(job.attempt - 1)
            log.log(RETRY, "%s; retry %d of %d in %.1f s", result.error, job.attempt, self.opts.retry, delay)
            heapq.heappush(retry_at, (now + delay, job.id, job))
        else:
            del waiting[job.id]
            self._failed(job.name, result.error or "failed")

    def _error(self, message: str) -> None:
        """An error the run ends with: printed on stderr (and logged) once, and kept in the report."""
        log.error("%s", message)
        self.report.errors.append(secrets.redact(message))

    def _failed(self, name: str, error: str) -> None:
        log.error("%s", error)
        self.report.failed.append((name, error))
        self.copy_failures += 1
        self.progress.add(files=1)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter around the base delay."""
        base = self.opts.retry_delay * (2**attempt if self.opts.exponential_backoff else 1)
        return min(MAX_BACKOFF_SECONDS, base * random.uniform(0.5, 1.5))

    def _start_pool(self, wanted: int) -> Executor:
        """The executor, started on first need, with up to ``wanted`` workers running."""
        if self.pool is None:
            from synctool.executor import open_executor

            settings = WorkerSettings(verify_get_after_put=self.opts.verify_get_after_put)
            # Ctrl-C waits for the executor's imports: cut short,
            # multiprocess's fails as an ImportError.
            with deferred_interrupts():
                self.pool = open_executor(
                    self.opts.workers,
                    self.src.spec,  # the specs the coordinator opened its own backends with
                    self.dst.spec,
                    settings,
                    logging.getLogger("synctool").level,
                )
        with deferred_interrupts():
            self.pool.start(wanted)
        return self.pool

    def _stop_pool(self, cancel: bool = False) -> None:
        if self.pool is not None:
            with deferred_interrupts(reraise=False):  # a second Ctrl-C must not cut the clean-up short
                self.pool.stop(cancel=cancel)
            self.report.worker_peak_rss = max(self.pool.peaks.values(), default=0)
            self.pool = None

    # -- renames and deletes, last -------------------------------------------------
    def _refuse_max_delete(self, plan: Plan) -> None:
        self._error(
            f"the plan would delete or rename {plan.removals} file(s), more than --max-delete "
            f"{self.opts.max_delete}: no file was deleted or renamed"
        )

    def _apply_removals(self, plan: Plan) -> None:
        if not plan.removals:
            return
        if self.copy_failures:
            self._error(
                f"{self.copy_failures} file(s) failed to copy, so no file was deleted or renamed "
                "at the destination; fix the failures and run again"
            )
            return
        if self.opts.max_delete is not None and plan.removals > self.opts.max_delete:
            self._refuse_max_delete(plan)
            return
        if plan.renames:
            self.progress.start("renaming", len(plan.renames))
            with cf.ThreadPoolExecutor(RENAME_THREADS, thread_name_prefix="rename") as ex:
                for (old, _), (new, error) in zip(plan.renames, ex.map(lambda p: self._rename(*p), plan.renames)):
                    if error:
                        self.report.failed.append((old, f"rename to {new} failed: {error}"))
                        log.error("%s: rename to %s failed: %s", old, new, error)
                    else:
                        self.report.renamed += 1
                        file_log.info("renamed %s -> %s", old, new)
                    self.progress.add(files=1)
            self.progress.finish()
        if plan.deletes:
            self.progress.start("deleting", len(plan.deletes))
            for i in range(0, len(plan.deletes), DELETE_BATCH):
                batch = plan.deletes[i : i + DELETE_BATCH]
                failures = self._delete_batch(batch)
                self.report.deleted += len(batch) - len(failures)
                for name in batch:
                    if name not in failures:
                        file_log.info("deleted %s", name)
                for name, reason in failures.items():
                    self.report.failed.append((name, f"delete failed: {reason}"))
                    log.error("%s: delete failed: %s", name, reason)
                self.progress.add(files=len(batch))
            self.progress.finish()

    def _next_retention_name(self, name: str, taken: str) -> str:
        assert self.plan is not None and self.plan.retention is not None
        self.plan.retention.mark_taken(taken)
        return self.plan.retention.name_for(name)

    def _rename(self, old: str, new: str) -> tuple[str, str | None]:
        """Rename ``old`` to the retention name ``new``, or to the next free one
        when another writer took ``new``. Returns (the name used, the last error)."""
        for _ in range(MAX_NAME_CONFLICTS):
            try:
                return new, self._with_retry(self.dst.rename, old, new)
            except AlreadyExists as exc:
                new = self._next_retention_name(old, new)
                log.log(RETRY, "%s; keeping %s as %s instead", exc, old, new)
        return new, f"{old}: every retention name tried was taken"

    def _with_retry(self, fn: Callable[..., None], *args: str) -> str | None:
        """Call ``fn``; on a retryable error try again with backoff. Returns the
        last error; :class:`AlreadyExists` is raised for the caller to decide."""
        for attempt in itertools.count():
            try:
                fn(*args)
                return None
            except AlreadyExists:
                raise
            except BackendError as exc:
                if not exc.retryable or attempt >= self.opts.retry:
                    return secrets.redact(str(exc))
                time.sleep(self._backoff(attempt))
        return None  # unreachable

    def _delete_batch(self, batch: list[str]) -> dict[str, str]:
        remaining = list(batch)
        failures: dict[str, str] = {}
        for attempt in itertools.count():
            try:
                self.dst.delete(remaining)
                return {}
            except DeleteError as exc:
                failures = exc.failures
            except BackendError as exc:
                failures = {name: str(exc) for name in remaining}
                if not exc.retryable:
                    break
            if attempt >= self.opts.retry:
                break
            remaining = list(failures)
            time.sleep(self._backoff(attempt))
        return {k: secrets.redact(v) for k, v in failures.items()}

    # -- ending --------------------------------------------------------------
    def _set_exit_code(self) -> None:
        r = self.report
        if r.exit_code:
            return
        if r.failed:
            r.exit_code = ExitCode.PARTIAL
        elif r.errors:
            r.exit_code = ExitCode.FATAL
