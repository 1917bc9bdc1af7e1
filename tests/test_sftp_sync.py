"""End to end with SFTP on either side, through ``synctool.sync`` and the command line.

Each test runs against OpenSSH's sshd and rclone's SFTP server. An unknown host
key, a missing user and other bad input are rows of tests/test_bad_input.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import synctool
from synctool.errors import ExitCode
from tests.backend_contract import _content
from tests.helpers import (
    FAST,
    OLD,
    RETAINED,
    SAMPLE_FILES,
    a_temp_file_grew,
    make_tree,
    ok,
    read_tree,
    temp_debris,
)

FILES = {**SAMPLE_FILES, "big.bin": _content(3, 3 * 1024 * 1024 + 5)}


@pytest.fixture(autouse=True)
def _clean_ssh_environment(no_ssh_environment):
    """No known_hosts and no agent of the person running the tests."""


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"


def test_local_to_sftp_then_nothing_to_do(sftp_server, sftp_folder, src):
    url, opts = sftp_server.url(sftp_folder), sftp_server.key_options()
    report = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(report)
    assert report.copied == len(FILES)
    assert read_tree(sftp_server.local(sftp_folder)) == FILES
    # The copies carry the source's mtime, so the next run finds nothing to do.
    again = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_sftp_to_local_mirrors_and_deletes(sftp_server, sftp_folder, tmp_path):
    sftp_server.put(sftp_folder, FILES, mtime=OLD)
    dst = tmp_path / "dst"
    make_tree(dst, {"stale/only here": b"x"})
    ok(synctool.sync(sftp_server.url(sftp_folder), str(dst), src_options=sftp_server.key_options(), **FAST))
    assert read_tree(dst) == FILES


def test_missing_source_folder_is_fatal(sftp_server, sftp_folder, tmp_path):
    report = synctool.sync(sftp_server.url(sftp_folder), str(tmp_path / "dst"), src_options=sftp_server.key_options(), **FAST)
    assert report.exit_code == ExitCode.FATAL
    assert not (tmp_path / "dst" / "a.txt").exists()


def test_retention_renames_on_the_server(sftp_server, sftp_folder, src):
    sftp_server.put(sftp_folder, {"gone.txt": b"only here", "a.txt": b"an older alpha"})
    report = synctool.sync(
        str(src), sftp_server.url(sftp_folder), dst_options=sftp_server.key_options(), retention=True, **FAST
    )
    ok(report)
    after = read_tree(sftp_server.local(sftp_folder))
    assert {k: v for k, v in after.items() if not RETAINED.search(k)} == FILES
    assert sorted(v for k, v in after.items() if RETAINED.search(k)) == [b"an older alpha", b"only here"]


def test_verify_contents_and_get_after_put(sftp_server, sftp_folder, src):
    url, opts = sftp_server.url(sftp_folder), sftp_server.key_options()
    report = synctool.sync(str(src), url, dst_options=opts, verify_get_after_put=True, **FAST)
    ok(report)
    assert report.verified_after_put == len(FILES)
    # Same size, newer at the destination: only a content check can tell.
    sftp_server.put(sftp_folder, {"a.txt": b"ALPHA"})
    report = synctool.sync(str(src), url, dst_options=opts, verify_contents=True, **FAST)
    ok(report)
    assert report.verified == len(FILES) and report.verify_mismatches == 1
    assert read_tree(sftp_server.local(sftp_folder)) == FILES


def test_dry_run_writes_nothing(sftp_server, sftp_folder, src):
    sftp_server.put(sftp_folder, {"extra": b"x"})
    url, opts = sftp_server.url(sftp_folder), sftp_server.key_options()
    report = synctool.sync(str(src), url, dst_options=opts, dry_run=True, **FAST)
    ok(report)
    assert report.planned_copies == len(FILES) and report.planned_deletes == 1 and report.copied == 0
    assert read_tree(sftp_server.local(sftp_folder)) == {"extra": b"x"}
    # a missing destination folder is not created by a dry run either
    ok(synctool.sync(str(src), url + "/not-yet", dst_options=opts, dry_run=True, **FAST))
    assert not (sftp_server.local(sftp_folder) / "not-yet").exists()


def test_sftp_to_s3_and_back(sftp_server, sftp_folder, s3_server, s3_bucket, tmp_path):
    sftp_server.put(sftp_folder, FILES, mtime=OLD)
    s3_url, back = f"s3://{s3_bucket}/mirror", f"{sftp_folder}-back"
    ok(synctool.sync(sftp_server.url(sftp_folder), s3_url, src_options=sftp_server.key_options(), dst_options=s3_server.options(), verify_get_after_put=True, **FAST))  # fmt: skip
    ok(synctool.sync(s3_url, sftp_server.url(back), src_options=s3_server.options(), dst_options=sftp_server.key_options(), **FAST))  # fmt: skip
    assert read_tree(sftp_server.local(back)) == FILES


def test_rerun_after_a_cut_connection_completes(sftp_server, sftp_folder, tmp_path):
    """The server drops every connection while a large file is being written:
    nothing half-written shows under its name, and a second run completes."""
    files = {**FILES, "large.bin": _content(9, 48 * 1024 * 1024)}
    make_tree(tmp_path / "src", files, mtime=OLD)
    dst = sftp_server.local(sftp_folder)
    cutter = _cut_when_a_temp_file_grows(sftp_server, dst)
    url, opts = sftp_server.url(sftp_folder), sftp_server.key_options()
    first = synctool.sync(str(tmp_path / "src"), url, dst_options=opts, retry=0, **FAST)
    cutter.join(35)
    assert cutter.did_cut, "the copy finished before the connection could be cut"
    assert first.exit_code in (ExitCode.SUCCESS, ExitCode.PARTIAL), first.to_dict()
    if sftp_server.kind == "openssh":
        # A worker removes the temporary files the cut left as soon as it has
        # a new connection, at the latest when it closes at the end of the run.
        # (rclone's cut is a restart, which can outlast the run: the re-run
        # removes what it left, below.)
        assert temp_debris(dst) == []
    on_disk = read_tree(dst)
    assert all(on_disk[name] == files[name] for name in on_disk if not name.split("/")[-1].startswith(".synctool-"))
    second = synctool.sync(str(tmp_path / "src"), url, dst_options=opts, **FAST)
    ok(second)
    assert read_tree(dst) == files and temp_debris(dst) == []


class _Cutter(threading.Thread):
    """Cuts the server's connections as soon as a temporary file has some bytes in it."""

    def __init__(self, server, folder):
        super().__init__(daemon=True)
        self.server, self.folder, self.did_cut = server, folder, False

    def run(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if a_temp_file_grew(self.folder, 1 << 20):
                self.server.cut()
                self.did_cut = True
                return
            time.sleep(0.002)


def _cut_when_a_temp_file_grows(server, folder) -> _Cutter:
    cutter = _Cutter(server, folder)
    cutter.start()
    return cutter


# -- the command line ------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synctool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_password_login_keeps_the_password_out(sftp_server, sftp_folder, src):
    if sftp_server.password_user is None:
        pytest.skip("password login needs a local account with a known password: run as root")
    url = sftp_server.url(sftp_folder, user=sftp_server.password_user, served_as=sftp_server.password_served_as)
    options = [f"auth-password={sftp_server.password}", f"ssh-fingerprint={sftp_server.fingerprint}", "ssh-disable-agent=true"]
    run = _cli(str(src), url, "-y", "--workers", "2", "--log-level", "Verbose", "--dst-options", *options)
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_tree(sftp_server.password_dir / sftp_folder) == FILES
    assert sftp_server.password not in run.stdout + run.stderr


def test_the_command_line_forks_its_workers_before_it_connects(sftp_server, sftp_folder, src):
    """The coordinator's SSH connection runs a thread, and a process with
    threads starts its workers as fresh interpreters, whose imports cost
    more than a small run: the workers are forked before it connects."""
    options = [f"{k}={v}" for k, v in sftp_server.key_options().items()]
    run = _cli(str(src), sftp_server.url(sftp_folder), "-y", "--workers", "2", "--log-level", "debug", "--dst-options", *options)
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_tree(sftp_server.local(sftp_folder)) == FILES
    started = [line for line in run.stderr.splitlines() if ": process " in line and line.startswith("DEBUG: worker ")]
    assert len(started) == 2 and all(line.endswith(", by fork") for line in started), run.stderr
