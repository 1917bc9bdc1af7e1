"""The figures of one run: what the summary prints and ``--report`` writes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from synctool.errors import ExitCode, SyncError
from synctool.logs import create_private_file, printable
from synctool.secrets import redact


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


#: Failed files and warnings kept by name in the report; past that they are
#: counted (each was logged as it happened), so a run that fails a million
#: files holds a bounded report.
LISTED_CAP = 1000


@dataclasses.dataclass
class Report:
    source: str = ""
    destination: str = ""
    dry_run: bool = False
    # what the plan asked for
    planned_copies: int = 0
    planned_bytes: int = 0
    planned_renames: int = 0
    planned_deletes: int = 0
    planned_verifies: int = 0
    # what happened
    copied: int = 0
    copied_bytes: int = 0
    renamed: int = 0
    deleted: int = 0
    verified: int = 0  # pairs compared by --verify-contents
    verify_mismatches: int = 0  # of those, how many differed (and were copied)
    verified_after_put: int = 0  # copies read back and matched
    unchanged: int = 0
    kept: int = 0  # retention versions left alone
    retries: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # the first LISTED_CAP
    failed_count: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)  # the first LISTED_CAP
    warnings_count: int = 0
    elapsed: float = 0.0  # wall time of the whole run
    prompt_seconds: float = 0.0  # of that, time spent waiting at the [y/N] prompt
    worker_peak_rss: int = 0
    exit_code: int = ExitCode.SUCCESS

    @property
    def throughput(self) -> float:
        """Bytes copied per second of the run, the time waiting for an answer at the prompt left out."""
        working = self.elapsed - self.prompt_seconds
        return self.copied_bytes / working if working > 0 else 0.0

    def add_failure(self, name: str, error: str) -> None:
        self.failed_count += 1
        if len(self.failed) < LISTED_CAP:
            self.failed.append((name, redact(error)))

    def add_warning(self, message: str) -> None:
        self.warnings_count += 1
        if len(self.warnings) < LISTED_CAP:
            self.warnings.append(redact(message))

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.SUCCESS

    def raise_for_status(self) -> None:
        """Raise :class:`SyncFailed` unless the run succeeded."""
        if not self.ok:
            raise SyncFailed(self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["failed"] = [{"name": n, "error": e} for n, e in self.failed]
        out["throughput"] = self.throughput
        out["exit_code"] = int(self.exit_code)
        return out

    def to_json(self) -> str:
        return redact(json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    def write(self, path: str) -> None:
        """Write the report as JSON, readable by its owner only; raises :class:`SyncError` when it cannot."""
        create_private_file(path, "report file")
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.to_json() + "\n")
        except OSError as exc:
            raise SyncError(f"cannot write the report file {path}: {exc.strerror}") from None

    def summary_lines(self) -> list[str]:
        """What the command line prints on stdout at the end.

        Errors and failed files are not repeated here: each was printed on
        stderr (and written to the log file) as it happened.
        """
        nothing_done = not (self.copied or self.renamed or self.deleted or self.verified)
        ended_early = (ExitCode.DECLINED, ExitCode.USAGE, ExitCode.FATAL, ExitCode.INTERRUPTED)
        if self.exit_code == ExitCode.USAGE or (self.exit_code in ended_early and nothing_done and not self.dry_run):
            return []  # a refused command did nothing to sum up
        verb = "Would copy" if self.dry_run else "Copied"
        waited = f"{self.prompt_seconds:.1f} s at the prompt, " if self.prompt_seconds >= 0.05 else ""
        lines = [
            f"{verb} {self.copied if not self.dry_run else self.planned_copies} file(s), "
            f"{human_bytes(self.copied_bytes if not self.dry_run else self.planned_bytes)}"
            + ("" if self.dry_run else f" in {self.elapsed:.1f} s ({waited}{human_bytes(self.throughput)}/s)"),
        ]
        if self.dry_run:
            lines.append(f"Would rename {self.planned_renames}, delete {self.planned_deletes}, "
                         f"verify {self.planned_verifies} file(s)")
        else:
            lines.append(
                f"Renamed {self.renamed}, deleted {self.deleted}, verified {self.verified} "
                f"({self.verify_mismatches} differed), read back {self.verified_after_put}, "
                f"unchanged {self.unchanged}, failed {self.failed_count}"
            )
        return [printable(redact(line)) for line in lines]


class SyncFailed(Exception):
    def __init__(self, report: Report):
        self.report = report
        detail = "; ".join(report.errors) or f"{report.failed_count} file(s) failed"
        super().__init__(f"sync failed (exit code {int(report.exit_code)}): {redact(detail)}")
