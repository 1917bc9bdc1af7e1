"""Faults against the real S3 server (rclone serve s3): the server killed in the
middle of a sync (back soon, or only after the run), a listing that fails on either
side, Ctrl-C and SIGTERM during an upload (in parts, or one streamed PUT), and a
worker killed while it uploads.

Tests that kill the server start their own (scripts/servers.py's rclone_s3), so the
shared one of the other tests stays up. Whatever happens, the same three things
must hold at the destination: no object under a final key differs from its source,
no multipart upload is left open, and a second run makes an exact mirror.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

import synctool
from scripts.servers import rclone_s3
from synctool.backends import BackendSpec, open_backend
from synctool.backends.base import BackendError
from synctool.errors import ExitCode
from tests.helpers import (
    FAST_CLI,
    RETAINED,
    SlowUplink,
    interrupt_when,
    kill_when,
    make_tree,
    ok,
    open_uploads,
    read_to_its_end,
    read_tree,
    start_synctool,
    sync_losing_a_worker,
    tree_digests,
    wait_until,
    write_big_file,
)

BUCKET = "faults"
MiB = 1 << 20
# The smallest part: several per file, several files in flight. Files from a
# local disk go in parts only above s3-upload-cutoff, which is lowered to match.
PART = {"s3-part-size": "5MiB", "s3-upload-cutoff": "5MiB"}


# -- looking at the server behind synctool's back -------------------------------
def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/`` as relative name -> content."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", ())]
    return {key[len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def tree_digests_of_objects(client, bucket: str, prefix: str) -> dict[str, str]:
    """name -> SHA-256 of every object under ``prefix/``, read in chunks (as tree_digests reads files)."""
    out = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for obj in (obj for page in pages for obj in page.get("Contents", ())):
        digest = hashlib.sha256()
        for chunk in client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].iter_chunks(MiB):
            digest.update(chunk)
        out[obj["Key"][len(prefix) + 1 :]] = digest.hexdigest()
    return out


def assert_no_partial_object_or_upload(client, bucket: str, prefix: str, expected: dict[str, bytes]) -> dict[str, bytes]:
    """Every object that exists holds exactly the bytes ``expected`` names for it; no upload is left open."""
    stored = objects(client, bucket, prefix)
    for name, data in stored.items():
        assert name in expected and data == expected[name], f"{name}: {len(data)} bytes that are not the source's"
    assert open_uploads(client, bucket) == []
    return stored


@pytest.fixture
def own_s3(tmp_path):
    """An S3 server of this test alone, free to be killed and started again; it logs every request."""
    with rclone_s3(tmp_path / "s3", extra_args=["-vv"]) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def tree(tmp_path):
    """A source that keeps a sync busy for a second or two: files in 5 MiB parts, and small ones."""
    root = tmp_path / "src"
    root.mkdir()
    for i in range(4):
        write_big_file(root / f"big{i}.bin", 24 * MiB + i, seed=i)
    make_tree(root, {f"small/{i:02}.txt": os.urandom(1000 + i) for i in range(40)})
    return root


def a_put_under_way(server, bucket: str) -> bool:
    """Whether a streamed PUT is being received: rclone serve s3 writes it to a
    temporary file beside its final name, and renames it once complete."""
    return any((server.root / bucket).rglob(".rclone_temp_put*"))


# How the big files go: in parts (and the moment an upload is open), or each
# in one streamed PUT at the defaults (and the moment one is being received).
HOW = {
    "parts": (PART, lambda server, bucket: bool(open_uploads(server.client(), bucket))),
    "one-put": ({}, a_put_under_way),
}


def kill_while_uploading(server, restart_after: float | None, how: str = "parts"):
    """In the background: kill ``server`` once an upload is under way, and
    start it again ``restart_after`` seconds later (None: leave it down)."""
    under_way = HOW[how][1]
    return kill_when(lambda: under_way(server, BUCKET), server, restart_after, f"no upload ({how}) was ever seen")


def sync_to(server, tree, how: str = "parts", **options):
    return synctool.sync(
        str(tree), f"s3://{BUCKET}/mirror", dst_options={**server.synctool_options(), **HOW[how][0]}, workers=2, **options
    )


# -- 1. the server killed in the middle of a sync -------------------------------
@pytest.mark.parametrize("how", HOW)
def test_server_killed_mid_sync_and_back_within_the_retries(own_s3, tree, how):
    watcher = kill_while_uploading(own_s3, restart_after=0.5, how=how)
    # Backoff of 0.5, 1, 2, 4 s: the restart lands inside the retries.
    first = sync_to(own_s3, tree, how, retry=4, retry_delay=0.5)
    watcher.result()

    # The uploads the server forgot failed and came back; the run may well
    # succeed, or name what it could not copy.
    assert first.retries >= 1, first.to_dict()
    assert first.exit_code in (ExitCode.SUCCESS, ExitCode.PARTIAL), first.to_dict()
    if first.exit_code == ExitCode.PARTIAL:
        assert first.failed and {name for name, _ in first.failed} <= set(read_tree(tree))
    client = own_s3.client()
    assert_no_partial_object_or_upload(client, BUCKET, "mirror", read_tree(tree))

    ok(sync_to(own_s3, tree))
    assert objects(client, BUCKET, "mirror") == read_tree(tree)


@pytest.mark.parametrize("how", HOW)
def test_server_killed_mid_sync_and_back_only_after_the_run(own_s3, tree, how):
    client = own_s3.client()
    client.put_object(Bucket=BUCKET, Key="mirror/only-here.txt", Body=b"not in the source")
    watcher = kill_while_uploading(own_s3, restart_after=None, how=how)
    first = sync_to(own_s3, tree, how, retry=1, retry_delay=0.1)
    watcher.result()

    assert first.exit_code == ExitCode.PARTIAL, first.to_dict()
    assert first.retries >= 1
    failed = {name for name, _ in first.failed}
    assert failed and failed <= set(read_tree(tree)), first.failed
    assert first.copied + len(failed) == len(read_tree(tree))
    assert first.deleted == 0 and any("no file was deleted" in e for e in first.errors)

    own_s3.start()
    extra = {"only-here.txt": b"not in the source"}
    stored = assert_no_partial_object_or_upload(client, BUCKET, "mirror", read_tree(tree) | extra)
    assert "only-here.txt" in stored  # copies failed, so nothing was deleted

    second = sync_to(own_s3, tree)
    ok(second)
    assert second.deleted == 1
    assert objects(client, BUCKET, "mirror") == read_tree(tree)


# -- 2. a listing that fails on either side --------------------------------------
# Enough objects for a listing of ten pages: long enough to be cut in the middle.
LISTED = {f"listed/{i // 500:02}/{i:05}": b"x" for i in range(10_000)}


def range_asked(server, prefix: str) -> Callable[[], bool]:
    """Whether the listing has asked for the key range below ``prefix``.

    The server logs every request (-vv); the listing asks for each folder
    below listed/ as a key range of its own, in order, a few at once.
    """
    return lambda: f'prefix:"{prefix}"'.encode() in server.log.read_bytes()


def kill_during_the_listing(server, proc) -> None:
    """Kill ``server`` once the listing has read its first range."""
    wait_until(range_asked(server, "listed/04/"), proc)
    server.kill()


@pytest.mark.parametrize("retention", [False, True], ids=["plain", "retention"])
@pytest.mark.parametrize("s3_side", ["source", "destination"])
def test_a_failed_listing_deletes_and_renames_nothing(own_s3, tmp_path, s3_side, retention):
    """The server dies in the middle of the listing: after its retries the run
    ends with exit code 1 and deletes, renames and copies nothing."""
    local = tmp_path / "local"
    bucket_dir = own_s3.root / BUCKET  # rclone serves plain files: object K of the bucket is this file
    on_s3 = {**LISTED, "same.txt": b"same", "changed.txt": b"old version", "s3-only.txt": b"only on S3"}
    on_local = {"same.txt": b"same", "changed.txt": b"new version!", "local-only.txt": b"only here"}
    make_tree(bucket_dir, on_s3)
    make_tree(local, on_local, mtime=time.time() + 3600)  # newer, so a plan would copy over S3's
    url, side_options = f"s3://{BUCKET}", "--src-options" if s3_side == "source" else "--dst-options"
    src, dst = (url, local) if s3_side == "source" else (local, url)
    report = tmp_path / "report.json"
    options = [f"{k}={v}" for k, v in own_s3.synctool_options().items()]

    proc = start_synctool(
        src, dst, "-y", *FAST_CLI, "--backend-retries", "1", "--report", report,
        *(["--retention"] if retention else []), side_options, *options,
    )  # fmt: skip
    try:
        kill_during_the_listing(own_s3, proc)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == ExitCode.FATAL, (out, err)
    assert f"listing the {s3_side} failed" in err, err
    figures = json.loads(report.read_text())
    assert figures["deleted"] == figures["renamed"] == 0, figures
    # Copies go as the listings do (see synctool/coordinator.py): the few made
    # before the failure hold the source's bytes, and with --retention the
    # versions they replaced are kept. Nothing else changed.
    from_source = on_s3 if s3_side == "source" else on_local
    changed = 0
    for before, after in ((on_local, read_tree(local)), (on_s3, read_tree(bucket_dir))):
        assert set(before) <= set(after), "a file was deleted"
        for name, data in after.items():
            if retention and RETAINED.search(name):
                assert data == before[RETAINED.sub(r"\1", name)], name
            elif data != before.get(name):
                assert data == from_source[name], name
                changed += 1
    assert changed == figures["copied"], figures


def test_a_listing_cut_by_a_server_crash_resumes_after_its_last_name(own_s3, tmp_path):
    """The server dies in the middle of the source's listing and comes back:
    the listing goes on after the last name it had (the ranges before are not
    asked for again), and the run mirrors every object, none twice."""
    make_tree(own_s3.root / BUCKET, LISTED)
    # The destination holds every name but one already (a name the listing
    # lost would be deleted there), and one name more.
    mirror = {name.removeprefix("listed/"): data for name, data in LISTED.items()}
    local = tmp_path / "local"
    make_tree(local, {**mirror, "05/02542": b"older", "extra": b"not in the source"}, mtime=time.time() + 3600)
    (local / "12" / "06123").unlink()
    # Range 15 is asked for once the ranges up to 11 are read: more than one
    # batch of names the coordinator keeps before a failure.
    watcher = kill_when(range_asked(own_s3, "listed/15/"), own_s3, 0.5, "the listing never reached listed/15/")
    report = synctool.sync(
        f"s3://{BUCKET}/listed", str(local), src_options=own_s3.synctool_options(), workers=2,
        retry=10, retry_delay=0.2, exponential_backoff=False,
    )  # fmt: skip
    watcher.result()

    ok(report)
    assert read_tree(local) == mirror
    assert (report.copied, report.deleted) == (2, 1), report.to_dict()
    log = own_s3.log.read_text()
    after_restart = log.rsplit("starting with parameters", 1)[-1]
    asked = re.findall(r'prefix: prefix:"([^"]*)"', after_restart)
    assert asked, "the listing was over before the server died"
    ranges = [p for p in asked if re.fullmatch(r"listed/\d\d/", p)]
    assert not [p for p in ranges if p < "listed/08/"], asked


# -- 3. SIGINT or SIGTERM during a multipart upload --------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_multipart_upload_is_aborted_and_a_rerun_completes(s3_server, s3_bucket, tmp_path, sig):
    src = tmp_path / "src"
    src.mkdir()
    write_big_file(src / "big.bin", 256 * MiB)
    client = s3_server.client()
    options = [f"{k}={v}" for k, v in s3_server.options(**PART).items()]
    args = [src, f"s3://{s3_bucket}/big", "-y", *FAST_CLI, "--dst-options", *options]

    def parts_in_flight() -> bool:
        uploads = open_uploads(client, s3_bucket)
        return bool(uploads) and bool(
            client.list_parts(Bucket=s3_bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]).get("Parts")
        )

    interrupt_when(parts_in_flight, start_synctool(*args, start_new_session=True), sig)
    assert open_uploads(client, s3_bucket) == []
    # No partial object. On a busy machine the signal may be handled only
    # after the last part was sent and the upload completed: then it is whole.
    if s3_server.keys_under(s3_bucket, "big/"):
        assert tree_digests_of_objects(client, s3_bucket, "big") == tree_digests(src)

    rerun = start_synctool(*args)
    out, err = rerun.communicate(timeout=180)  # a hang, not a slow machine
    assert rerun.returncode == 0, err
    assert tree_digests_of_objects(client, s3_bucket, "big") == tree_digests(src)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_streamed_put_stopped_midway_keeps_the_old_version(own_s3, tmp_path, sig):
    """A file below s3-upload-cutoff goes in one PUT, streamed from the disk:
    stopped halfway, the PUT ends short of its length, and the server keeps
    the version it had."""
    src = tmp_path / "src"
    src.mkdir()
    write_big_file(src / "big.bin", 64 * MiB)
    client = own_s3.client()
    client.put_object(Bucket=BUCKET, Key="big/big.bin", Body=b"the old version")

    def sync(**options: str) -> list:
        given = [f"{k}={v}" for k, v in {**own_s3.synctool_options(), **options}.items()]
        return [src, f"s3://{BUCKET}/big", "-y", *FAST_CLI, "--dst-options", *given]

    with SlowUplink(urlsplit(own_s3.endpoint).port, rate=16 * MiB) as uplink:
        proc = start_synctool(*sync(**{"s3-server-name": f"http://127.0.0.1:{uplink.port}"}), start_new_session=True)
        interrupt_when(lambda: a_put_under_way(own_s3, BUCKET), proc, sig)
    assert open_uploads(client, BUCKET) == []  # it never went in parts
    assert client.get_object(Bucket=BUCKET, Key="big/big.bin")["Body"].read() == b"the old version"
    deadline = time.monotonic() + 10
    while a_put_under_way(own_s3, BUCKET):  # until the server has seen the connection end
        assert time.monotonic() < deadline, "the server kept the cut PUT's temporary file"
        time.sleep(0.05)

    rerun = start_synctool(*sync())
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    assert tree_digests_of_objects(client, BUCKET, "big") == tree_digests(src)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_after_the_source_was_read_still_aborts_the_upload(s3_server, s3_bucket, tmp_path, sig):
    """The whole file is read (its parts all fit the memory budget) while the
    parts crawl over a slow link: the stop comes after the last chunk, and
    must still keep CompleteMultipartUpload from happening."""
    source = tmp_path / "src" / "big.bin"
    source.parent.mkdir()
    write_big_file(source, 24 * MiB)
    with SlowUplink(urlsplit(s3_server.endpoint).port, rate=10 * MiB) as uplink:
        slow = {"s3-server-name": f"http://127.0.0.1:{uplink.port}", "s3-parts-in-flight": "8"}
        options = [f"{k}={v}" for k, v in s3_server.options(**PART, **slow).items()]
        proc = start_synctool(source.parent, f"s3://{s3_bucket}/big", "-y", *FAST_CLI, "--dst-options", *options,
                              start_new_session=True)  # fmt: skip
        # The file is hashed first (its hash goes with the upload): the moment is the upload's reading.
        began = lambda: bool(open_uploads(s3_server.client(), s3_bucket))  # noqa: E731
        interrupt_when(read_to_its_end(proc, source, began), proc, sig, poll=0.001)
    assert s3_server.keys_under(s3_bucket, "big/") == []  # not completed
    assert open_uploads(s3_server.client(), s3_bucket) == []  # aborted


# -- 4. a worker killed with SIGKILL while it uploads ------------------------------
def test_a_worker_killed_while_uploading_is_replaced_and_leaves_no_upload(s3_server, s3_bucket, tmp_path):
    src, report = tmp_path / "src", tmp_path / "report.json"
    src.mkdir()
    for i in range(24):
        write_big_file(src / f"f{i:02}.bin", 6 * MiB + i, seed=i)  # two parts each
    client = s3_server.client()
    options = [f"{k}={v}" for k, v in s3_server.options(**PART).items()]

    sync_losing_a_worker(
        lambda: open_uploads(client, s3_bucket),  # an upload is under way
        src, f"s3://{s3_bucket}/mirror", "-y", *FAST_CLI, "--report", report, "--dst-options", *options,
    )  # fmt: skip
    figures = json.loads(report.read_text())
    assert figures["copied"] == 24 and figures["failed"] == [] and figures["retries"] >= 1
    assert tree_digests_of_objects(client, s3_bucket, "mirror") == tree_digests(src)
    assert open_uploads(client, s3_bucket) == []  # the dead worker's upload was aborted


# -- a large object's read cut short -----------------------------------------------
def test_a_read_cut_by_a_server_crash_fails_and_never_ends_short(own_s3):
    """A large object is streamed in one GET. A server that dies in the middle
    of the body ends the read with an error to retry, never quietly with
    fewer bytes (http.client lets a short body pass); once the server is
    back, the same backend reads it whole."""
    data = os.urandom(64 * MiB)
    (own_s3.root / BUCKET / "big.bin").write_bytes(data)
    backend = open_backend(BackendSpec(f"s3://{BUCKET}", own_s3.synctool_options()))
    chunks = backend.read_sized("big.bin", len(data))
    got = bytearray(next(chunks))
    own_s3.kill()
    with pytest.raises(BackendError) as info:
        for chunk in chunks:
            got += chunk
    assert info.value.retryable and len(got) < len(data)
    own_s3.start()
    assert b"".join(backend.read_sized("big.bin", len(data))) == data
    backend.close()


def test_a_worker_that_reads_large_objects_never_loads_boto3(s3_server, s3_bucket):
    """Loading boto3 takes a good part of a second of a worker's CPU: large
    objects are read through the same signed HTTP client as the listing."""
    data = os.urandom(3 * MiB)
    s3_server.client().put_object(Bucket=s3_bucket, Key="r/big.bin", Body=data)
    probe = (
        "import sys, hashlib; from synctool.backends import BackendSpec, open_backend; "
        f"b = open_backend(BackendSpec('s3://{s3_bucket}/r', {s3_server.options()!r})); "
        f"d = b''.join(b.read_sized('big.bin', {len(data)})); b.close(); "
        "print(hashlib.sha256(d).hexdigest(), 'boto3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [hashlib.sha256(data).hexdigest(), "False"], out.stderr
