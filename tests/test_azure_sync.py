"""End to end with Azure Blob Storage (Azurite) on either side, through ``synctool.sync``
and the command line: with local folders, S3, SFTP, FTP and WebDAV on the other side."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable

import pytest

import synctool
from synctool.errors import ExitCode
from tests.backend_contract import _content
from tests.helpers import FAST, OLD, RETAINED, SAMPLE_FILES, make_tree, ok, read_tree

# One file above the block size below: staged in three blocks, committed at the end.
FILES = {**SAMPLE_FILES, "big/file.bin": _content(4, 2 * 1024 * 1024 + 17)}
SMALL_BLOCKS = {"azure-block-size": "1MiB"}


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"


@pytest.fixture
def az(azure_server, azure_container):
    """(URL, options, read the mirror back) for azure://CONTAINER/backup."""

    def tree() -> dict[str, bytes]:
        return azure_server.blobs(azure_container, "backup/")

    return f"azure://{azure_container}/backup", azure_server.synctool_options(**SMALL_BLOCKS), tree


def test_local_to_azure_then_nothing_to_do(az, src):
    url, opts, tree = az
    report = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(report)
    assert report.copied == len(FILES)
    assert tree() == FILES
    # Uploads are newer than the source, so the next run finds nothing to copy.
    again = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_azure_to_local_then_nothing_to_do(azure_server, azure_container, tmp_path):
    azure_server.put(azure_container, {f"backup/{k}": v for k, v in FILES.items()})
    dst = tmp_path / "dst"
    make_tree(dst, {"stale/only here": b"x"})
    url, opts = f"azure://{azure_container}/backup", azure_server.synctool_options()
    ok(synctool.sync(url, str(dst), src_options=opts, **FAST))
    assert read_tree(dst) == FILES
    again = synctool.sync(url, str(dst), src_options=opts, **FAST)
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_azure_to_azure_with_get_after_put(azure_server, azure_container, az):
    url, opts, tree = az
    azure_server.put(azure_container, {f"src/{k}": v for k, v in FILES.items()})
    report = synctool.sync(f"azure://{azure_container}/src", url, global_options=opts, verify_get_after_put=True,
                           **FAST)  # fmt: skip
    ok(report)
    assert report.verified_after_put == len(FILES)
    assert tree() == FILES


def test_sftp_to_azure_and_azure_to_sftp(sftp_server, sftp_folder, az, no_ssh_environment):
    url, opts, tree = az
    sftp_server.put(sftp_folder, FILES, mtime=OLD)
    ok(synctool.sync(sftp_server.url(sftp_folder), url, src_options=sftp_server.key_options(), dst_options=opts,
                     **FAST))  # fmt: skip
    assert tree() == FILES
    back = f"{sftp_folder}-back"
    report = synctool.sync(url, sftp_server.url(back), src_options=opts, dst_options=sftp_server.key_options(),
                           verify_get_after_put=True, **FAST)  # fmt: skip
    ok(report)
    assert read_tree(sftp_server.local(back)) == FILES
    again = synctool.sync(url, sftp_server.url(back), src_options=opts, dst_options=sftp_server.key_options(), **FAST)
    ok(again)
    assert again.copied == 0


@dataclasses.dataclass
class Side:
    """One end of a hop: its URL, its options, and its files read behind synctool's back."""

    url: str
    options: dict[str, str]
    read: Callable[[], dict[str, bytes]]


def there_and_back(src, first: Side, second: Side, back: Side) -> None:
    """Local -> FIRST -> SECOND, then SECOND -> BACK (FIRST's kind): each hop
    mirrors, its re-run finds nothing to do, and a file changed at the source
    keeps its old version at SECOND under a retention name."""

    def hop(a: Side, b: Side, **options):
        report = synctool.sync(a.url, b.url, src_options=a.options, dst_options=b.options, **{**FAST, **options})
        ok(report)
        return report

    local = Side(str(src), {}, lambda: read_tree(src))
    hop(local, first)
    assert hop(first, second).copied == len(FILES)
    assert second.read() == FILES
    again = hop(first, second)
    assert again.copied == 0 and again.unchanged == len(FILES)

    (src / "a.txt").write_bytes(b"alpha, changed")  # newer and larger
    hop(local, first)
    assert hop(first, second, retention=True).copied == 1
    mirrored = second.read()
    kept = {k: v for k, v in mirrored.items() if RETAINED.search(k)}
    assert list(kept.values()) == [FILES["a.txt"]]
    assert {k: v for k, v in mirrored.items() if k not in kept} == {**FILES, "a.txt": b"alpha, changed"}
    assert hop(first, second, retention=True).copied == 0

    returned = hop(second, back, verify_get_after_put=True)
    assert returned.copied == returned.verified_after_put == len(mirrored)  # the kept version is a file too
    assert back.read() == mirrored
    again = hop(second, back)
    assert again.copied == 0 and again.unchanged == len(mirrored)


def azure_side(azure_server, container: str, prefix: str) -> Side:
    return Side(f"azure://{container}/{prefix}", azure_server.synctool_options(**SMALL_BLOCKS),
                lambda: azure_server.blobs(container, f"{prefix}/"))  # fmt: skip


def test_azure_to_ftp_and_back(azure_server, azure_container, ftp_server, ftp_folder, src):
    ftp = Side(ftp_server.url(ftp_folder), ftp_server.synctool_options(),
               lambda: read_tree(ftp_server.root / ftp_folder))  # fmt: skip
    there_and_back(src, azure_side(azure_server, azure_container, "a"), ftp,
                   azure_side(azure_server, azure_container, "back"))  # fmt: skip


def test_azure_to_webdav_and_back(azure_server, azure_container, webdav_server, webdav_folder, src):
    dav = Side(webdav_server.url(webdav_folder), webdav_server.synctool_options(),
               lambda: read_tree(webdav_server.local(webdav_folder)))  # fmt: skip
    there_and_back(src, azure_side(azure_server, azure_container, "a"), dav,
                   azure_side(azure_server, azure_container, "back"))  # fmt: skip


def test_s3_to_azure_and_back(s3_server, s3_bucket, azure_server, azure_container, src):
    client = s3_server.client()

    def s3_side(prefix: str) -> Side:
        def read() -> dict[str, bytes]:
            return {key[len(prefix) + 1 :]: client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
                    for key in s3_server.keys_under(s3_bucket, f"{prefix}/")}  # fmt: skip

        return Side(f"s3://{s3_bucket}/{prefix}", s3_server.options(**{"s3-part-size": "5MiB"}), read)

    there_and_back(src, s3_side("a"), azure_side(azure_server, azure_container, "b"), s3_side("back"))


def test_retention_keeps_old_versions_on_the_server(azure_server, azure_container, az, src):
    url, opts, tree = az
    azure_server.put(azure_container, {"backup/gone.txt": b"only here", "backup/a.txt": b"an older alpha"})
    report = synctool.sync(str(src), url, dst_options=opts, retention=True, force=True, **FAST)
    ok(report)
    after = tree()
    assert {k: v for k, v in after.items() if not RETAINED.search(k)} == FILES
    kept = sorted(v for k, v in after.items() if RETAINED.search(k))
    assert kept == [b"an older alpha", b"only here"]


def test_get_after_put_reads_every_copy_back(az, src):
    url, opts, tree = az
    report = synctool.sync(str(src), url, dst_options=opts, verify_get_after_put=True, **FAST)
    ok(report)
    assert report.verified_after_put == len(FILES)
    assert tree() == FILES


def test_verify_contents_finds_a_changed_blob_of_the_same_size(azure_server, azure_container, az, src):
    url, opts, tree = az
    ok(synctool.sync(str(src), url, dst_options=opts, **FAST))
    # Same size, newer at the destination: only a content check can tell.
    azure_server.put(azure_container, {"backup/a.txt": b"ALPHA"})
    report = synctool.sync(str(src), url, dst_options=opts, verify_contents=True, **FAST)
    ok(report)
    assert report.verified == len(FILES) and report.verify_mismatches == 1
    assert tree() == FILES


def test_dry_run_writes_nothing(azure_server, azure_container, az, src):
    url, opts, tree = az
    azure_server.put(azure_container, {"backup/extra": b"x"})
    report = synctool.sync(str(src), url, dst_options=opts, dry_run=True, **FAST)
    ok(report)
    assert report.planned_copies == len(FILES) and report.planned_deletes == 1 and report.copied == 0
    assert tree() == {"extra": b"x"}
    # a missing destination container is not created by a dry run either
    ok(synctool.sync(str(src), "azure://t-dry-run-only/x", dst_options=opts, dry_run=True, **FAST))
    assert not azure_server.container("t-dry-run-only").exists()


def test_prefix_sharing_its_start_with_another(azure_server, azure_container, az, src):
    url, opts, tree = az
    azure_server.put(azure_container, {"backup2/untouched": b"2", "backup/stale": b"s"})
    ok(synctool.sync(str(src), url, dst_options=opts, **FAST))
    assert tree() == FILES
    assert azure_server.blobs(azure_container, "backup2/") == {"untouched": b"2"}


def test_missing_destination_container_is_created_unless_told_not_to(azure_server, src):
    opts = azure_server.synctool_options()
    name = f"t-created-{abs(hash(str(src))) % 10**8}"
    # Duplicati's option, read by the tool for the destination as a whole.
    refused = synctool.sync(str(src), f"azure://{name}-no/p", dst_options=opts,
                            global_options={"auto-create-folders": "false"}, **FAST)  # fmt: skip
    assert refused.exit_code == ExitCode.FATAL
    assert any("does not exist" in e for e in refused.errors), refused.errors
    assert not azure_server.container(f"{name}-no").exists()
    ok(synctool.sync(str(src), f"azure://{name}/p", dst_options=opts, **FAST))
    assert azure_server.blobs(name, "p/") == FILES


def test_a_missing_source_container_or_empty_prefix_is_an_error_and_nothing_is_deleted(az, tmp_path):
    url, opts, _ = az
    dst = tmp_path / "dst"
    make_tree(dst, {"keep": b"k"})
    for source in ("azure://t-no-such-container/x", url + "/nothing-here"):
        report = synctool.sync(source, str(dst), src_options=opts, **FAST)
        assert report.exit_code == ExitCode.FATAL, report.to_dict()
    assert read_tree(dst) == {"keep": b"k"}


def test_cli_copies_and_keeps_the_key_out(azure_server, az, src):
    url, opts, tree = az
    run = subprocess.run(
        [sys.executable, "-m", "synctool", str(src), url, "-y", "--workers", "2",
         "--dst-options", *(f"{k}={v}" for k, v in opts.items())],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert tree() == FILES
    assert azure_server.key not in run.stdout + run.stderr
