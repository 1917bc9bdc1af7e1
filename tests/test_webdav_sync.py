"""End to end with WebDAV on either side, through ``synctool.sync`` and the command line.

Each test runs against rclone serve webdav and wsgidav; the files a server
holds are also files of this machine, read there to check what a run did.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import synctool
from synctool.errors import ExitCode
from tests.backend_contract import _content
from tests.helpers import FAST, OLD, RETAINED, SAMPLE_FILES, make_tree, ok, read_tree, temp_debris

FILES = {**SAMPLE_FILES, "big.bin": _content(3, 3 * 1024 * 1024 + 5)}


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"


def test_local_to_webdav_then_nothing_to_do(webdav_server, webdav_folder, src):
    url, opts = webdav_server.url(webdav_folder), webdav_server.synctool_options()
    report = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(report)
    assert report.copied == len(FILES)
    root = webdav_server.local(webdav_folder)
    assert read_tree(root) == FILES and temp_debris(root) == []
    # The copies carry the source's mtime, so the next run finds nothing to do.
    again = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_webdav_to_local_mirrors_and_deletes(webdav_server, webdav_folder, tmp_path):
    webdav_server.put(webdav_folder, FILES, mtime=OLD)
    dst = tmp_path / "dst"
    make_tree(dst, {"stale/only here": b"x"})
    opts = webdav_server.synctool_options()
    ok(synctool.sync(webdav_server.url(webdav_folder), str(dst), src_options=opts, **FAST))
    assert read_tree(dst) == FILES
    again = synctool.sync(webdav_server.url(webdav_folder), str(dst), src_options=opts, **FAST)
    ok(again)
    assert again.copied == 0


def test_a_changed_file_replaces_the_old_one(webdav_server, webdav_folder, src):
    url, opts = webdav_server.url(webdav_folder), webdav_server.synctool_options()
    ok(synctool.sync(str(src), url, dst_options=opts, **FAST))
    make_tree(src, {"a.txt": b"alpha, longer"}, mtime=OLD + 10)
    (src / "empty").unlink()
    report = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(report)
    assert (report.copied, report.deleted) == (1, 1)
    assert read_tree(webdav_server.local(webdav_folder)) == read_tree(src)


def test_missing_source_folder_is_fatal(webdav_server, webdav_folder, tmp_path):
    report = synctool.sync(webdav_server.url(webdav_folder), str(tmp_path / "dst"),
                           src_options=webdav_server.synctool_options(), **FAST)  # fmt: skip
    assert report.exit_code == ExitCode.FATAL
    assert not (tmp_path / "dst" / "a.txt").exists()


def test_retention_moves_old_versions_on_the_server(webdav_server, webdav_folder, src):
    webdav_server.put(webdav_folder, {"gone.txt": b"only here", "a.txt": b"an older alpha"})
    report = synctool.sync(str(src), webdav_server.url(webdav_folder), dst_options=webdav_server.synctool_options(),
                           retention=True, **FAST)  # fmt: skip
    ok(report)
    after = read_tree(webdav_server.local(webdav_folder))
    assert {k: v for k, v in after.items() if not RETAINED.search(k)} == FILES
    assert sorted(v for k, v in after.items() if RETAINED.search(k)) == [b"an older alpha", b"only here"]


def test_verify_contents_and_get_after_put(webdav_server, webdav_folder, src):
    url, opts = webdav_server.url(webdav_folder), webdav_server.synctool_options()
    report = synctool.sync(str(src), url, dst_options=opts, verify_get_after_put=True, **FAST)
    ok(report)
    assert report.verified_after_put == len(FILES)
    # Same size, newer at the destination: only a content check can tell.
    webdav_server.put(webdav_folder, {"a.txt": b"ALPHA"})
    report = synctool.sync(str(src), url, dst_options=opts, verify_contents=True, **FAST)
    ok(report)
    assert report.verified == len(FILES) and report.verify_mismatches == 1
    assert read_tree(webdav_server.local(webdav_folder)) == FILES


def test_dry_run_writes_nothing(webdav_server, webdav_folder, src):
    webdav_server.put(webdav_folder, {"extra": b"x"})
    url, opts = webdav_server.url(webdav_folder), webdav_server.synctool_options()
    report = synctool.sync(str(src), url, dst_options=opts, dry_run=True, **FAST)
    ok(report)
    assert report.planned_copies == len(FILES) and report.planned_deletes == 1 and report.copied == 0
    assert read_tree(webdav_server.local(webdav_folder)) == {"extra": b"x"}
    # a missing destination folder is not created by a dry run either
    ok(synctool.sync(str(src), url + "/not-yet", dst_options=opts, dry_run=True, **FAST))
    assert not (webdav_server.local(webdav_folder) / "not-yet").exists()


def test_webdav_to_s3_and_back(webdav_server, webdav_folder, s3_server, s3_bucket):
    webdav_server.put(webdav_folder, FILES, mtime=OLD)
    s3_url, back = f"s3://{s3_bucket}/mirror", f"{webdav_folder}-back"
    dav = webdav_server.synctool_options()
    ok(synctool.sync(webdav_server.url(webdav_folder), s3_url, src_options=dav, dst_options=s3_server.options(),
                     verify_get_after_put=True, **FAST))  # fmt: skip
    ok(synctool.sync(s3_url, webdav_server.url(back), src_options=s3_server.options(), dst_options=dav, **FAST))
    assert read_tree(webdav_server.local(back)) == FILES
    again = synctool.sync(s3_url, webdav_server.url(back), src_options=s3_server.options(), dst_options=dav, **FAST)
    ok(again)
    assert again.copied == 0


def test_webdav_to_sftp_and_back(webdav_server, webdav_folder, sftp_server, sftp_folder, no_ssh_environment):
    webdav_server.put(webdav_folder, FILES, mtime=OLD)
    dav, ssh = webdav_server.synctool_options(), sftp_server.key_options()
    back = f"{webdav_folder}-back"
    ok(synctool.sync(webdav_server.url(webdav_folder), sftp_server.url(sftp_folder), src_options=dav,
                     dst_options=ssh, **FAST))  # fmt: skip
    assert read_tree(sftp_server.local(sftp_folder)) == FILES
    ok(synctool.sync(sftp_server.url(sftp_folder), webdav_server.url(back), src_options=ssh, dst_options=dav,
                     verify_get_after_put=True, **FAST))  # fmt: skip
    assert read_tree(webdav_server.local(back)) == FILES
    again = synctool.sync(sftp_server.url(sftp_folder), webdav_server.url(back), src_options=ssh, dst_options=dav,
                          **FAST)  # fmt: skip
    ok(again)
    assert again.copied == 0


def test_webdav_to_webdav(rclone_webdav_server, wsgidav_server, webdav_folder):
    rclone_webdav_server.put(webdav_folder, FILES, mtime=OLD)
    args = (rclone_webdav_server.url(webdav_folder), wsgidav_server.url(webdav_folder))
    options = {"src_options": rclone_webdav_server.synctool_options(), "dst_options": wsgidav_server.synctool_options()}
    ok(synctool.sync(*args, **options, **FAST))
    assert read_tree(wsgidav_server.local(webdav_folder)) == FILES
    again = synctool.sync(*args, **options, **FAST)
    ok(again)
    assert again.copied == 0


# -- the command line ------------------------------------------------------------------
def test_cli_over_webdavs_keeps_the_password_out(webdavs_server, webdav_folder, src):
    url = webdavs_server.url(webdav_folder, user=webdavs_server.user, password=webdavs_server.password)
    run = subprocess.run(
        [sys.executable, "-m", "synctool", str(src), url, "-y", "--workers", "2", "--log-level", "Verbose",
         "--dst-options", f"accept-specified-ssl-hash={webdavs_server.sha1}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_tree(webdavs_server.local(webdav_folder)) == FILES
    assert webdavs_server.password not in run.stdout + run.stderr
