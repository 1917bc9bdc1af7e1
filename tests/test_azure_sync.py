"""End to end with Azure Blob Storage (Azurite) on either side, through ``synctool.sync``
and the command line: with local folders, S3 and SFTP on the other side."""

from __future__ import annotations

import subprocess
import sys

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


def test_s3_to_azure_and_azure_to_s3(s3_server, s3_bucket, az, src):
    url, opts, tree = az
    ok(synctool.sync(str(src), f"s3://{s3_bucket}/a", dst_options=s3_server.options(), **FAST))
    ok(synctool.sync(f"s3://{s3_bucket}/a", url, src_options=s3_server.options(), dst_options=opts, **FAST))
    assert tree() == FILES
    back = synctool.sync(url, f"s3://{s3_bucket}/b", src_options=opts, dst_options=s3_server.options(),
                         verify_get_after_put=True, **FAST)  # fmt: skip
    ok(back)
    client = s3_server.client()
    assert {k[2:]: client.get_object(Bucket=s3_bucket, Key=k)["Body"].read()
            for k in s3_server.keys_under(s3_bucket, "b/")} == FILES  # fmt: skip
    again = synctool.sync(url, f"s3://{s3_bucket}/b", src_options=opts, dst_options=s3_server.options(), **FAST)
    ok(again)
    assert again.copied == 0


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
