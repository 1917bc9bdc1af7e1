"""Faults on local folders: a full destination, an unreadable source file, workers killed over and over."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import psutil
import pytest

import synctool
from synctool.errors import ExitCode
from tests.helpers import FAST, OLD, make_tree, read_tree, start_synctool, without_root_overrides


def sync_bound_by_file_modes(src, dst, *args) -> subprocess.CompletedProcess:
    """A quick ``synctool SRC DST -y ARGS``, bound by file modes even as root."""
    command = [sys.executable, "-m", "synctool", str(src), str(dst), "-y", "--workers", "2",
               "--backend-retry-delay", "10ms", *map(str, args)]  # fmt: skip
    return subprocess.run(without_root_overrides(command), capture_output=True, text=True, timeout=60)


def test_destination_out_of_space(tmp_path, small_fs):
    src = tmp_path / "src"
    make_tree(src, {"big": os.urandom(3 << 20), "small": b"s" * 100})
    make_tree(small_fs, {"existing": b"keep me", "extra": b"would be deleted"})
    # Past the check that stops a run the destination has no room for: the
    # disk fills up while writing.
    report = synctool.sync(str(src), str(small_fs), dst_options={"quota-disable": "true"}, **FAST)
    assert report.exit_code == ExitCode.PARTIAL
    assert [n for n, _ in report.failed] == ["big"]
    assert report.failed[0][1] == "writing big failed: no space left on the device"
    assert report.retries == 0  # a full disk is not retried
    # what was there is intact, the temporary file is gone, deletes were skipped
    assert read_tree(small_fs) == {"existing": b"keep me", "extra": b"would be deleted", "small": b"s" * 100}
    assert not list(small_fs.glob(".synctool-*"))


def test_unreadable_source_file_fails_alone(tmp_path):
    """Permission denied on one file: that file fails, the rest are copied."""
    import json

    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"ok/a": b"a", "ok/b": b"b", "secret": b"s"})
    os.chmod(src / "secret", 0)
    report_file = tmp_path / "report.json"
    done = sync_bound_by_file_modes(src, dst, "--report", report_file)
    assert done.returncode == ExitCode.PARTIAL, done.stderr
    report = json.loads(report_file.read_text())
    assert [f["name"] for f in report["failed"]] == ["secret"]
    assert report["failed"][0]["error"] == "reading secret failed: permission denied"
    assert report["retries"] == 0  # permission denied is final
    # Named once, on stderr; the summary on stdout counts it without repeating it.
    assert done.stderr.count("reading secret failed: permission denied") == 1 and "secret" not in done.stdout
    assert "failed 1" in done.stdout
    assert read_tree(dst) == {"ok/a": b"a", "ok/b": b"b"}


def test_a_destination_folder_that_takes_no_new_files_fails_that_file_alone(tmp_path):
    import json

    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"ok/a": b"a", "ok/b": b"b", "locked/kept": b"k", "locked/new": b"n"}, mtime=OLD)
    make_tree(dst, {"locked/kept": b"k", "extra": b"would be deleted"}, mtime=OLD)
    os.chmod(dst / "locked", 0o555)
    report_file = tmp_path / "report.json"
    try:
        done = sync_bound_by_file_modes(src, dst, "--retry", "3", "--report", report_file)
    finally:
        os.chmod(dst / "locked", 0o755)
    assert done.returncode == ExitCode.PARTIAL, done.stderr
    report = json.loads(report_file.read_text())
    assert [(f["name"], f["error"]) for f in report["failed"]] == [
        ("locked/new", "writing locked/new failed: permission denied")
    ]
    assert report["retries"] == 0  # permission denied is final
    assert done.stderr.count("writing locked/new failed: permission denied") == 1, done.stderr
    assert done.stderr.count("1 file(s) failed to copy, so no file was deleted or renamed") == 1, done.stderr
    assert "locked/new" not in done.stdout
    assert read_tree(dst) == {"ok/a": b"a", "ok/b": b"b", "locked/kept": b"k", "extra": b"would be deleted"}
    assert not list(dst.rglob(".synctool-*"))


def test_a_source_folder_that_can_be_read_but_not_entered_stops_the_listing_cleanly(tmp_path):
    """A folder left without its x bit (chmod -R 644) lists its names but
    not their details: the listing fails, said once, and nothing is deleted."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"shut/a": b"a", "b": b"b"})
    make_tree(dst, {"extra": b"would be deleted"})
    os.chmod(src / "shut", 0o644)
    try:
        done = sync_bound_by_file_modes(src, dst)
    finally:
        os.chmod(src / "shut", 0o755)
    assert done.returncode == ExitCode.FATAL, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("listing the source failed: listing shut/a failed: permission denied") == 1, done.stderr
    assert read_tree(dst)["extra"] == b"would be deleted"


@pytest.mark.slow
def test_workers_killed_over_and_over_never_stall_the_run(tmp_path):
    """Found by the stress run: a worker SIGKILLed while it was writing to a
    result queue shared by all workers died holding that queue's lock, every
    other worker then waited for it forever, and the run hung. (And a dead
    worker's unread shards held the coordinator at exit.) Dozens of kills at
    random moments of a run that sends many results: it must still finish,
    with an exact mirror."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {f"d{i % 50}/f{i}": b"x" * (i % 97) for i in range(6000)})
    rng = random.Random(6)
    for attempt in range(3):
        proc = start_synctool(src, dst, "-y", "--workers", "3", "--backend-retry-delay", "10ms", "--retry", "1000")
        kills = 0
        try:
            while proc.poll() is None and kills < 60:
                try:
                    rng.choice(psutil.Process(proc.pid).children()).kill()
                    kills += 1
                except (IndexError, psutil.NoSuchProcess):
                    pass  # between workers, or the run just ended
                time.sleep(rng.uniform(0.005, 0.05))
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the run hung after {kills} worker kill(s) (attempt {attempt + 1})")
        finally:
            if proc.poll() is None:
                for child in psutil.Process(proc.pid).children():
                    child.kill()
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (kills, err[-2000:])
        assert read_tree(dst) == read_tree(src)
        for path in list(dst.rglob("*"))[::2]:  # undo half, so the next attempt has work
            if path.is_file():
                path.unlink()
