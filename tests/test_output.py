"""What a run prints and records: stdout holds the output asked for (the dry
run's lines, the summary), stderr each error once, and the log file the
whole run, file by file, with its summary and exit code.

Runs are real ``synctool`` processes where stdout, stderr, pipes or a
terminal matter; library calls where they do not.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import pty
import re
import select
import subprocess
import termios
import threading
import time

import pytest

import synctool
from synctool.errors import ExitCode, UsageError
from tests.helpers import FAST, FAST_CLI, OLD, SYNCTOOL, make_tree, read_tree, without_root_overrides, write_big_file

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[")  # a log file line's timestamp


def synctool_run(*args, unprivileged: bool = False) -> subprocess.CompletedProcess:
    """``synctool ARGS``, its output captured; ``unprivileged``: bound by file modes even as root."""
    command = [SYNCTOOL, *map(str, args)]
    return subprocess.run(without_root_overrides(command) if unprivileged else command,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)  # fmt: skip


def log_lines(path: pathlib.Path) -> list[str]:
    lines = path.read_text().splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines  # every line timestamped
    return lines


def one(lines: list[str], text: str) -> str:
    """The one line holding ``text``."""
    found = [line for line in lines if text in line]
    assert len(found) == 1, (text, lines)
    return found[0]


# -- a report or log file that cannot be written -------------------------------------------------
# Tests run as root, which writes through file modes: paths a file stands in the way of, and
# /proc (which takes no new files), fail for root too.
UNWRITABLE = {
    "parent-is-a-file": (lambda tmp: tmp / "afile" / "out", r"/afile is a file, not a folder"),
    "grandparent-is-a-file": (lambda tmp: tmp / "afile" / "missing" / "out", r"/afile is a file, not a folder"),
    "is-a-folder": (lambda tmp: tmp / "afolder", r"it is a folder"),
    "folder-takes-no-new-files": (lambda tmp: pathlib.Path("/proc/synctool-test-out"), r"No such file or directory"),
    "folder-cannot-be-created": (lambda tmp: pathlib.Path("/proc/synctool-test/out"),
                                 r"cannot create its folder /proc/synctool-test"),
}  # fmt: skip
WHAT = {"--report": "report file", "--log-file": "log file"}


def unwritable(tmp: pathlib.Path, case: str) -> tuple[pathlib.Path, str]:
    (tmp / "afile").write_bytes(b"a file, not a folder")
    (tmp / "afolder").mkdir()
    make_path, reason = UNWRITABLE[case]
    return make_path(tmp), reason


@pytest.fixture
def mirror(tmp_path):
    """(source, destination): a run would copy one file and delete another."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"alpha.txt": b"alpha"}, mtime=OLD)
    make_tree(dst, {"stale.txt": b"stale"}, mtime=OLD)
    return src, dst


@pytest.mark.parametrize("case", list(UNWRITABLE))
@pytest.mark.parametrize("flag", list(WHAT))
def test_an_unwritable_report_or_log_file_is_a_usage_error_before_anything_is_listed(tmp_path, mirror, flag, case):
    src, dst = mirror
    path, reason = unwritable(tmp_path, case)
    p = synctool_run(src, dst, "-y", *FAST_CLI, flag, path)
    assert p.returncode == ExitCode.USAGE, (p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr  # nothing listed: no "listed ..." line before it
    assert re.fullmatch(rf"Error: cannot write the {WHAT[flag]} {re.escape(str(path))}: .*{reason}.*", lines[0]), lines
    assert read_tree(dst) == {"stale.txt": b"stale"}


def test_a_log_file_from_global_options_is_checked_too(tmp_path, mirror):
    src, dst = mirror
    path, _ = unwritable(tmp_path, "parent-is-a-file")
    p = synctool_run(src, dst, "-y", *FAST_CLI, "--global-options", f"log-file={path}")
    assert p.returncode == ExitCode.USAGE and "cannot write the log file" in p.stderr, p.stderr
    assert read_tree(dst) == {"stale.txt": b"stale"}


@pytest.mark.parametrize("case", list(UNWRITABLE))
@pytest.mark.parametrize("keyword", ["report_file", "log_file"])
def test_the_library_raises_usage_error_for_an_unwritable_report_or_log_file(tmp_path, mirror, keyword, case):
    src, dst = mirror
    path, reason = unwritable(tmp_path, case)
    what = keyword.replace("_", " ")
    with pytest.raises(UsageError, match=f"cannot write the {what} .*{reason}"):
        synctool.sync(str(src), str(dst), **{keyword: str(path)}, **FAST)
    assert read_tree(dst) == {"stale.txt": b"stale"}


# -- the log file: a record of the run ---------------------------------------------------------------
@pytest.fixture
def changes(tmp_path):
    """A source and destination with one file for each reason to copy, one equal file, one extra file."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"missing.txt": b"new", "resized.txt": b"longer now", "equal.txt": b"same"}, mtime=OLD)
    make_tree(src, {"newer.txt": b"fresh"}, mtime=OLD + 100)
    make_tree(dst, {"resized.txt": b"short", "equal.txt": b"same", "newer.txt": b"stale", "extra.txt": b"x"}, mtime=OLD)
    return src, dst


def test_the_log_file_records_every_file_at_the_default_level_and_stderr_does_not(tmp_path, changes):
    src, dst = changes
    log = tmp_path / "run.log"
    p = synctool_run(src, dst, "-y", *FAST_CLI, "--verify-get-after-put", "--log-file", log)
    assert p.returncode == 0, p.stderr
    lines = log_lines(log)
    assert "copied missing.txt (3 B, missing), read back: verified" in one(lines, "copied missing.txt")
    assert "copied resized.txt (10 B, size), read back: verified" in one(lines, "copied resized.txt")
    assert "copied newer.txt (5 B, newer), read back: verified" in one(lines, "copied newer.txt")
    assert "[INFO]" in one(lines, "deleted extra.txt")
    assert "equal.txt" not in log.read_text()
    # The summary and the exit code close the record (stdout carries the same summary).
    assert "Copied 3 file(s)" in lines[-3] and "deleted 1" in lines[-2] and lines[-1].endswith("exit code 0")
    assert "Copied 3 file(s)" in p.stdout
    # The console is no per-file flood: one line, the listing's.
    assert p.stderr.splitlines() == ["INFO: listed 4 file(s) at the source, 4 at the destination"], p.stderr

    make_tree(src, {"missing.txt": b"NEW"}, mtime=OLD + 200)
    p = synctool_run(src, dst, "-y", *FAST_CLI, "--log-file", log, "--log-level", "Verbose")
    assert p.returncode == 0, p.stderr
    assert "copied missing.txt (3 B, newer)" in one(p.stderr.splitlines(), "missing.txt")  # Verbose: per file
    assert "exit code" not in p.stderr and "Copied" not in p.stderr  # the summary stays on stdout
    assert one(log_lines(log)[len(lines):], "copied missing.txt")  # appended


def test_the_log_file_records_verification_renames_and_forced_copies(tmp_path, changes):
    src, dst = changes
    make_tree(dst, {"equal.txt": b"SAME"}, mtime=OLD)  # same size and time, other bytes
    make_tree(src, {"twin.txt": b"twin"}, mtime=OLD)
    make_tree(dst, {"twin.txt": b"twin"}, mtime=OLD)
    log = tmp_path / "run.log"
    p = synctool_run(src, dst, "-y", *FAST_CLI, "--verify-contents", "--retention", "--log-file", log)
    assert p.returncode == 0, p.stderr
    lines = log_lines(log)
    assert one(lines, "verified twin.txt").endswith("verified twin.txt: same")
    assert "differs from the source" in one(lines, "verified equal.txt")
    assert re.search(r"copied equal\.txt \(4 B, content\), the old version renamed equal\.txt -> \d{14}\.old\.equal\.txt$",
                     one(lines, "copied equal.txt"))  # fmt: skip
    assert re.search(r"renamed extra\.txt -> \d{14}\.old\.extra\.txt$", one(lines, "renamed extra.txt"))
    assert p.stderr.splitlines() == ["INFO: listed 5 file(s) at the source, 5 at the destination"], p.stderr

    p = synctool_run(src, dst, "-y", *FAST_CLI, "--force", "--log-file", log)
    assert p.returncode == 0, p.stderr
    assert "copied twin.txt (4 B, force)" in one(log_lines(log)[len(lines):], "copied twin.txt")


def test_a_library_call_records_the_run_in_its_log_file_without_telling_the_caller_more(tmp_path, changes, caplog):
    # The caller's logging shows warnings (Python's default); the log file
    # asked for is the same record the command line leaves.
    src, dst = changes
    log = tmp_path / "lib.log"
    caplog.set_level(logging.WARNING)
    caplog.handler.setLevel(logging.NOTSET)  # as basicConfig's: the logger's level decides
    report = synctool.sync(str(src), str(dst), log_file=str(log), **FAST)
    assert report.exit_code == 0, report.to_dict()
    lines = log_lines(log)
    assert "copied missing.txt (3 B, missing)" in one(lines, "copied missing.txt")
    assert one(lines, "deleted extra.txt") and lines[-1].endswith("exit code 0")
    assert not [r for r in caplog.records if r.levelno < logging.WARNING], caplog.records
    # A level the caller gives is the file's too.
    synctool.sync(str(src), str(dst), log_file=str(log), log_level="Warning", **FAST)
    assert log_lines(log) == lines


def test_the_command_line_run_in_process_leaves_the_callers_logging_as_it_was(tmp_path, changes, caplog):
    """A program (a test runner) that runs the command line in-process and
    then calls the library: the run at Information must not leave the
    synctool logger at that level, or the caller's handlers get every line."""
    from click.testing import CliRunner

    from synctool.cli.main import command

    src, dst = changes
    before = logging.getLogger("synctool").level
    result = CliRunner().invoke(command, [str(src), str(dst), "-y", *FAST_CLI, "--log-level", "Information"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger("synctool").level == before
    caplog.set_level(logging.WARNING)
    caplog.handler.setLevel(logging.NOTSET)
    synctool.sync(str(src), str(tmp_path / "again"), log_file=str(tmp_path / "lib.log"), **FAST)
    assert not [r for r in caplog.records if r.levelno < logging.WARNING], caplog.records


def test_a_failure_is_told_once_on_stderr_and_recorded_with_its_reason(tmp_path, changes):
    src, dst = changes
    make_tree(src, {"locked.txt": b"unreadable"})
    os.chmod(src / "locked.txt", 0)
    log = tmp_path / "run.log"
    p = synctool_run(src, dst, "-y", *FAST_CLI, "--retry", "0", "--log-file", log, unprivileged=True)
    assert p.returncode == ExitCode.PARTIAL, (p.stdout, p.stderr)
    # Each error once, on stderr; stdout has the summary and no error.
    assert p.stderr.count("ERROR: reading locked.txt failed: permission denied") == 1, p.stderr
    notice = "1 file(s) failed to copy, so no file was deleted or renamed"
    assert p.stderr.count(notice) == 1, p.stderr
    assert "locked.txt" not in p.stdout and "rror" not in p.stdout and "failed 1" in p.stdout
    lines = log_lines(log)
    assert "[ERROR]" in one(lines, "reading locked.txt failed: permission denied") and "[ERROR]" in one(lines, notice)
    assert lines[-1].endswith("exit code 3")
    assert (dst / "extra.txt").exists()


def test_a_max_delete_refusal_is_told_once_on_stderr(tmp_path, changes):
    src, dst = changes
    p = synctool_run(src, dst, "-y", *FAST_CLI, "--max-delete", "0")
    assert p.returncode == ExitCode.FATAL, (p.stdout, p.stderr)
    assert p.stderr.count("more than --max-delete 0: no file was deleted or renamed") == 1, p.stderr
    assert "max-delete" not in p.stdout and "Copied 3 file(s)" in p.stdout
    assert (dst / "extra.txt").exists()


def test_a_log_file_whose_disk_fills_up_is_told_once_without_a_traceback(tmp_path, changes, small_fs):
    src, dst = changes
    log = small_fs / "run.log"
    with open(small_fs / "filler", "wb") as filler:  # the log's disk is full once the run starts
        with pytest.raises(OSError):
            while True:
                filler.write(b"f" * 65536)
                filler.flush()
    p = synctool_run(src, dst, "-y", *FAST_CLI, "--log-file", log)
    # The mirror is made, but the record asked for is not: the run says so, once.
    assert read_tree(dst) == read_tree(src)
    assert p.returncode == ExitCode.FATAL, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Logging error" not in p.stderr, p.stderr
    assert p.stderr.count(f"ERROR: cannot write the log file {log}: No space left on device") == 1, p.stderr
    assert "Copied 3 file(s)" in p.stdout


# -- the dry run's lines, and a reader that stops reading ------------------------------------------------
def test_the_dry_run_lists_on_stdout(tmp_path, changes):
    src, dst = changes
    log = tmp_path / "run.log"
    p = synctool_run(src, dst, "--dry-run", *FAST_CLI, "--log-file", log)
    assert p.returncode == 0, p.stderr
    # In name order, as the plan goes.
    assert p.stdout.splitlines() == [
        "would delete extra.txt",
        "would copy missing.txt (3 B, missing)",
        "would copy newer.txt (5 B, newer)",
        "would copy resized.txt (10 B, size)",
        "Would copy 3 file(s), 18 B",
        "Would rename 0, delete 1, verify 0 file(s)",
    ]
    assert "would" not in p.stderr
    assert one(log_lines(log), "would delete extra.txt")


def test_a_dry_run_piped_into_head_ends_quietly(tmp_path):
    src = tmp_path / "src"
    # More lines than a pipe holds, so writes go on after the reader has left.
    make_tree(src, {f"a-file-with-a-rather-long-name-{i:05}.txt": b"x" for i in range(3000)})
    proc = subprocess.Popen([SYNCTOOL, src, tmp_path / "dst", "--dry-run", *FAST_CLI],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()))
    drain.start()
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    assert proc.wait(timeout=60) == 0, errors
    drain.join()
    err = errors[0].decode()
    assert first == b"would copy a-file-with-a-rather-long-name-00000.txt (1 B, missing)\n"
    assert err.splitlines() == ["INFO: listed 3000 file(s) at the source, 0 at the destination"], err


def test_a_sync_whose_stdout_is_closed_still_finishes(tmp_path):
    """--progress and the summary write to stdout; nobody reads it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {f"d/f{i}": os.urandom(100) for i in range(200)})
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        p = subprocess.run([SYNCTOOL, src, dst, "-y", "--progress", *FAST_CLI], stdout=write_end,
                           stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write_end)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == ["INFO: listed 200 file(s) at the source, 0 at the destination"], p.stderr
    assert read_tree(dst) == read_tree(src)


# -- at the prompt, on a terminal ------------------------------------------------------------------------
def _take_terminal() -> None:
    """In the child: a session of its own, with stdin (the pty) as its controlling terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class OnTerminal:
    """``synctool ARGS`` with a pseudo-terminal on stdin, stdout and stderr piped."""

    def __init__(self, *args):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([SYNCTOOL, *map(str, args)], stdin=slave, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=_take_terminal)  # fmt: skip
        os.close(slave)
        self.out = b""

    def wait_for(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.out
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                self.out += os.read(self.proc.stdout.fileno(), 65536)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        os.close(self.master)
        return self.proc.returncode, (self.out + out).decode(), err.decode()


def test_time_at_the_prompt_is_not_counted_in_the_transfer_rate(tmp_path):
    src, dst, report = tmp_path / "src", tmp_path / "dst", tmp_path / "report.json"
    src.mkdir()
    write_big_file(src / "big", 32 << 20)
    run = OnTerminal(src, dst, *FAST_CLI, "--report", report)
    run.wait_for(b"[y/N] ")
    time.sleep(2)  # the user thinks it over
    run.type(b"y\n")
    code, out, err = run.finish()
    assert code == 0, (out, err)
    figures = json.loads(report.read_text())
    assert figures["copied_bytes"] == 32 << 20 and figures["prompt_seconds"] >= 2
    assert figures["elapsed"] >= figures["prompt_seconds"]  # elapsed stays the wall time
    working = figures["elapsed"] - figures["prompt_seconds"]
    assert figures["throughput"] == pytest.approx(figures["copied_bytes"] / working)
    assert re.search(r"Copied 1 file\(s\), 32\.0 MiB in \d+\.\d s \([2-9]\.\d s at the prompt, [\d.]+ [KMG]iB/s\)", out), out


def test_ctrl_c_at_the_prompt_says_nothing_was_changed(tmp_path, mirror):
    src, dst = mirror
    run = OnTerminal(src, dst, *FAST_CLI)
    run.wait_for(b"Continue? [y/N] ")
    run.type(b"\x03")  # Ctrl-C: the terminal sends SIGINT to the run's process group
    code, out, err = run.finish()
    assert code == ExitCode.INTERRUPTED, (out, err)
    assert err.count("interrupted") == 1 and "ERROR: interrupted before anything was changed" in err, err
    assert out.endswith("Continue? [y/N] \n"), out  # the error goes below the question; no summary

    assert read_tree(dst) == {"stale.txt": b"stale"}


@pytest.mark.slow
def test_ctrl_c_during_the_copy_says_writes_were_abandoned(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    write_big_file(src / "big", 256 << 20)
    run = OnTerminal(src, dst, *FAST_CLI, "--progress")
    run.wait_for(b"[y/N] ")
    run.type(b"y\n")
    run.wait_for(b"copying:")
    run.type(b"\x03")
    code, out, err = run.finish()
    assert code == ExitCode.INTERRUPTED, (out, err)
    assert "before anything was changed" not in err and err.count("interrupted") == 1, err
    assert "ERROR: interrupted: workers stopped, unfinished writes abandoned" in err, err
