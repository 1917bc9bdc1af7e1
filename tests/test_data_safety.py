"""No input, timing or layout loses a file or writes outside the mirror.

Each test runs against every backend that the case can arise on (a local
folder, the real S3 server, OpenSSH and rclone's SFTP server, pyftpdlib and
rclone's FTP server), end to end through ``synctool.sync``.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import psutil
import pytest

import synctool
from synctool.backends import BackendError, BackendSpec, DeleteError, FatalBackendError, open_backend
from synctool.backends.base import Backend
from synctool.errors import ExitCode
from synctool.plan import RETENTION_RE, STAMP_FORMAT, basename
from tests.helpers import (
    FAST,
    FAST_CLI,
    OLD,
    RETAINED,
    interrupt_when,
    make_tree,
    ok,
    open_uploads,
    read_tree,
    start_synctool,
    tree_digests,
    write_big_file,
)

YEAR = 365 * 86400


def run(src, target, **options):
    return synctool.sync(str(src), target.url, dst_options=target.options, **{**FAST, **options})


def versions(tree: dict[str, bytes], name: str) -> dict[str, bytes]:
    """The retention versions of ``name`` (same folder) in ``tree``."""
    folder, slash, base = name.rpartition("/")
    pattern = re.compile(re.escape(folder + slash) + r"\d{14}\.old\." + re.escape(base) + "$")
    return {k: v for k, v in tree.items() if pattern.match(k)}


def stamps_from_now(seconds: int) -> list[str]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return [(now + timedelta(seconds=i)).strftime(STAMP_FORMAT) for i in range(-1, seconds)]


# -- 1. retention versions are never overwritten --------------------------------
def test_retention_runs_in_the_same_second_keep_every_version(target, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"d/f": b"v1"}, mtime=OLD)
    ok(run(src, target, retention=True))
    # Versions kept by earlier runs in the seconds to come: a run stamped
    # with any of them must choose another name, never replace them.
    decoys = {f"d/{s}.old.f": f"decoy {s}".encode() for s in stamps_from_now(40)}
    target.put(decoys)
    contents = [b"v2-", b"v3--", b"v4---"]
    for data in contents:
        make_tree(src, {"d/f": data}, mtime=OLD)
        ok(run(src, target, retention=True))
    after = target.read()
    assert after["d/f"] == contents[-1]
    kept = versions(after, "d/f")
    for name, data in decoys.items():
        assert kept.pop(name) == data
    assert sorted(kept.values()) == sorted([b"v1", *contents[:-1]])  # each old version once


def test_a_renamed_file_never_takes_a_name_the_source_holds(target, tmp_path):
    """dst-only ``g`` is renamed to ``<stamp>.old.g``; the source's own files of
    that form (copied in the same run) keep their names and contents."""
    src = tmp_path / "src"
    theirs = {f"{s}.old.g": f"source {s}".encode() for s in stamps_from_now(30)}
    make_tree(src, theirs, mtime=OLD)
    target.put({"g": b"the only g"})
    ok(run(src, target, retention=True))
    after = target.read()
    for name, data in theirs.items():
        assert after.pop(name) == data
    assert list(after.values()) == [b"the only g"]
    assert RETENTION_RE.match(next(iter(after)))


# -- 2. a folder where the source has a file moves aside whole --------------------
# Backends with folders (local, SFTP, FTP) must remove the folders a rename
# empties; S3 has none. WebDAV leaves emptied folders (see webdav.py).
FOLDER_ASIDE_TARGETS = pytest.mark.parametrize("target", ["local", "s3", "openssh", "pyftpdlib"], indirect=True)


@FOLDER_ASIDE_TARGETS
@pytest.mark.parametrize("retention", [True, False], ids=["retention", "no-retention"])
def test_a_folder_where_the_source_has_a_file_moves_aside_and_the_file_takes_its_place(target, tmp_path, retention):
    """dst ``a/`` (files, a kept version) where the source has the file ``a``:
    the folder's versions move to ``<stamp>.old.a/``, and ``a`` is copied."""
    kept = "20200101000000.old.z"
    folder = {"a/x": b"x", "a/sub/y": b"y", f"a/{kept}": b"an older z"}
    target.put({**folder, "b": b"b"})
    src = tmp_path / "src"
    make_tree(src, {"a": b"the file a", "b": b"b"}, mtime=OLD)
    ok(run(src, target, retention=retention))
    after = target.read()
    assert after.pop("a") == b"the file a" and after.pop("b") == b"b"
    asides = {name.partition("/")[0] for name in after}
    assert len(asides) == 1  # one retention name for the whole folder
    aside = asides.pop()
    assert RETENTION_RE.match(aside) and aside.endswith(".old.a")
    moved = {name.partition("/")[2]: data for name, data in after.items()}
    # Without --retention the folder's files are deleted; a kept version never is.
    assert moved == ({n[2:]: d for n, d in folder.items()} if retention else {kept: b"an older z"})
    settled = target.read()
    again = run(src, target, retention=retention)
    ok(again)
    assert (again.copied, again.renamed, again.deleted) == (0, 0, 0)
    assert target.read() == settled


@FOLDER_ASIDE_TARGETS
def test_a_folder_moving_aside_never_replaces_a_version_listed_after_it(target, tmp_path):
    """``0/`` lists before ``<stamp>.old.0/``: the plan cannot know those names
    are taken; each rename that finds its name taken picks the next free one,
    and ``0/`` still empties."""
    decoys = {f"{s}.old.0/x": f"decoy {s}".encode() for s in stamps_from_now(40)}
    target.put({**decoys, "0/x": b"the old x"})
    src = tmp_path / "src"
    make_tree(src, {"0": b"the file 0"}, mtime=OLD)
    ok(run(src, target, retention=True))
    after = target.read()
    assert after.pop("0") == b"the file 0"
    for name, data in decoys.items():
        assert after.pop(name) == data
    [(name, data)] = after.items()
    assert data == b"the old x" and RETENTION_RE.match(basename(name))
    assert f"{name.partition('/')[0]}/x" in decoys  # its first name was taken: kept beside that decoy
    again = run(src, target, retention=True)
    ok(again)
    assert (again.copied, again.renamed, again.deleted) == (0, 0, 0)


# -- 4. symbolic links at the destination ---------------------------------------
# Links are made behind the server's back, in the folder it serves: local
# folders and OpenSSH. S3 has none; rclone serve sftp hides them (lstat and
# realpath tell nothing of one), yet follows one once asked to make the folder
# it stands in for: no client can see it coming.
BACKENDS_WITH_LINKS = pytest.mark.parametrize("target", ["local", "openssh"], indirect=True)


@pytest.fixture
def trap(target, tmp_path):
    """Links at the destination that lead outside it, and what they lead to."""
    outside = tmp_path / "outside"
    make_tree(outside, {"victim": b"precious"})
    target.put({"extra": b"only at the destination", "real/x": b"x"})
    os.symlink(outside, target.local_root / "d")  # a folder link
    os.symlink(outside / "victim", target.local_root / "l")  # a file link
    os.symlink(outside, target.local_root / "real" / "nested")  # a link one folder down
    os.symlink(outside, target.local_root / "only-here")  # a link the source does not have
    return outside


@BACKENDS_WITH_LINKS
@pytest.mark.parametrize("mode", [{}, {"retention": True}, {"force": True, "retention": True}])
def test_nothing_is_written_through_a_destination_link(target, trap, tmp_path, mode):
    src = tmp_path / "src"
    make_tree(src, {"d/victim": b"evil", "d/new": b"evil", "l": b"evil", "real/nested/victim": b"evil",
                    "ok": b"ok", "real/x": b"x"}, mtime=OLD)  # fmt: skip
    for _ in range(2):  # and the same again at the next run: nothing re-copied
        report = run(src, target, **mode)
        assert report.exit_code == ExitCode.PARTIAL, report.to_dict()
        failed = dict(report.failed)
        assert set(failed) == {"d/victim", "d/new", "l", "real/nested/victim"}
        assert all("symbolic link" in reason for reason in failed.values())
        assert report.retries == 0
        assert read_tree(trap) == {"victim": b"precious"}  # nothing outside changed
        for link in ("d", "l", "real/nested", "only-here"):
            assert (target.local_root / link).is_symlink()  # never replaced, renamed or deleted
        after = read_tree(target.local_root)
        assert after["ok"] == b"ok"
        # A name refused at planning does not hold back the other removals.
        assert "extra" not in after
        if mode.get("retention"):
            assert list(versions(after, "extra").values()) == [b"only at the destination"]
        assert any("only-here" in w and "symbolic link" in w for w in report.warnings)


@BACKENDS_WITH_LINKS
def test_writes_never_pass_a_link_made_after_the_listing(target, tmp_path):
    """The plan keeps clear of listed links; the backend itself refuses one that
    appeared since, below the root at any depth."""
    outside, root = tmp_path / "outside", target.local_root
    make_tree(outside, {"victim": b"precious"})
    target.put({"a/keep": b"k"})
    os.symlink(outside, root / "d")
    os.symlink(outside, root / "a" / "deeper")
    os.symlink(outside / "victim", root / "file-link")
    b = open_backend(BackendSpec(target.url, target.options))
    try:
        for name in ("d/victim", "d/new/file", "a/deeper/victim", "file-link/x"):
            with pytest.raises(BackendError, match="symbolic link|where a folder is needed"):
                b.write(name, iter([b"evil"]), 4)
            with pytest.raises(BackendError):
                b.write(name, iter([b"evil"]), 4, overwrite=False)
        with pytest.raises(BackendError):
            b.write("a/keep", iter([b"v2"]), 2, keep_old_as="d/20260101000000.old.keep")
        with pytest.raises(DeleteError):
            b.delete(["d/victim", "a/deeper/victim"])
        with pytest.raises(BackendError):
            b.rename("d/victim", "moved")
        with pytest.raises(BackendError):
            b.rename("a/keep", "d/stolen")
        with pytest.raises(BackendError):
            b"".join(b.read("d/victim"))
    finally:
        b.close()
    assert read_tree(outside) == {"victim": b"precious"}
    assert read_tree(root) == {"a/keep": b"k"}


# -- 5. a source dated in the future --------------------------------------------
def test_a_future_dated_file_is_copied_once(target, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"future": b"from tomorrow", "past": b"p"}, mtime=OLD)
    os.utime(src / "future", (time.time() + YEAR, time.time() + YEAR))
    first = run(src, target, retention=True)
    ok(first)
    assert first.copied == 2
    assert any("future" in w and "in the future" in w for w in first.warnings)
    for _ in range(2):
        again = run(src, target, retention=True)
        ok(again)
        if target.keeps_mtime:
            assert (again.copied, again.renamed, again.deleted) == (0, 0, 0), again.to_dict()
        else:
            # Nothing records that the copy holds the source's version: it is
            # copied again, and the copy it replaces kept (as documented).
            assert (again.copied, again.deleted) == (1, 0), again.to_dict()
    after = target.read()
    if target.keeps_mtime:
        assert after == {"future": b"from tomorrow", "past": b"p"}  # no version of an unchanged file
    else:
        assert {k: v for k, v in after.items() if not RETAINED.search(k)} == {"future": b"from tomorrow", "past": b"p"}
        assert sorted(k.split(".old.")[1] for k in after if RETAINED.search(k)) == ["future", "future"]
        assert {v for k, v in after.items() if RETAINED.search(k)} == {b"from tomorrow"}


def test_the_stored_source_time_spares_a_copy_to_s3(s3_server, s3_bucket, tmp_path):
    """S3 lists upload times: a "newer" source is copied only when the time
    stored with the object is not the source's own."""
    from workers.jobs import COPY, Job
    from workers.transfer import copy_file

    src_root = tmp_path / "src"
    make_tree(src_root, {"f": b"content"})
    future = time.time() + YEAR
    os.utime(src_root / "f", (future, future))
    src = open_backend(BackendSpec(str(src_root)))
    dst = open_backend(BackendSpec(f"s3://{s3_bucket}/p", s3_server.options()))
    dst.prepare(create=True)

    job = Job(1, COPY, "f", 7, future, unless_stored_mtime=True)
    first = copy_file(job, src, dst, verify=False, cancel=threading.Event(), on_bytes=lambda n: None)
    assert not first.skipped and first.bytes == 7
    assert dst.stored_mtime("f") == pytest.approx(future, abs=1e-6)
    second = copy_file(job, src, dst, verify=False, cancel=threading.Event(), on_bytes=lambda n: None)
    assert second.skipped and second.bytes == 0
    changed = Job(2, COPY, "f", 7, future + 5, unless_stored_mtime=True)  # touched since
    third = copy_file(changed, src, dst, verify=False, cancel=threading.Event(), on_bytes=lambda n: None)
    assert not third.skipped
    assert dst.stored_mtime("f") == pytest.approx(future + 5, abs=1e-6)
    dst.close()


def test_a_file_changed_after_it_was_hashed_is_not_stored_under_the_old_hash(s3_server, s3_bucket, tmp_path):
    """A large local file is hashed before its upload (the hash goes with
    it); a writer that changes it in between, same size, must not get the
    new bytes stored under the old hash."""
    from synctool.backends.local import LocalBackend
    from workers.jobs import COPY, Job
    from workers.transfer import SourceChanged, copy_file

    size = 11 * 1024 * 1024
    make_tree(tmp_path / "src", {"big": b"a" * size})

    class ChangedMidway(LocalBackend):
        reads = 0

        def read_sized(self, name, size):
            self.reads += 1
            if self.reads == 2:  # after the hashing, before the upload
                (tmp_path / "src" / name).write_bytes(b"b" * size)
            return super().read_sized(name, size)

    src = ChangedMidway(BackendSpec(str(tmp_path / "src")))
    dst = open_backend(BackendSpec(f"s3://{s3_bucket}/p", s3_server.options(**{"s3-part-size": "5MiB"})))
    dst.prepare(create=True)
    try:
        with pytest.raises(SourceChanged, match="changed while copying"):
            copy_file(Job(1, COPY, "big", size, OLD), src, dst, verify=False, cancel=threading.Event(),
                      on_bytes=lambda n: None)  # fmt: skip
        assert src.reads == 2
        assert s3_server.keys_under(s3_bucket) == []
        assert open_uploads(s3_server.client(), s3_bucket) == []
    finally:
        dst.close()


# -- 6. a retention name longer than the destination allows -----------------------
def test_a_long_name_keeps_its_old_version_under_a_short_form(target, tmp_path):
    src = tmp_path / "src"
    long_a = "a" * 200 + "-" + "x" * 50  # 251 bytes: room for the name, not for the stamp
    long_b = "a" * 200 + "-" + "y" * 50  # starts like long_a
    make_tree(src, {long_a: b"a1", long_b: b"b1", f"d/{long_b}": b"db1"}, mtime=OLD)
    ok(run(src, target, retention=True))
    make_tree(src, {long_a: b"a2-", long_b: b"b2-"}, mtime=OLD)
    os.remove(src / "d" / long_b)  # now destination-only: renamed, not deleted
    for _ in range(2):
        ok(run(src, target, retention=True))
    after = target.read()
    assert after[long_a] == b"a2-" and after[long_b] == b"b2-"
    kept = {k: v for k, v in after.items() if RETAINED.search(k)}
    assert sorted(kept.values()) == [b"a1", b"b1", b"db1"]
    for name in kept:
        assert len(basename(name).encode()) <= 255
        assert RETENTION_RE.match(basename(name))
    assert all(re.search(r"~[0-9a-f]{16}$", name) for name in kept)


# -- 7. failures that retrying cannot fix ---------------------------------------
def test_a_source_name_that_is_not_utf8_is_refused_by_name(target, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"ok": b"ok"}, mtime=OLD)
    (src / os.fsdecode(b"bad-\xff-name")).write_bytes(b"x")
    target.put({"extra": b"gone after the run"})
    report = run(src, target)
    assert report.exit_code == ExitCode.PARTIAL
    [(name, reason)] = report.failed
    assert "not valid UTF-8" in reason and "\\udcff" in reason  # shown escaped
    assert report.retries == 0
    assert target.read() == {"ok": b"ok"}  # the delete of "extra" still happened


def test_an_sftp_source_name_that_is_not_utf8_is_refused_by_name(sshd_server, sftp_folder, tmp_path, no_ssh_environment):
    served = sshd_server.local(sftp_folder)
    make_tree(served, {"ok": b"ok"}, mtime=OLD)
    (served / os.fsdecode(b"bad-\xff-name")).write_bytes(b"x")
    (served / os.fsdecode(b"folder-\xfe")).mkdir()
    (served / os.fsdecode(b"folder-\xfe") / "inside").write_bytes(b"y")
    dst = tmp_path / "dst"
    make_tree(dst, {"extra": b"gone after the run"}, mtime=OLD)
    report = synctool.sync(sshd_server.url(sftp_folder), str(dst), src_options=sshd_server.key_options(), **FAST)
    assert report.exit_code == ExitCode.PARTIAL, report.to_dict()
    assert sorted(name for name, _ in report.failed) == ["bad-\udcff-name", "folder-\udcfe/inside"]
    assert all("not valid UTF-8" in reason for _, reason in report.failed)
    assert report.retries == 0
    assert read_tree(dst) == {"ok": b"ok"}  # the delete of "extra" still happened


@pytest.mark.parametrize("target", ["local", "openssh", "rclone-sftp"], indirect=True)
def test_a_source_name_too_long_for_the_destination_is_refused_by_name(target, azure_server, azure_container):
    """Azure keeps a 300-byte name segment (a server that keeps objects as
    files, like the test S3 server, cannot); no file system takes it."""
    long = "d/" + "a" * 300
    azure_server.put(azure_container, {f"src/{n}": d for n, d in {long: b"long", "d/fine": b"f", "ok": b"o"}.items()})
    target.put({"extra": b"gone after the run"})
    report = synctool.sync(f"azure://{azure_container}/src", target.url, src_options=azure_server.synctool_options(),
                           dst_options=target.options, **{**FAST, "retry": 3})  # fmt: skip
    assert report.exit_code == ExitCode.PARTIAL, report.to_dict()
    [(name, reason)] = report.failed
    assert name == long and "longer than the destination's 255 bytes" in reason
    assert report.retries == 0
    assert target.read() == {"d/fine": b"f", "ok": b"o"}  # the delete of "extra" still happened


@BACKENDS_WITH_LINKS
@pytest.mark.parametrize("retention", [True, False], ids=["retention", "no-retention"])
def test_a_folder_in_the_way_is_reported_once_not_retried(target, tmp_path, retention):
    src = tmp_path / "src"
    make_tree(src, {"y": b"a file now"}, mtime=OLD)
    target.put({"y/z": b"moved aside"})
    os.symlink(src / "y", target.local_root / "y" / "link")  # never moved: it keeps the folder
    report = run(src, target, retention=retention, retry=3)
    assert report.exit_code == ExitCode.PARTIAL
    assert report.retries == 0
    assert report.failed == [("y", "writing y failed: a folder of that name is in the way")]
    # The source has no y/z: kept as a version, or deleted, like any other.
    assert list(target.read().values()) == ([b"moved aside"] if retention else [])
    assert (target.local_root / "y" / "link").is_symlink()


@pytest.mark.parametrize("target", ["local", "openssh", "rclone-sftp"], indirect=True)
@pytest.mark.parametrize("replace", [True, False], ids=["replacing", "new"])
def test_a_folder_made_where_a_file_goes_after_the_listing_is_never_replaced(target, replace):
    """The plan saw a file ``y`` (or nothing) there; a folder came since."""
    target.put({"y/z": b"inside"})
    backend = open_backend(BackendSpec(target.url, target.options))
    try:
        with pytest.raises(FatalBackendError, match="^writing y failed: a folder of that name is in the way$"):
            backend.write("y", iter([b"file"]), 4, overwrite=replace)
    finally:
        backend.close()
    assert target.read() == {"y/z": b"inside"}


def test_a_full_sftp_server_is_reported_once_not_retried(sshd_server, small_fs, tmp_path, no_ssh_environment):
    """OpenSSH answers a full disk with a bare "Failure"; its free space tells."""
    src = tmp_path / "src"
    # One file: another one written beside it could meet the full disk only
    # while the big one's temporary file fills it, and rightly try again.
    make_tree(src, {"big": os.urandom(3 << 20)}, mtime=OLD)
    make_tree(small_fs, {"extra": b"would be deleted"})
    url = sshd_server.url(str(small_fs).lstrip("/"), served_as="")
    # Past the check that stops a run the server has no room for: the disk
    # fills up while writing.
    options = {**sshd_server.key_options(), "quota-disable": "true"}
    report = synctool.sync(str(src), url, dst_options=options, **{**FAST, "retry": 3})
    assert report.exit_code == ExitCode.PARTIAL
    assert report.failed == [("big", "writing big failed: no space left on the server")]
    assert report.retries == 0
    assert read_tree(small_fs) == {"extra": b"would be deleted"}


# -- 11. an interrupted --verify-get-after-put --------------------------------------
def test_a_journal_left_by_an_interrupted_verify_run_makes_the_next_run_compare(s3_server, s3_bucket, tmp_path):
    from workers.journal import encode

    src = tmp_path / "src"
    files = {"bad": b"what the source holds", "good": b"fine", "other": b"o"}
    make_tree(src, files, mtime=OLD)
    url, opts = f"s3://{s3_bucket}/p", s3_server.options()
    ok(synctool.sync(str(src), url, dst_options=opts, **FAST))
    client = s3_server.client()
    # What a run stopped before its read-back may leave: a same-size object
    # that is wrong, newer than the source, and a journal naming it.
    client.put_object(Bucket=s3_bucket, Key="p/bad", Body=b"WHAT THE SOURCE HOLDS")
    client.put_object(Bucket=s3_bucket, Key="p/.synctool-unverified-0123456789ab.json", Body=encode(["bad", "good"]))
    report = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(report)
    assert (report.verified, report.verify_mismatches, report.copied) == (2, 1, 1)
    assert s3_server.keys_under(s3_bucket, "p/") == ["p/bad", "p/good", "p/other"]  # the journal is gone
    assert client.get_object(Bucket=s3_bucket, Key="p/bad")["Body"].read() == files["bad"]


def test_an_unreadable_journal_stops_the_run_before_anything_changes(s3_server, s3_bucket, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"a": b"a"}, mtime=OLD)
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="p/.synctool-unverified-0123456789ab.json", Body=b"{not json")
    client.put_object(Bucket=s3_bucket, Key="p/extra", Body=b"x")
    report = synctool.sync(str(src), f"s3://{s3_bucket}/p", dst_options=s3_server.options(), **FAST)
    assert report.exit_code == ExitCode.FATAL
    assert "did not read back" in report.errors[0]
    assert s3_server.keys_under(s3_bucket, "p/") == ["p/.synctool-unverified-0123456789ab.json", "p/extra"]


def stop_a_verifying_run(src, url: str, options: dict[str, str], moment, sig: int = signal.SIGTERM) -> None:
    """Start ``synctool SRC URL --verify-get-after-put`` and stop it with ``sig``
    once ``moment(proc)`` holds: it must end as interrupted, cleanly."""
    opts = [f"{k}={v}" for k, v in options.items()]
    proc = start_synctool(src, url, "-y", "--verify-get-after-put", *FAST_CLI, *(["--dst-options", *opts] if opts else []),
                          start_new_session=True)  # fmt: skip
    interrupt_when(lambda: moment(proc), proc, sig)


def test_verify_run_stopped_midway_leaves_nothing_taken_as_good(s3_server, s3_bucket, tmp_path):
    """SIGTERM in the middle of a verifying upload: the next run (not verifying)
    compares whatever the stopped run had not read back, then the journals go."""
    from workers.journal import decode

    src = tmp_path / "src"
    files = {f"d{i % 20}/f{i}": os.urandom(2048) for i in range(3000)}
    make_tree(src, files, mtime=OLD)
    # Stopped while a shard is under way: when the signal lands, the workers
    # may also sit between two shards (every journal gone); then again.
    for attempt in range(5):
        prefix = f"p{attempt}"
        url = f"s3://{s3_bucket}/{prefix}"
        stop_a_verifying_run(src, url, s3_server.options(),
                             lambda proc: len(s3_server.keys_under(s3_bucket, f"{prefix}/")) > 50)  # fmt: skip
        keys = s3_server.keys_under(s3_bucket, f"{prefix}/")
        journals = [k for k in keys if "unverified" in k]
        if journals:
            break
    assert journals, "a stopped verifying run leaves the journal of its unfinished shards"
    client = s3_server.client()
    named = {n for k in journals for n in decode(client.get_object(Bucket=s3_bucket, Key=k)["Body"].read())}
    landed = named & {k[len(prefix) + 1 :] for k in keys}  # written, maybe never read back
    report = synctool.sync(str(src), url, dst_options=s3_server.options(), **FAST)
    ok(report)
    assert report.verified == len(landed)  # each compared before it is trusted
    keys = s3_server.keys_under(s3_bucket, f"{prefix}/")
    assert not [k for k in keys if ".synctool-" in k]
    assert len(keys) == len(files)


def a_read_back_under_way(root: pathlib.Path, kind: str):
    """A moment for :func:`stop_a_verifying_run`: a temporary file below
    ``root`` is open for reading, in synctool's workers (a local folder) or
    in the SFTP server's processes."""
    inside = f"{root}/"

    def moment(proc) -> bool:
        if kind == "local":
            processes = psutil.Process(proc.pid).children(recursive=True)
        else:
            processes = [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("sshd")]
        for process in processes:
            try:
                if any(f.path.startswith(inside) and Backend.is_temporary(f.path) and f.mode == "r"
                       for f in process.open_files()):  # fmt: skip
                    return True
            except psutil.Error:
                pass  # ended meanwhile
        return False

    return moment


@pytest.mark.parametrize("target", ["local", "openssh"], indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_verify_run_stopped_during_a_read_back_leaves_only_exact_files_under_their_names(target, sig, tmp_path):
    """Local folders and SFTP read a copy back under its temporary name and
    only then give it its name: stopped while a read-back is under way (a
    moment that never comes if a copy took its name first), every file under
    its name is the source's, and the next run completes the mirror."""
    src = tmp_path / "src"
    make_tree(src, {f"small/f{i}": os.urandom(1024) for i in range(200)}, mtime=OLD)
    (src / "big").mkdir()
    # Large enough that a read-back lasts long enough to be seen on a busy
    # machine (the test polls the processes' open files).
    for i in range(4):
        write_big_file(src / "big" / f"b{i}", 64 << 20, seed=i)
    wanted = tree_digests(src)
    root = target.local_root
    stop_a_verifying_run(src, target.url, target.options, a_read_back_under_way(root, target.kind), sig)
    landed = {name: digest for name, digest in tree_digests(root).items() if not Backend.is_temporary(name)}
    assert landed.items() <= wanted.items()
    assert len(landed) < len(wanted)  # stopped midway
    report = synctool.sync(str(src), target.url, dst_options=target.options, verify_get_after_put=True, **FAST)
    ok(report)
    assert report.copied == len(wanted) - len(landed)
    assert tree_digests(root) == wanted  # and no temporary file left


# -- 12. a stop that comes while blocks are still being sent ----------------------
MiB = 1 << 20
BLOCKS = {"s3": {"s3-part-size": "5MiB"}, "azure": {"azure-block-size": "1MiB"}}
BLOCK_SIZE = {"s3": 5 * MiB, "azure": MiB}


@pytest.mark.parametrize("target", ["s3", "azure"], indirect=True)
@pytest.mark.parametrize("in_blocks", [False, True], ids=["whole", "blocks"])
def test_a_stop_after_the_last_chunk_commits_nothing(target, in_blocks, request):
    """The source is read to its end, then the worker is told to stop while
    the blocks are still on their way: the write must not commit them (nor a
    small file's single PUT), and the version under the name stays."""
    from synctool.backends.base import Stopped

    target.put({"f.bin": b"old version"})
    backend = open_backend(BackendSpec(target.url, {**target.options, **BLOCKS[target.kind]}))
    backend.stopping = threading.Event()  # as a worker hands in its own
    size = 3 * BLOCK_SIZE[target.kind] + 5 if in_blocks else 1000
    data = os.urandom(size)

    def source():
        for start in range(0, size, 256 * 1024):
            yield data[start : start + 256 * 1024]
        backend.stopping.set()  # SIGTERM, right after the last chunk was read

    try:
        backend.prepare(create=True)
        with pytest.raises(Stopped):
            backend.write("f.bin", source(), size, keep_old_as="f.old")
    finally:
        backend.close()
    after = target.read()
    assert after["f.bin"] == b"old version"
    assert set(after) <= {"f.bin", "f.old"} and after.get("f.old", b"old version") == b"old version"
    if target.kind == "s3":
        bucket = target.url.split("/")[2]
        assert open_uploads(request.getfixturevalue("s3_server").client(), bucket) == []  # aborted
