"""End to end with FTP on either side, through ``synctool.sync``.

Each test that takes ``ftp_server`` runs against pyftpdlib (over explicit
FTPS) and rclone's FTP server. Fault tests start servers of their own, which
they kill and start again on the same port.
"""

from __future__ import annotations

import threading
import time

import pytest

import synctool
from scripts.servers_ftp import pyftpdlib_ftp, rclone_ftp
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
    write_big_file,
)

FILES = {**SAMPLE_FILES, "big.bin": _content(3, 3 * 1024 * 1024 + 5)}
MiB = 1 << 20


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"


def test_local_to_ftp_then_nothing_to_do(ftp_server, ftp_folder, src):
    url, opts = ftp_server.url(ftp_folder), ftp_server.synctool_options()
    report = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(report)
    assert report.copied == len(FILES)
    assert read_tree(ftp_server.root / ftp_folder) == FILES
    # The copies carry the source's mtime (or, without MFMT, a later upload
    # time), so the next run finds nothing to do.
    again = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_ftp_to_local_mirrors_and_deletes_then_nothing_to_do(ftp_server, ftp_folder, tmp_path):
    ftp_server.put(ftp_folder, FILES, mtime=OLD if ftp_server.kind == "pyftpdlib" else None)
    dst = tmp_path / "dst"
    make_tree(dst, {"stale/only here": b"x"})
    opts = ftp_server.synctool_options()
    ok(synctool.sync(ftp_server.url(ftp_folder), str(dst), src_options=opts, **FAST))
    assert read_tree(dst) == FILES
    again = synctool.sync(ftp_server.url(ftp_folder), str(dst), src_options=opts, **FAST)
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_missing_source_folder_is_fatal(ftp_server, ftp_folder, tmp_path):
    report = synctool.sync(ftp_server.url(ftp_folder), str(tmp_path / "dst"), src_options=ftp_server.synctool_options(), **FAST)
    assert report.exit_code == ExitCode.FATAL
    assert not (tmp_path / "dst").exists()


def test_retention_renames_on_the_server(ftp_server, ftp_folder, src):
    ftp_server.put(ftp_folder, {"gone.txt": b"only here", "a.txt": b"an older alpha"})
    report = synctool.sync(str(src), ftp_server.url(ftp_folder), dst_options=ftp_server.synctool_options(), retention=True, **FAST)
    ok(report)
    after = read_tree(ftp_server.root / ftp_folder)
    assert {k: v for k, v in after.items() if not RETAINED.search(k)} == FILES
    assert sorted(v for k, v in after.items() if RETAINED.search(k)) == [b"an older alpha", b"only here"]


def test_verify_contents_and_get_after_put(ftp_server, ftp_folder, src):
    url, opts = ftp_server.url(ftp_folder), ftp_server.synctool_options()
    report = synctool.sync(str(src), url, dst_options=opts, verify_get_after_put=True, **FAST)
    ok(report)
    assert report.verified_after_put == len(FILES)
    # Same size, newer at the destination: only a content check can tell.
    ftp_server.put(ftp_folder, {"a.txt": b"ALPHA"})
    report = synctool.sync(str(src), url, dst_options=opts, verify_contents=True, **FAST)
    ok(report)
    assert report.verified == len(FILES) and report.verify_mismatches == 1
    assert read_tree(ftp_server.root / ftp_folder) == FILES


def test_dry_run_writes_nothing(ftp_server, ftp_folder, src):
    ftp_server.put(ftp_folder, {"extra": b"x"})
    url, opts = ftp_server.url(ftp_folder), ftp_server.synctool_options()
    report = synctool.sync(str(src), url, dst_options=opts, dry_run=True, **FAST)
    ok(report)
    assert report.planned_copies == len(FILES) and report.planned_deletes == 1 and report.copied == 0
    assert read_tree(ftp_server.root / ftp_folder) == {"extra": b"x"}
    # a missing destination folder is not created by a dry run either
    ok(synctool.sync(str(src), url + "/not-yet", dst_options=opts, dry_run=True, **FAST))
    assert not (ftp_server.root / ftp_folder / "not-yet").exists()


def test_ftp_to_s3_and_back(ftp_server, ftp_folder, s3_server, s3_bucket):
    ftp_server.put(ftp_folder, FILES, mtime=OLD if ftp_server.kind == "pyftpdlib" else None)
    s3_url, back = f"s3://{s3_bucket}/mirror", f"{ftp_folder}-back"
    opts = ftp_server.synctool_options()
    ok(synctool.sync(ftp_server.url(ftp_folder), s3_url, src_options=opts, dst_options=s3_server.options(), verify_get_after_put=True, **FAST))  # fmt: skip
    ok(synctool.sync(s3_url, ftp_server.url(back), src_options=s3_server.options(), dst_options=opts, **FAST))
    assert read_tree(ftp_server.root / back) == FILES
    again = synctool.sync(s3_url, ftp_server.url(back), src_options=s3_server.options(), dst_options=opts, **FAST)
    ok(again)
    assert again.copied == 0


def test_sftp_to_ftp_and_back(sftp_server, sftp_folder, ftp_server, ftp_folder, no_ssh_environment):
    sftp_server.put(sftp_folder, FILES, mtime=OLD)
    ftp_url, ftp_opts, sftp_opts = ftp_server.url(ftp_folder), ftp_server.synctool_options(), sftp_server.key_options()
    ok(synctool.sync(sftp_server.url(sftp_folder), ftp_url, src_options=sftp_opts, dst_options=ftp_opts, retention=True, **FAST))  # fmt: skip
    assert read_tree(ftp_server.root / ftp_folder) == FILES
    back = f"{sftp_folder}-back"
    ok(synctool.sync(ftp_url, sftp_server.url(back), src_options=ftp_opts, dst_options=sftp_opts, verify_get_after_put=True, **FAST))  # fmt: skip
    assert read_tree(sftp_server.local(back)) == FILES
    again = synctool.sync(sftp_server.url(sftp_folder), ftp_url, src_options=sftp_opts, dst_options=ftp_opts, retention=True, **FAST)  # fmt: skip
    ok(again)
    assert (again.copied, again.renamed) == (0, 0)


def test_a_full_ftp_server_is_reported_once_not_retried(tmp_path, small_fs):
    """A server that runs out of space and says so (rclone: "450 ... no space
    left on device"; others 452 or 552): that file fails at once. (One file:
    another written beside it could meet the full disk only while the big
    one's temporary file fills it, and rightly try again.)"""
    src = tmp_path / "src"
    make_tree(src, {"big": _content(5, 3 * MiB)}, mtime=OLD)
    with rclone_ftp(tmp_path / "server", root=small_fs) as server:
        server.put("", {"extra": b"would be deleted"})
        report = synctool.sync(str(src), server.url(""), dst_options=server.synctool_options(), **{**FAST, "workers": 1, "retry": 3})
    assert report.exit_code == ExitCode.PARTIAL
    [(name, reason)] = report.failed
    assert name == "big" and "no space left on the server" in reason
    assert report.retries == 0, report.to_dict()
    assert read_tree(small_fs) == {"extra": b"would be deleted"}


# -- faults: the server killed in the middle of a sync -----------------------------------
SERVERS = {"pyftpdlib": pyftpdlib_ftp, "rclone": rclone_ftp}


@pytest.fixture(params=sorted(SERVERS))
def own_server(request, tmp_path):
    """An FTP server of this test alone, free to be killed and started again."""
    with SERVERS[request.param](tmp_path / "server") as server:
        yield server


@pytest.fixture
def tree(tmp_path):
    """A source that keeps a sync busy for a second or two."""
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(4):
        write_big_file(root / f"big{i}.bin", 24 * MiB + i, seed=i)
    make_tree(root, {f"small/{i:02}.txt": bytes([i]) * (1000 + i) for i in range(40)}, mtime=OLD)
    return root


def kill_while_writing(server, restart_after: float | None) -> threading.Thread:
    """In the background: kill ``server`` once a temporary file has grown past
    1 MiB, and start it again ``restart_after`` seconds later (None: leave it down)."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if a_temp_file_grew(server.root, MiB):
                server.kill()
                if restart_after is not None:
                    time.sleep(restart_after)
                    server.start()
                return
            time.sleep(0.002)
        raise AssertionError("no temporary file ever grew")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def assert_no_partial_file(server, folder: str, expected: dict[str, bytes]) -> dict[str, bytes]:
    """Every file under a final name holds exactly the bytes ``expected`` names for it."""
    stored = {k: v for k, v in read_tree(server.root / folder).items() if not k.split("/")[-1].startswith(".synctool-")}
    for name, data in stored.items():
        assert name in expected and data == expected[name], f"{name}: {len(data)} bytes that are not the source's"
    return stored


def test_server_killed_mid_sync_and_back_within_the_retries(own_server, tree):
    watcher = kill_while_writing(own_server, restart_after=0.5)
    url, opts = own_server.url("mirror"), own_server.synctool_options()
    first = synctool.sync(str(tree), url, dst_options=opts, workers=2, retry=4, retry_delay=0.5)
    watcher.join(40)
    assert first.retries >= 1, first.to_dict()
    assert first.exit_code in (ExitCode.SUCCESS, ExitCode.PARTIAL), first.to_dict()
    assert_no_partial_file(own_server, "mirror", read_tree(tree))
    ok(synctool.sync(str(tree), url, dst_options=opts, **FAST))
    assert read_tree(own_server.root / "mirror") == read_tree(tree)
    assert temp_debris(own_server.root) == []


def test_server_killed_mid_sync_and_back_only_after_the_run(own_server, tree):
    own_server.put("mirror", {"only-here.txt": b"not in the source"})
    watcher = kill_while_writing(own_server, restart_after=None)
    url, opts = own_server.url("mirror"), own_server.synctool_options()
    first = synctool.sync(str(tree), url, dst_options=opts, workers=2, retry=1, retry_delay=0.1)
    watcher.join(40)
    assert first.exit_code == ExitCode.PARTIAL, first.to_dict()
    failed = {name for name, _ in first.failed}
    assert failed and failed <= set(read_tree(tree)), first.failed
    assert all("connect" in reason or "lost" in reason for _, reason in first.failed), first.failed
    assert first.deleted == 0 and any("no file was deleted" in e for e in first.errors)

    own_server.start()
    stored = assert_no_partial_file(own_server, "mirror", read_tree(tree) | {"only-here.txt": b"not in the source"})
    assert "only-here.txt" in stored  # copies failed, so nothing was deleted
    debris = temp_debris(own_server.root / "mirror")  # of the writes the server's end cut short
    second = synctool.sync(str(tree), url, dst_options=opts, **FAST)
    ok(second)
    assert second.deleted == 1 + len(debris)
    assert read_tree(own_server.root / "mirror") == read_tree(tree)
    assert temp_debris(own_server.root) == []


def test_first_files_of_many_new_folders_need_no_retry_and_leave_no_temporary_file(ftp_server, ftp_folder, tmp_path):
    # rclone serve ftp, asked to make one folder for two connections at
    # once, lost a file stored in it from its listings and its DELE for
    # minutes: the write was retried and its temporary file stayed behind.
    files = {f"d{i:03d}/f{j}": bytes([i % 256, j]) * 50 for i in range(300) for j in range(4)}
    make_tree(tmp_path / "src", files, mtime=OLD)
    for run in range(3):
        folder = f"{ftp_folder}/run{run}"
        report = synctool.sync(str(tmp_path / "src"), ftp_server.url(folder), dst_options=ftp_server.synctool_options(), **FAST)
        ok(report)
        assert report.retries == 0
        assert temp_debris(ftp_server.root / folder) == []
        assert read_tree(ftp_server.root / folder) == files
