"""Duplicati's free-space check: a destination without room for the copies stops the run before anything is written."""

from __future__ import annotations

import io
import os

import pytest

import synctool
from synctool.coordinator import Coordinator, Env
from synctool.errors import ExitCode
from synctool.options import SyncOptions
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
    assert "nothing was written" in err and "quota-disable=true" in err
    assert err.count("not enough free space") == 1
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


@pytest.mark.parametrize("order", ["fitting-first", "fitting-last"])
def test_copies_that_would_fit_are_not_written_when_the_whole_plan_does_not(tmp_path, small_fs, order):
    """With -y copies start while the listing goes on, but not where the
    destination tells its free space: there they wait until the whole plan
    is known to fit, so a plan that does not writes nothing at all."""
    src = tmp_path / "src"
    names = ["a-small", "b-big", "c-small"] if order == "fitting-first" else ["c-big", "a-small", "b-small"]
    make_tree(src, {n: os.urandom(BIG) if n.endswith("big") else b"s" * 100 for n in names}, mtime=OLD)
    make_tree(small_fs, BEFORE)
    report = synctool.sync(str(src), str(small_fs), **FAST)
    assert report.exit_code == ExitCode.FATAL
    assert "the copies need 3.0 MiB" in report.errors[0] and "nothing was written" in report.errors[0]
    assert report.copied == 0 and read_tree(small_fs) == BEFORE


def test_a_verify_that_finds_more_to_copy_is_checked_before_it_writes(tmp_path, small_fs):
    """--verify-contents compares files that look equal; one that differs
    adds its bytes to the plan, which must still fit before anything is written."""
    src, size = tmp_path / "src", 1200 << 10  # fits once in the 2 MiB, not twice
    make_tree(src, {"a-new": b"s" * 100, "b-same-looking": os.urandom(size)}, mtime=OLD)
    make_tree(small_fs, {"b-same-looking": b"x" * size}, mtime=OLD)
    report = synctool.sync(str(src), str(small_fs), verify_contents=True, **FAST)
    assert report.exit_code == ExitCode.FATAL and report.verify_mismatches == 1
    assert "not enough free space" in report.errors[0] and "nothing was written" in report.errors[0]
    assert report.copied == 0 and read_tree(small_fs) == {"b-same-looking": b"x" * size}
    # Without the check the same plan runs, the new file first.
    report = synctool.sync(str(src), str(small_fs), verify_contents=True, quota_disable=True, **FAST)
    assert report.exit_code == ExitCode.PARTIAL and read_tree(small_fs)["a-new"] == b"s" * 100


def test_a_plan_to_confirm_is_checked_whole_before_anything_is_written(tmp_path, small_fs):
    src = tmp_path / "src"
    make_tree(src, {"a-small": b"s" * 100, "b-big": os.urandom(BIG)}, mtime=OLD)
    make_tree(small_fs, BEFORE)
    env = Env(io.StringIO("y\n"), io.StringIO(), stdin_isatty=True)
    report = Coordinator(SyncOptions(str(src), str(small_fs), confirm=False, **FAST), env).run()
    assert report.exit_code == ExitCode.FATAL
    assert "the copies need 3.0 MiB" in report.errors[0] and "nothing was written" in report.errors[0]
    assert "Continue?" not in env.stdout.getvalue()  # refused before the question
    assert read_tree(small_fs) == BEFORE


def test_a_run_with_nothing_to_copy_never_asks_for_free_space(tmp_path, monkeypatch):
    """Across a network the question is a round trip; only a copy needs its answer."""
    from synctool.backends.local import LocalBackend

    asked = []
    free_bytes = LocalBackend.free_bytes
    monkeypatch.setattr(LocalBackend, "free_bytes", lambda self: asked.append(self.root) or free_bytes(self))
    src, dst = _source(tmp_path), tmp_path / "dst"
    assert synctool.sync(str(src), str(dst), **FAST).exit_code == ExitCode.SUCCESS
    assert asked == [str(dst)]  # once, for the first copy
    assert synctool.sync(str(src), str(dst), **FAST).exit_code == ExitCode.SUCCESS
    assert asked == [str(dst)]
