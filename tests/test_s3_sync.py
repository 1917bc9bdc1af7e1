"""End to end with S3 on either side, through ``synctool.sync`` and the command line.

Missing buckets, refused keys and unreachable endpoints are rows of tests/test_bad_input.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import blake3
import pytest

import synctool
from synctool.backends import s3_native
from synctool.worker_start import other_threads_alive
from tests.backend_contract import _content
from tests.helpers import FAST, OLD, RETAINED, SAMPLE_FILES, make_tree, ok, open_uploads, read_tree
from tests.test_s3_backend import _blake3_meta

FILES = SAMPLE_FILES


def s3_tree(s3_server, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/`` as relative name -> content."""
    client = s3_server.client()
    return {
        key[len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in s3_server.keys_under(bucket, prefix + "/")
    }


def put_tree(s3_server, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES, mtime=OLD)
    return tmp_path / "src"


def test_local_to_s3_then_nothing_to_do(s3_server, s3_bucket, src):
    url, opts = f"s3://{s3_bucket}/backup", s3_server.options()
    report = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(report)
    assert report.copied == len(FILES)
    assert s3_tree(s3_server, s3_bucket, "backup") == FILES
    # Uploads are newer than the source, so the next run finds nothing to copy.
    again = synctool.sync(str(src), url, dst_options=opts, **FAST)
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_s3_to_local(s3_server, s3_bucket, tmp_path):
    put_tree(s3_server, s3_bucket, "backup", FILES)
    dst = tmp_path / "dst"
    ok(synctool.sync(f"s3://{s3_bucket}/backup", str(dst), src_options=s3_server.options(), **FAST))
    assert read_tree(dst) == FILES


def test_s3_to_s3_between_buckets_with_multipart(s3_server, s3_bucket):
    files = {**FILES, "big.bin": _content(5, 11 * 1024 * 1024 + 7)}
    put_tree(s3_server, s3_bucket, "src", files)
    other = s3_server.new_bucket()
    try:
        report = synctool.sync(
            f"s3://{s3_bucket}/src",
            f"s3://{other}/mirror",
            global_options=s3_server.options(),
            dst_options={"s3-part-size": "5MiB"},
            verify_get_after_put=True,
            **FAST,
        )
        ok(report)
        assert report.verified_after_put == len(files)
        assert s3_tree(s3_server, other, "mirror") == files
        assert open_uploads(s3_server.client(), other) == []
    finally:
        if s3_server.kind == "external":
            s3_server.empty_bucket(other)


def test_a_large_local_file_takes_its_hash_to_s3_without_a_copy(s3_server, s3_bucket, tmp_path):
    """From a local disk the file is hashed before it is sent, so the hash
    goes with the upload: with the server-side rewrite off, it can only
    have come that way. From S3, which is not read twice, it cannot."""
    data = _content(9, 11 * 1024 * 1024 + 5)
    make_tree(tmp_path / "src", {"big.bin": data})
    options = s3_server.options(**{"s3-part-size": "5MiB", "s3-multipart-blake3": "false"})
    ok(synctool.sync(str(tmp_path / "src"), f"s3://{s3_bucket}/p", dst_options=options, **FAST))
    assert _blake3_meta(s3_server, s3_bucket, "p/big.bin") == blake3.blake3(data).hexdigest()

    other = s3_server.new_bucket()
    try:
        ok(synctool.sync(f"s3://{s3_bucket}/p", f"s3://{other}/q", global_options=s3_server.options(),
                         dst_options={"s3-part-size": "5MiB", "s3-multipart-blake3": "false"}, **FAST))  # fmt: skip
        assert _blake3_meta(s3_server, other, "q/big.bin") is None
    finally:
        if s3_server.kind == "external":
            s3_server.empty_bucket(other)


def sync_with_small_parts(s3_server, bucket: str, src):
    """Sync ``src`` to s3://bucket/p in 5 MiB parts, reading each copy back; it must succeed."""
    report = synctool.sync(
        str(src),
        f"s3://{bucket}/p",
        dst_options=s3_server.options(**{"s3-part-size": "5MiB"}),
        verify_get_after_put=True,
        **FAST,
    )
    ok(report)
    return report


def test_multipart_from_local_with_get_after_put(s3_server, s3_bucket, tmp_path):
    data = _content(6, 12 * 1024 * 1024 + 1)
    make_tree(tmp_path / "src", {"large/file.bin": data})
    report = sync_with_small_parts(s3_server, s3_bucket, tmp_path / "src")
    assert report.verified_after_put == 1
    assert s3_tree(s3_server, s3_bucket, "p") == {"large/file.bin": data}


def test_a_caller_with_live_native_threads_gets_workers_from_a_fresh_interpreter(s3_server, s3_bucket, tmp_path, caplog):
    # A program that used awscrt itself (its client's event-loop threads
    # still running) and then calls synctool.sync: forking workers from it
    # copied those threads' state half-owned, and workers crashed (SIGSEGV).
    client = s3_native.NativeS3(
        endpoint_url=s3_server.endpoint,
        region="us-east-1",
        bucket=s3_bucket,
        path_style=True,
        credentials=(s3_server.key, s3_server.secret, None),
        connections=2,
    )
    try:
        assert other_threads_alive()
        data = _content(7, 6 * 1024 * 1024 + 3)
        make_tree(tmp_path / "src", {"big.bin": data, "small": b"s"})
        with caplog.at_level(logging.DEBUG, logger="synctool.pool"):
            sync_with_small_parts(s3_server, s3_bucket, tmp_path / "src")
        assert s3_tree(s3_server, s3_bucket, "p") == {"big.bin": data, "small": b"s"}
        started = [r.getMessage() for r in caplog.records if ": process " in r.getMessage()]
        assert started and all(m.endswith(", by exec") for m in started), started
    finally:
        client.close()


def test_retention_renames_on_the_server(s3_server, s3_bucket, src):
    put_tree(s3_server, s3_bucket, "backup", {"gone.txt": b"only here", "a.txt": b"an older alpha"})
    report = synctool.sync(
        str(src), f"s3://{s3_bucket}/backup", dst_options=s3_server.options(), retention=True, force=True, **FAST
    )
    ok(report)
    after = s3_tree(s3_server, s3_bucket, "backup")
    assert {k: v for k, v in after.items() if not RETAINED.search(k)} == FILES
    kept = sorted(v for k, v in after.items() if RETAINED.search(k))
    assert kept == [b"an older alpha", b"only here"]


def test_verify_contents_finds_a_changed_object_of_the_same_size(s3_server, s3_bucket, src):
    url, opts = f"s3://{s3_bucket}/backup", s3_server.options()
    ok(synctool.sync(str(src), url, dst_options=opts, **FAST))
    # Same size, newer at the destination: only a content check can tell.
    s3_server.client().put_object(Bucket=s3_bucket, Key="backup/a.txt", Body=b"ALPHA")
    report = synctool.sync(str(src), url, dst_options=opts, verify_contents=True, **FAST)
    ok(report)
    assert report.verified == len(FILES) and report.verify_mismatches == 1
    assert s3_tree(s3_server, s3_bucket, "backup") == FILES


def test_dry_run_writes_nothing(s3_server, s3_bucket, src):
    put_tree(s3_server, s3_bucket, "backup", {"extra": b"x"})
    report = synctool.sync(str(src), f"s3://{s3_bucket}/backup", dst_options=s3_server.options(), dry_run=True, **FAST)
    ok(report)
    assert report.planned_copies == len(FILES) and report.planned_deletes == 1 and report.copied == 0
    assert s3_server.keys_under(s3_bucket) == ["backup/extra"]
    # a missing destination bucket is not created by a dry run either
    ok(synctool.sync(str(src), "s3://t-dry-run-only/x", dst_options=s3_server.options(), dry_run=True, **FAST))
    assert "t-dry-run-only" not in {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}


def test_prefix_sharing_its_start_with_another(s3_server, s3_bucket, src):
    put_tree(s3_server, s3_bucket, "backup2", {"untouched": b"2"})
    put_tree(s3_server, s3_bucket, "backup", {"stale": b"s"})
    ok(synctool.sync(str(src), f"s3://{s3_bucket}/backup", dst_options=s3_server.options(), **FAST))
    assert s3_tree(s3_server, s3_bucket, "backup") == FILES
    assert s3_tree(s3_server, s3_bucket, "backup2") == {"untouched": b"2"}


def test_missing_destination_bucket_is_created(s3_server, src):
    bucket = f"t-created-{os.getpid()}-{os.urandom(3).hex()}"
    ok(synctool.sync(str(src), f"s3://{bucket}/p", dst_options=s3_server.options(), **FAST))
    assert s3_tree(s3_server, bucket, "p") == FILES
    if s3_server.kind == "external":
        s3_server.empty_bucket(bucket)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synctool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def _cli_options(s3_server, **extra) -> list[str]:
    """key=value tokens for the command line; the endpoint as host:port (plain HTTP)."""
    opts = s3_server.options(**{"s3-server-name": s3_server.endpoint.split("://", 1)[1], **extra})
    return [f"{k}={v}" for k, v in opts.items()]


def test_cli_copies_and_keeps_the_secret_out(s3_server, s3_bucket, src):
    run = _cli(str(src), f"s3://{s3_bucket}/cli", "-y", "--workers", "2", "--dst-options", *_cli_options(s3_server))
    assert run.returncode == 0, run.stderr
    assert s3_tree(s3_server, s3_bucket, "cli") == FILES
    assert s3_server.secret not in run.stdout + run.stderr
