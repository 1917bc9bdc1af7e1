"""One sync run: list and plan as streams, copy on the executor as the plan goes, then rename and delete.

The coordinator decides everything and moves no file content itself; the
workers do the streaming. It never imports a concrete backend: it opens
backends through the registry by URL scheme.

How a run flows (rclone's march, sync and operations, in that order):

    listing threads ──> planner thread ──> this thread ──> executor (workers)
    (synctool/listing)  (synctool/plan)    (JobRunner)     (synctool/executor)

The plan's events arrive as the listings go. Copies and verifies go to the
job runner at once (with -y, and in library calls), so the first file is
written while the listing is still at its start. What must wait for the end
(renames and deletes, copies that a destination-only entry stands in the
way of) waits on disk, and runs once every copy has succeeded. A plan that
needs a confirmation is spooled to disk, summed up, asked about, then run
from the spool. Memory holds a window of entries and jobs, whatever the
number of files.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

from synctool import secrets
from synctool.backends import Backend, BackendError, BackendSpec, Entry, NotFound
from synctool.errors import Declined, ExitCode, Interrupted, SyncError
from synctool.interrupts import deferred_interrupts
from synctool.listing import ReadAhead, entries
from synctool.logs import DRYRUN, FILES, OUTPUT, printable
from synctool.options import SyncOptions
from synctool.plan import Compare, Copy, DestinationTraits, Planner
from synctool.preflight import Room, open_side, refuse_overlap
from synctool.progress import Progress
from synctool.removals import Removals, delete
from synctool.report import Report, human_bytes
from synctool.retry import RetryPolicy
from synctool.runner import JobRunner
from synctool.spool import Spool
from workers import journal
from workers.jobs import COMPARE, COPY, Job, Result, WorkerSettings

if TYPE_CHECKING:
    from synctool.executor import Executor

__all__ = ["Coordinator", "Env", "open_side", "refuse_overlap"]

log = logging.getLogger("synctool")
file_log = logging.getLogger(FILES)
output_log = logging.getLogger(OUTPUT)

#: What the plan found that is left alone, as the warning says it.
_WARNINGS = {
    "ignored": "destination entry {!r} has an unsafe name; left alone",
    "links": "{} at the destination is a symbolic link: left alone, never followed",
    "skipped_links": "skipping symbolic link {} at the source (links are never followed)",
    "future": "{} is dated in the future at the source; it is compared by size and its stored time only",
}
Event = tuple[str, object]


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


class Coordinator:
    def __init__(self, opts: SyncOptions, env: Env | None = None):
        self.opts = opts
        self.env = env or Env()
        self.report = Report(dry_run=opts.dry_run)
        self.progress = Progress(self.env.stdout if opts.progress else None, self.env.stdout_isatty)
        self.retry = RetryPolicy(opts.retry, opts.retry_delay, opts.exponential_backoff)
        self.started_at = time.time()
        self.stamp = datetime.fromtimestamp(self.started_at, timezone.utc).strftime("%Y%m%d%H%M%S")
        self.pool: Executor | None = None
        self.src: Backend | None = None
        self.dst: Backend | None = None
        self.planner: Planner | None = None
        self.room: Room | None = None
        self.listed = {"source": 0, "destination": 0}
        self.threads: list[ReadAhead] = []  # listing and plan threads, stopped at the end
        # What waits for the end, on disk.
        self.removals = Removals()
        self.blocked: Spool[Copy] = Spool()  # copies a destination-only entry stands in the way of
        self.later: Spool[tuple[str, object]] = Spool()  # a plan to confirm: its copies and verifies
        self.differing: Spool[Copy] = Spool()  # a confirmed verify's copies, asked about before they run
        self.journals: list[str] = []
        self.kept_versions = 0  # copies that keep the version they replace (--retention)
        self.copy_failures = 0
        self.stopping: SyncError | None = None  # the run ends once what is in flight is settled
        self.create_destination = False  # the destination root is missing: create it before copying
        self.confirmed = False  # past the last question: from here on the destination changes
        self.runner: JobRunner | None = None

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
            for thread in self.threads:
                thread.stop()
            for thread in self.threads:
                thread.close()
            self.progress.finish()
            for backend in (self.src, self.dst):
                if backend is not None:
                    backend.close()
            for spool in (self.removals, self.blocked, self.later, self.differing):
                spool.close()
            self.report.elapsed = time.monotonic() - started
        return self.report

    def _run(self) -> None:
        opts = self.opts
        self.src = self._open(opts.spec("source"), "source")
        self.dst = self._open(opts.spec("destination"), "destination")
        streaming = opts.confirm and not opts.dry_run  # nothing to ask: copies start with the listing
        if streaming:
            # Forked before the backends connect: an SFTP connection runs a
            # thread, and a process with threads starts its workers as fresh
            # interpreters, whose imports cost more than a no-op run's listing.
            self._start_pool(opts.workers)
        for backend, side in ((self.src, "source"), (self.dst, "destination")):
            self._prepare(backend, side)
        refuse_overlap(self.src, self.dst)  # after prepare: an SFTP root may be known only then
        if self.pool is not None:
            # Logged in to both sides: the workers' logins overlap the listing.
            self.pool.connect_ahead()
        self.report.source, self.report.destination = self.src.display_url(), self.dst.display_url()
        self.room = Room(self.dst, opts.quota_disable)
        self.planner = Planner(
            stamp=self.stamp,
            force=opts.force,
            retention=opts.retention,
            verify_contents=opts.verify_contents and not opts.force,
            mtime_window=max(self.src.mtime_precision, self.dst.mtime_precision),
            now=self.started_at,
            target=DestinationTraits.of(self.dst),
            recheck=self._unverified(),
            source_is_temporary=self.src.is_temporary,
        )
        if streaming:
            self._run_streaming()
        elif opts.dry_run:
            self._dry_run()
        else:
            self._run_confirmed()
        self._set_exit_code()

    def _open(self, spec: BackendSpec, side: str) -> Backend:
        backend = open_side(spec, side)
        for key in sorted(spec.options):
            if not backend.declares(key):
                self._warn(f"option {key!r} is not known to the {spec.location.scheme}:// backend ({side}); ignored")
        return backend

    def _prepare(self, backend: Backend, side: str) -> None:
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

    def _unverified(self) -> frozenset[str]:
        """Files that an interrupted --verify-get-after-put run wrote but never
        read back, as its journals at the destination name them."""
        if self.create_destination:
            return frozenset()
        names: set[str] = set()
        try:
            found = self.dst.journals()
        except BackendError as exc:
            raise SyncError(f"listing the destination failed: {exc}") from None
        for name in found:
            try:
                names.update(journal.decode(self.dst.read_small(name)))
            except (BackendError, ValueError) as exc:
                raise SyncError(
                    f"cannot read {name}, the list of files an interrupted run wrote but did not "
                    f"read back ({exc}); without it those files cannot be told from verified ones"
                ) from None
        if names:
            log.warning("%d file(s) written by an interrupted run were never read back: comparing them", len(names))
        return frozenset(names)

    # -- listing and planning, as streams ---------------------------------------
    def _plan_events(self) -> ReadAhead:
        """The plan's events, made in a thread from the two listings, each listed in a thread of its own."""
        assert self.src is not None and self.dst is not None and self.planner is not None
        log.debug("listing both sides")

        def side(backend: Backend, name: str) -> ReadAhead | list:
            if name == "destination" and self.create_destination:
                return []

            def counted(n: int) -> None:
                self.listed[name] += n

            return self._thread(entries(backend, name, self.retry, counted), f"list-{name}")

        src, dst = side(self.src, "source"), side(self.dst, "destination")
        return self._thread(self.planner.events(src, dst), "plan")

    def _thread(self, items: Iterator, name: str) -> ReadAhead:
        ahead = ReadAhead(items, name)
        self.threads.append(ahead)
        return ahead

    def _count_listed(self) -> None:
        self.progress.files_done = self.listed["source"] + self.listed["destination"]
        self.progress.draw()

    def _listed(self) -> None:
        assert self.planner is not None
        self.report.unchanged += self.planner.unchanged
        self.report.kept = self.planner.kept
        self.progress.final = True
        log.info("listed %d file(s) at the source, %d at the destination", self.listed["source"], self.listed["destination"])

    def _take(self, kind: str, value: object, copy: Callable[[Copy], None], verify: Callable[[Compare], None]) -> None:
        """Book one event of the plan; hand copies and verifies to ``copy`` and ``verify``."""
        r = self.report
        if kind == "copies":
            c: Copy = value  # type: ignore[assignment]
            r.planned_copies += 1
            r.planned_bytes += c.entry.size
            if c.keep_old_as:
                r.planned_renames += 1
                self.kept_versions += 1
            self.progress.grow(1, c.entry.size)
            if c.blocked:
                self.blocked.append(c)
            else:
                copy(c)
        elif kind == "compares":
            cmp: Compare = value  # type: ignore[assignment]
            r.planned_verifies += 1
            verify(cmp)
        elif kind == "renames":
            r.planned_renames += 1
            self.removals.renames.append(value)  # type: ignore[arg-type]
        elif kind == "deletes":
            r.planned_deletes += 1
            self.removals.deletes.append(value)  # type: ignore[arg-type]
        elif kind == "journals":
            self.journals.append(value)  # type: ignore[arg-type]
        elif kind == "refused":
            name, problem = value  # type: ignore[misc]
            log.error("%s", problem)
            r.add_failure(name, problem)
        else:
            self._warn(_WARNINGS[kind].format(value))

    # -- a dry run -------------------------------------------------------------
    def _dry_run(self) -> None:
        def copy(c: Copy) -> None:
            self._tell(f"would copy {c.entry.name} ({human_bytes(c.entry.size)}, {c.reason})")
            if c.keep_old_as:
                self._tell(f"would keep the old {c.entry.name} as {c.keep_old_as}")

        def verify(c: Compare) -> None:
            self._tell(f"would verify {c.source.name}")

        self.progress.start("listing")
        for kind, value in self._plan_events():
            self._take(kind, value, copy, verify)
            self._count_listed()
            if kind == "renames":
                self._tell("would rename {} -> {}".format(*value))  # type: ignore[str-format]
            elif kind == "deletes":
                self._tell(f"would delete {value}")
        for c in self.blocked:
            copy(c)
        self._listed()
        self.progress.finish()
        assert self.room is not None
        self.room.check(self.report.planned_bytes)
        if self._too_many_removals():
            self._refuse_max_delete()

    def _tell(self, line: str) -> None:
        """A line of the dry run: the output asked for, on stdout (and in the log file)."""
        output_log.log(DRYRUN, "%s", line)
        if self.env.stdout is not None:
            self.env.stdout.write(printable(secrets.redact(line)) + "\n")

    # -- a run that copies while it lists --------------------------------------
    def _run_streaming(self) -> None:
        """With -y (or from the library): nothing to ask, so copies start with the listing."""
        self.confirmed = True
        # Started already (see _run): their start-up and logins overlap the listing.
        self._start_pool(self.opts.workers)
        self._runner()
        self.progress.start("copying")
        self.progress.final = False

        self._run_events(self._plan_events(), lambda kind, value: self._take(kind, value, self._stream_copy, self._verify_job))
        self._listed()
        if self.later:  # held until the whole plan was known to fit
            assert self.room is not None
            self.room.check(self.report.planned_bytes)
            self._run_events(iter(self.later), self._run_planned)
        self._finish()

    def _stream_copy(self, c: Copy) -> None:
        """A copy found while the listing goes on. It starts at once where the
        destination cannot tell its free space. Where it can, every copy
        waits on disk until the listing has ended and the whole plan is
        known to fit: Duplicati's check, which writes nothing for a plan that
        does not. A listing takes a small part of the time its copies take,
        so little overlap is lost."""
        assert self.room is not None
        if self.room.free is None:
            self._copy_job(c)
        else:
            self.later.append(("copies", c))

    def _copy_job(self, c: Copy) -> None:
        """Hand a copy of the plan to the runner (the room check has passed)."""
        assert self.runner is not None
        self._create_destination()  # at the first copy
        self.runner.add(
            COPY, c.entry.name, c.entry.size, c.entry.mtime, c.keep_old_as,
            new=c.new, unless_stored_mtime=c.unless_stored_mtime, reason=c.reason,
        )  # fmt: skip

    def _run_events(self, events: ReadAhead | Iterator[Event], each: Callable[[str, object], None]) -> None:
        """Take the plan's events as they come (``each`` books one), run their
        jobs, and wait until all are settled.

        Events are taken only while the runner has room: a full window stops
        the plan, which stops the listings. Ctrl-C lands between two polls,
        never inside a queue.
        """
        runner = self.runner
        assert runner is not None
        take, bell = (events.take, [events.bell]) if isinstance(events, ReadAhead) else (_batches(events), [])
        with deferred_interrupts() as check:
            ended = False
            while not ended or runner.busy:
                check()
                got = False
                wanted = not ended and runner.has_room and self.stopping is None
                if wanted:
                    try:
                        batch = take(0.0)
                    except SyncError as exc:
                        # A listing failed. The copies in flight settle first,
                        # so that the report counts every one that was made,
                        # but none is tried again.
                        self.stopping, batch = self.stopping or exc, None
                        runner.stop_retrying(f"not tried again: {exc}")
                    if batch is None:
                        ended = True
                    for kind, value in batch or ():
                        each(kind, value)
                    got = bool(batch)
                if ended or runner.hungry or self.stopping is not None:
                    runner.flush()
                if not ended or runner.busy:  # else nothing is left to wait for
                    # One wait for whichever comes first: a worker's message,
                    # or the plan's next batch when there is room for it.
                    runner.pump(0.0 if got else 0.05, bell if wanted and not ended else ())
                self.progress.draw()
                if self.stopping is not None and not runner.busy:
                    raise self.stopping

    def _finish(self) -> None:
        """After the copies: renames and deletes, then what they made room for, then the journals."""
        self.progress.finish()
        self._create_destination()  # a mirror of an empty source is an empty folder
        self._apply_removals()
        if self.blocked and self.copy_failures:
            for c in self.blocked:
                self._failed(c.entry.name, f"{c.entry.name}: a destination-only file or folder is in its way, and was not removed")
        elif self.blocked:
            # The removals just made room for these.
            self.progress.start("copying", len(self.blocked), sum(c.entry.size for c in self.blocked))
            self._run_events((("copies", c) for c in self.blocked), self._run_planned)
            self.progress.finish()
        if self.pool is not None and self.pool.replaced:
            self._sweep_debris()
        self._stop_pool()
        if self.journals and not self.copy_failures:
            # Every file they named was compared (and copied where it differed).
            for name, reason in delete(self.dst, self.retry, self.journals).items():
                log.warning("could not remove %s: %s", name, reason)

    # -- a run that asks first ---------------------------------------------------
    def _run_confirmed(self) -> None:
        """Without -y: the whole plan first (on disk), a question, then the run from the spool."""
        later = self.later
        self.progress.start("listing")
        for kind, value in self._plan_events():
            self._take(kind, value, lambda c: later.append(("copies", c)), lambda c: later.append(("compares", c)))
            self._count_listed()
        self._listed()
        self.progress.finish()
        r = self.report
        assert self.room is not None
        self.room.check(r.planned_bytes)
        if r.planned_verifies:
            self._confirm(f"Verify {r.planned_verifies} file(s) that seem equal by reading both sides?")
            self._start_pool(self.opts.workers)
            self.runner = self._runner(differing=self.differing)
            self.progress.start("verifying", r.planned_verifies)
            self._run_events((e for e in later if e[0] == "compares"), self._run_planned)
            self.progress.finish()
        copies = r.planned_copies
        if self.differing:  # the verifies found more to copy
            self.room.check(r.planned_bytes)
        if copies or len(self.removals):
            self._confirm(self._plan_question())
        self.confirmed = True
        self._create_destination()
        self._start_pool(self.opts.workers)
        self._runner()
        self.progress.start("copying", copies, r.planned_bytes)
        copies_later = (e for e in later if e[0] == "copies")
        differing = (("copies", c) for c in self.differing)
        self._run_events(itertools.chain(copies_later, differing), self._run_planned)
        self._finish()

    def _run_planned(self, kind: str, value: object) -> None:
        """Run a copy or a verify that the plan gave earlier, and that was booked then."""
        if kind == "copies":
            self._copy_job(value)  # type: ignore[arg-type]
        else:
            self._verify_job(value)  # type: ignore[arg-type]

    def _verify_job(self, c: Compare) -> None:
        assert self.runner is not None
        self.runner.add(COMPARE, c.source.name, c.source.size, c.source.mtime, c.keep_old_as, dst_size=c.destination.size)

    def _confirm(self, question: str) -> None:
        """Ask on the terminal; no terminal means no."""
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

    def _plan_question(self) -> str:
        r = self.report
        src, dst = r.source, r.destination
        lines = []
        if len(self.removals):
            lines.append(
                f"Rename {len(self.removals.renames)} and delete {len(self.removals.deletes)} file(s) from {dst}"
                if self.opts.retention
                else f"Delete {len(self.removals.deletes)} file(s) from {dst}"
            )
        if r.planned_copies:
            kept = self.kept_versions
            lines.append(
                f"Copy {r.planned_copies} file(s), {human_bytes(r.planned_bytes)}, from {src} to {dst}"
                + (f" (keeping {kept} overwritten version(s))" if kept else "")
            )
        return "\n".join(lines) + "\nContinue?"

    # -- jobs and their results ----------------------------------------------------
    def _runner(self, differing: Spool[Copy] | None = None) -> JobRunner:
        """A job runner on the executor. Copies of files a verify found
        different run at once, or wait in ``differing`` to be asked about."""
        assert self.pool is not None and self.planner is not None
        retention = self.planner.retention

        def next_name(name: str, taken: str) -> str:
            retention.mark_taken(taken)
            return retention.name_for(name)

        def settled(job: Job, result: Result) -> None:
            if job.kind == COMPARE and not job.rechecking:
                self._on_compared(job, result, differing)
            else:
                self._on_copied(job, result)

        def failed(job: Job, error: str) -> None:
            self._failed(job.name, error)

        self._retire_runner()
        self.runner = JobRunner(
            self.pool, self.opts.workers, self.retry, settled, failed,
            lambda n: self.progress.add(nbytes=n), next_name,
        )  # fmt: skip
        return self.runner

    def _on_compared(self, job: Job, result: Result, differing: Spool[Copy] | None) -> None:
        self.report.verified += 1
        file_log.info("verified %s: %s", job.name, "same" if result.same else "differs from the source, to be copied")
        if result.same:
            return
        self.report.verify_mismatches += 1
        self.report.planned_copies += 1
        self.report.planned_bytes += job.size
        c = Copy(_entry(job), "content", job.keep_old_as)
        if differing is not None:
            differing.append(c)
        else:
            self.progress.grow(1, job.size)
            self._stream_copy(c)

    def _on_copied(self, job: Job, result: Result) -> None:
        r = self.report
        if result.skipped:
            r.unchanged += 1
            log.debug("%s: the destination holds this version already (its stored time matches)", job.name)
            self.progress.add(files=1)
            return
        if job.rechecking:  # what an earlier attempt may have written (see JobRunner._settle)
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

    def _sweep_debris(self) -> None:
        """Remove what workers that died mid-write (SIGKILL, out of memory) left behind.

        The listing predates their temporary files, and no job of this run
        is in flight now, so every temporary file at the destination is
        debris; so are the unfinished uploads of the jobs they held.
        """
        assert self.pool is not None and self.dst is not None
        try:
            debris = [e.name for e in self.dst.list() if self.dst.is_temporary(e.name)]
            if debris:
                self.dst.delete(debris)
            self.dst.abort_unfinished_writes(sorted(self.pool.lost))
        except BackendError as exc:
            log.warning("could not remove what a dead worker left behind: %s", exc)

    def _create_destination(self) -> None:
        if self.create_destination:
            assert self.dst is not None
            try:
                self.dst.prepare(create=True)
            except BackendError as exc:
                raise SyncError(f"destination: {exc}") from None
            self.create_destination = False

    def _start_pool(self, wanted: int) -> Executor:
        """The executor, started on first need, with up to ``wanted`` workers running."""
        if self.pool is None:
            from synctool.executor import open_executor

            assert self.src is not None and self.dst is not None
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
                    scheduler=self.opts.scheduler,
                )
        with deferred_interrupts():
            self.pool.start(wanted)
        return self.pool

    def _stop_pool(self, cancel: bool = False) -> None:
        if self.pool is not None:
            with deferred_interrupts(reraise=False):  # a second Ctrl-C must not cut the clean-up short
                self.pool.stop(cancel=cancel)
            self.report.worker_peak_rss = max(self.pool.peaks.values(), default=0)
            self._retire_runner()
            self.pool = None

    def _retire_runner(self) -> None:
        if self.runner is not None:
            self.report.retries += self.runner.retries
            self.runner = None

    # -- renames and deletes, last -------------------------------------------------
    def _too_many_removals(self) -> bool:
        return self.opts.max_delete is not None and len(self.removals) > self.opts.max_delete

    def _refuse_max_delete(self) -> None:
        self._error(
            f"the plan would delete or rename {len(self.removals)} file(s), more than --max-delete "
            f"{self.opts.max_delete}: no file was deleted or renamed"
        )

    def _apply_removals(self) -> None:
        if not len(self.removals):
            return
        if self.copy_failures:
            self._error(
                f"{self.copy_failures} file(s) failed to copy, so no file was deleted or renamed "
                "at the destination; fix the failures and run again"
            )
            return
        if self._too_many_removals():
            self._refuse_max_delete()
            return
        assert self.dst is not None and self.planner is not None
        self.removals.apply(self.dst, self.retry, self.planner.retention, self.report, self.progress)

    # -- ending --------------------------------------------------------------
    def _error(self, message: str) -> None:
        """An error the run ends with: printed on stderr (and logged) once, and kept in the report."""
        log.error("%s", message)
        self.report.errors.append(secrets.redact(message))

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.report.add_warning(message)

    def _failed(self, name: str, error: str) -> None:
        log.error("%s", error)
        self.report.add_failure(name, error)
        self.copy_failures += 1
        self.progress.add(files=1)

    def _set_exit_code(self) -> None:
        r = self.report
        if r.exit_code:
            return
        if r.failed_count:
            r.exit_code = ExitCode.PARTIAL
        elif r.errors:
            r.exit_code = ExitCode.FATAL


def _entry(job: Job) -> Entry:
    return Entry(job.name, job.size, job.mtime)


def _batches(events: Iterator[Event], size: int = 512) -> Callable[[float], list[Event] | None]:
    """A ``take`` for events already at hand (a spool): the next batch, None at the end."""

    def take(timeout: float) -> list[Event] | None:
        batch = list(itertools.islice(events, size))
        return batch or None

    return take
