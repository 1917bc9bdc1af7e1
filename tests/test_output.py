"""What a run prints and records: stdout holds the output asked for (the dry
run's lines, the summary), stderr each error once, and the log file the
whole run, file by file, with its summary and exit code.

Runs are real ``synctool`` processes where stdout, stderr, pipes or a
terminal matter; library calls where they do not.
"""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

import synctool
from synctool.errors import ExitCode, UsageError
from tests.helpers import FAST, FAST_CLI, OLD, SYNCTOOL, make_tree, read_tree


def synctool_run(*args) -> subprocess.CompletedProcess:
    """``synctool ARGS``, its output captured."""
    return subprocess.run([SYNCTOOL, *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


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
