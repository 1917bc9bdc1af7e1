"""A run copies while it lists, holds a bounded window, and keeps what must wait on disk."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from synctool.backends import BackendSpec
from synctool.backends.base import BackendError, FatalBackendError
from synctool.coordinator import Coordinator, Env
from synctool.errors import ExitCode
from synctool.listing import BATCH, ReadAhead
from synctool.options import SyncOptions
from synctool.pool import WorkerPool
from synctool.report import LISTED_CAP, Report
from synctool.retry import RetryPolicy
from synctool.spool import Spool
from tests.helpers import FAST, FAST_CLI, make_tree, sync_losing_a_worker
from workers.jobs import WorkerSettings

MANY = 40_000


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("many") / "src"
    for d in range(40):
        folder = root / f"d{d:02d}"
        folder.mkdir(parents=True)
        for i in range(MANY // 40):
            (folder / f"f{i:05d}").write_bytes(b"")
    return root


def test_the_first_file_is_written_while_the_listing_goes_on(many_files, tmp_path):
    """Backpressure holds the listing a bounded window ahead of the copies:
    when the first file lands, most of the source is not even listed yet.
    (A local folder tells its free space, and then copies wait for the whole
    plan: quota-disable=true lets them start at once, as on S3.)"""
    dst = tmp_path / "dst"
    opts = SyncOptions(str(many_files), str(dst), confirm=True, quota_disable=True, **FAST)
    coordinator = Coordinator(opts, Env())
    seen: dict[str, int] = {}

    def watch() -> None:
        first = dst / "d00" / "f00000"
        while not first.exists():
            time.sleep(0.001)
        seen["listed"] = coordinator.listed["source"]

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    report = coordinator.run()
    watcher.join(5)
    assert report.exit_code == ExitCode.SUCCESS and report.copied == MANY
    assert seen["listed"] < MANY / 2, seen


def test_a_worker_lost_while_the_listing_goes_on_is_replaced_by_a_fresh_interpreter(many_files, tmp_path):
    """A fork copies no thread but the caller's: one caught inside a C library
    (OpenSSL, awscrt) leaves its locks held in the child for good. While the
    listing threads run, a replacement worker is a fresh interpreter."""
    dst = tmp_path / "dst"
    first = dst / "d00" / "f00000"
    _, err = sync_losing_a_worker(
        first.exists, many_files, dst, "-y", *FAST_CLI, "--log-level", "profiling", "--dst-options", "quota-disable=true"
    )
    assert "worker 0: process" in err and err.split("worker 0: process", 1)[1].splitlines()[0].endswith(", by fork")
    assert "worker 2: process" in err and err.split("worker 2: process", 1)[1].splitlines()[0].endswith(", by exec")
    assert sum(1 for _ in dst.rglob("f*")) == MANY


def test_a_plan_to_confirm_runs_from_its_spool(many_files, tmp_path, monkeypatch):
    """Without -y the plan waits on disk for the answer, then runs whole."""
    import io

    import synctool.spool

    monkeypatch.setattr(synctool.spool, "BATCH", 100)  # many batches on disk
    dst = tmp_path / "dst"
    make_tree(dst, {"only-here": b"x"})
    env = Env(io.StringIO("y\n"), io.StringIO(), stdin_isatty=True)
    report = Coordinator(SyncOptions(str(many_files), str(dst), confirm=False, **FAST), env).run()
    assert report.exit_code == ExitCode.SUCCESS
    assert f"Delete 1 file(s)" in env.stdout.getvalue() and f"Copy {MANY} file(s)" in env.stdout.getvalue()
    assert report.copied == MANY and report.deleted == 1
    assert not (dst / "only-here").exists()


@pytest.mark.parametrize("scheme", ["ssh", "s3"])
def test_workers_told_to_connect_ahead_dial_before_a_shard_and_stop_without_waiting(tmp_path, scheme):
    """Once the coordinator has logged in, the workers open their connections
    while it lists, so that the first copy does not wait for a login. A worker
    stopped while its login hangs (a server that never answers) ends at once."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        dst = {
            "ssh": BackendSpec(f"ssh://nobody@127.0.0.1:{port}/dst", {"ssh-disable-agent": "true"}),
            "s3": BackendSpec("s3://bucket/dst", {"s3-server-name": f"http://127.0.0.1:{port}",
                                                  "aws-access-key-id": "k", "aws-secret-access-key": "s"}),
        }[scheme]  # fmt: skip
        pool = WorkerPool(2, BackendSpec(str(tmp_path), {}), dst, WorkerSettings(), logging.WARNING)
        accepted = []
        try:
            pool.start()
            silent.settimeout(1.0)
            with pytest.raises(TimeoutError):
                silent.accept()  # started, and nothing dialled yet
            pool.connect_ahead()
            silent.settimeout(20)
            accepted = [silent.accept()[0] for _ in range(2)]  # one per worker, with no shard handed out
        finally:
            started = time.monotonic()
            pool.stop()
            stopped_in = time.monotonic() - started
            for connection in accepted:
                connection.close()
        assert len(accepted) == 2
        assert all(not w.process.is_alive() for w in pool.workers.values())
        assert stopped_in < 10, stopped_in  # not the login's own timeout


def test_the_report_lists_failures_up_to_a_cap_and_counts_the_rest():
    report = Report()
    for i in range(LISTED_CAP + 5):
        report.add_failure(f"f{i}", "broken")
    assert len(report.failed) == LISTED_CAP and report.failed_count == LISTED_CAP + 5
    assert f"failed {LISTED_CAP + 5}" in report.summary_lines()[1]


def test_a_spool_gives_back_what_it_took_in_order():
    spool: Spool[tuple[str, int]] = Spool()
    for i in range(5000):
        spool.append(("x", i))
    assert [i for _, i in spool] == list(range(5000))
    assert [len(b) for b in spool.batches(2000)] == [2000, 2000, 1000]
    spool.close()
    assert list(spool) == []


def test_read_ahead_hands_over_in_order_and_raises_where_the_thread_failed():
    def items():
        yield from range(BATCH * 3 + 7)
        raise BackendError("the server went away")

    ahead = ReadAhead(items(), "test")
    got = []
    with pytest.raises(BackendError, match="went away"):
        for item in ahead:
            got.append(item)
    assert got == list(range(BATCH * 3 + 7))
    ahead.close()


def test_read_ahead_stops_its_thread_when_closed():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    ahead = ReadAhead(endless(), "endless")
    assert ahead.take(5.0)
    ahead.close()
    assert not ahead._thread.is_alive()


def test_the_retry_policy_retries_only_what_may_pass():
    policy = RetryPolicy(retries=2, delay=0.001)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise BackendError("flaky")
        return "done"

    assert policy.call(flaky) == "done" and len(calls) == 3
    calls.clear()

    def final():
        calls.append(1)
        raise FatalBackendError("disk full")

    with pytest.raises(BackendError):
        policy.call(final)
    assert len(calls) == 1
    assert not policy.allows(2) and policy.allows(1) and not policy.allows(0, retryable=False)
