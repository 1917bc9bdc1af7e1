"""Duplicati's free-space check: a destination without room for the copies stops the run before anything is written."""

from __future__ import annotations

import os

import pytest

import synctool
from synctool.errors import ExitCode
from tests.helpers import FAST, FAST_CLI, OLD, make_tree, read_tree, start_synctool

BIG = 3 << 20  # more than the 2 MiB of small_fs
BEFORE = {"existing": b"keep me", "extra": b"would be deleted"}


def _source(tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"big": os.urandom(BIG), "small": b"s" * 100}, mtime=OLD)
    return src


def test_a_local_destination_without_room_stops_before_writing(tmp_path, small_fs):
    src = _source(tmp_path)
    make_tree(small_fs, BEFORE)
    proc = start_synctool(src, small_fs, "-y", *FAST_CLI)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.FATAL, (out, err)
    assert "not enough free space at the destination: the copies need 3.0 MiB" in err
    assert "quota-disable=true" in err
    assert err.count("not enough free space") == 1
    # Nothing written, nothing deleted: not even the file that would fit.
    assert read_tree(small_fs) == BEFORE
    # Once the plan fits, it runs.
    (src / "big").unlink()
    report = synctool.sync(str(src), str(small_fs), **FAST)
    assert report.exit_code == ExitCode.SUCCESS and read_tree(small_fs) == read_tree(src)


def test_a_destination_folder_still_to_be_created_is_checked_on_its_parent(tmp_path, small_fs):
    report = synctool.sync(str(_source(tmp_path)), str(small_fs / "new" / "mirror"), **FAST)
    assert report.exit_code == ExitCode.FATAL
    assert "not enough free space" in report.errors[0]
    assert not (small_fs / "new").exists()


def test_a_dry_run_says_so_too(tmp_path, small_fs):
    report = synctool.sync(str(_source(tmp_path)), str(small_fs), dry_run=True, **FAST)
    assert report.exit_code == ExitCode.FATAL and "not enough free space" in report.errors[0]


@pytest.mark.parametrize("where", ["--dst-options", "--global-options"])
def test_quota_disable_turns_the_check_off(tmp_path, small_fs, where):
    make_tree(small_fs, BEFORE)
    proc = start_synctool(_source(tmp_path), small_fs, "-y", *FAST_CLI, where, "quota-disable=true")
    out, err = proc.communicate(timeout=60)
    # The copies start, and the one that does not fit fails on its own.
    assert proc.returncode == ExitCode.PARTIAL, (out, err)
    assert "not enough free space" not in err and "no space left on the device" in err
    assert "quota-disable" not in err  # a key synctool reads: no unknown-option warning
    assert read_tree(small_fs) == {**BEFORE, "small": b"s" * 100}


def test_a_full_sftp_server_stops_the_run_before_writing(sshd_server, small_fs, tmp_path, no_ssh_environment):
    make_tree(small_fs, BEFORE)
    url = sshd_server.url(str(small_fs).lstrip("/"), served_as="")
    report = synctool.sync(str(_source(tmp_path)), url, dst_options=sshd_server.key_options(), **FAST)
    assert report.exit_code == ExitCode.FATAL
    assert report.errors[0].startswith("not enough free space at the destination: the copies need 3.0 MiB")
    assert report.copied == 0 and read_tree(small_fs) == BEFORE
    options = {**sshd_server.key_options(), "quota-disable": "true"}
    report = synctool.sync(str(_source(tmp_path)), url, dst_options=options, **FAST)
    assert report.exit_code == ExitCode.PARTIAL and "not enough free space" not in " ".join(report.errors)
