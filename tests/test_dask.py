"""The shards of a run on a real Dask cluster (``--scheduler``), against the real servers.

The cluster (tests/fixtures/dask.py) is a ``dask scheduler`` and two ``dask
worker`` processes on loopback; the coordinator lists, plans, retries and
deletes as on one host, and the workers copy. Faults are real too: a worker
process SIGKILLed mid-write, the scheduler killed, Ctrl-C to the console
script's process group, a worker that cannot see the local folder.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import psutil
import pytest

import synctool
from scripts.servers_dask import dask_cluster as start_cluster
from scripts.servers_ftp import certificate
from tests.helpers import (
    FAST, FAST_CLI, OLD, RETAINED, a_temp_file_grew, make_tree, ok, read_tree, start_synctool, temp_debris, wait_until,
)
from workers.jobs import MSG_RESULT

FILES = {f"d{i % 3}/f{i:03d}.bin": os.urandom(100 + 997 * i) for i in range(40)} | {"empty": b"", "top.txt": b"top"}
NOT_ALLOWED = ("Traceback", "Exception ignored")


@pytest.fixture(autouse=True)
def _clean_ssh_environment(no_ssh_environment):
    """No known_hosts and no agent of the person running the tests."""


def s3_objects(s3_server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3_server.client()
    return {
        key[len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in s3_server.keys_under(bucket, prefix + "/")
    }


def synctool_events(cluster) -> dict[str, list]:
    """The messages synctool's tasks sent, by run topic, as the scheduler kept them."""
    with cluster.client() as client:
        events = client.get_events()
    return {
        topic: [pickle.loads(msg) for _, msg in items]
        for topic, items in events.items()
        if topic.startswith("synctool-")
    }


def synctool_leftovers(cluster) -> dict[str, list]:
    """What a run left on the cluster: tasks, plugins on the scheduler and on the workers."""
    with cluster.client() as client:
        tasks = client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks if "synctool" in str(k)])
        plugins = client.run_on_scheduler(lambda dask_scheduler: [n for n in dask_scheduler.worker_plugins if "synctool" in n])
        on_workers = client.run(lambda dask_worker: [n for n in dask_worker.plugins if "synctool" in n])
    return {"tasks": tasks, "plugins": plugins, "worker plugins": [n for names in on_workers.values() for n in names]}


def ssh_options(server) -> list[str]:
    return [f"{k}={v}" for k, v in server.key_options().items()]


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def sync_and_meanwhile(dst, act, *args, **popen) -> tuple[int, str, str]:
    """Run ``synctool ARGS``; once a write is under way below ``dst``, call
    ``act(proc)``; return (exit code, stdout, stderr)."""
    proc = start_synctool(*args, *FAST_CLI, **popen)
    try:
        wait_until(lambda: a_temp_file_grew(dst, 1 << 20), proc, timeout=90)
        act(proc)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            (os.killpg if popen.get("start_new_session") else os.kill)(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


def test_local_to_s3_runs_on_the_workers_and_mirrors(dask_cluster, s3_server, s3_bucket, tmp_path):
    src = tmp_path / "src"
    make_tree(src, FILES, mtime=OLD)
    s3_server.client().put_object(Bucket=s3_bucket, Key="m/extra-only-here", Body=b"x")
    before = set(synctool_events(dask_cluster))
    report = synctool.sync(str(src), f"s3://{s3_bucket}/m", dst_options=s3_server.options(),
                           scheduler=dask_cluster.address, **FAST)  # fmt: skip
    ok(report)
    assert report.copied == len(FILES) and report.deleted == 1
    assert s3_objects(s3_server, s3_bucket, "m") == FILES
    # The results came back from the cluster's workers, as events of this run.
    runs = {t: msgs for t, msgs in synctool_events(dask_cluster).items() if t not in before}
    assert len(runs) == 1
    [messages] = runs.values()
    answered = [r for kind, _, payload in messages if kind == MSG_RESULT for r in payload]
    assert len(answered) == len(FILES) and all(r.ok for r in answered)
    assert {address for _, address, _ in messages} <= set(dask_cluster.worker_pids())
    assert synctool_leftovers(dask_cluster) == {"tasks": [], "plugins": [], "worker plugins": []}
    # Nothing changed: nothing to do.
    again = synctool.sync(str(src), f"s3://{s3_bucket}/m", dst_options=s3_server.options(),
                          scheduler=dask_cluster.address, **FAST)  # fmt: skip
    ok(again)
    assert again.copied == 0 and again.unchanged == len(FILES)


def test_s3_to_sftp_with_retention(dask_cluster, s3_server, s3_bucket, sshd_server, sftp_folder):
    client = s3_server.client()
    for name, data in FILES.items():
        client.put_object(Bucket=s3_bucket, Key=f"src/{name}", Body=data)
    sshd_server.put(sftp_folder, {"gone.txt": b"only at the destination", "top.txt": b"an older top"}, mtime=OLD)
    report = synctool.sync(f"s3://{s3_bucket}/src", sshd_server.url(sftp_folder), src_options=s3_server.options(),
                           dst_options=sshd_server.key_options(), retention=True,
                           scheduler=dask_cluster.address, **FAST)  # fmt: skip
    ok(report)
    after = read_tree(sshd_server.local(sftp_folder))
    kept = {name: data for name, data in after.items() if RETAINED.search(name)}
    assert {name: data for name, data in after.items() if name not in kept} == FILES
    assert sorted(kept.values()) == [b"an older top", b"only at the destination"]


def test_verify_contents_and_get_after_put(dask_cluster, s3_server, s3_bucket, tmp_path):
    src = tmp_path / "src"
    make_tree(src, FILES, mtime=OLD)
    url, options = f"s3://{s3_bucket}/v", s3_server.options()
    report = synctool.sync(str(src), url, dst_options=options, verify_get_after_put=True,
                           scheduler=dask_cluster.address, **FAST)  # fmt: skip
    ok(report)
    assert report.verified_after_put == len(FILES)
    # Same size and time, other bytes: only reading both sides finds it.
    (src / "top.txt").write_bytes(b"TOP")
    os.utime(src / "top.txt", (OLD, OLD))
    report = synctool.sync(str(src), url, dst_options=options, verify_contents=True,
                           scheduler=dask_cluster.address, **FAST)  # fmt: skip
    ok(report)
    assert (report.verified, report.verify_mismatches, report.copied) == (len(FILES), 1, 1)
    assert s3_objects(s3_server, s3_bucket, "v") == {**FILES, "top.txt": b"TOP"}


def test_a_worker_killed_mid_write_leaves_an_exact_mirror(dask_cluster, sshd_server, sftp_folder, tmp_path):
    src = tmp_path / "src"
    big = {f"big{i:02d}.bin": os.urandom(6 << 20) for i in range(12)}
    make_tree(src, big)
    dst = sshd_server.local(sftp_folder)

    def kill_a_worker(_) -> None:
        psutil.Process(next(iter(dask_cluster.worker_pids().values()))).send_signal(signal.SIGKILL)

    code, out, err = sync_and_meanwhile(dst, kill_a_worker, src, sshd_server.url(sftp_folder), "-y",
                                        "--scheduler", dask_cluster.address, "--dst-options", *ssh_options(sshd_server))  # fmt: skip
    assert code == 0, (out, err)
    assert "a Dask worker died holding" in err
    assert not any(text in err for text in NOT_ALLOWED), err
    assert read_tree(dst) == big
    assert temp_debris(dst) == []


def test_ctrl_c_cancels_the_tasks_and_exits_130(dask_cluster, sshd_server, sftp_folder, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {f"big{i:02d}.bin": os.urandom(4 << 20) for i in range(16)})
    sshd_server.put(sftp_folder, {"extra": b"stays: deletes come last"})
    dst = sshd_server.local(sftp_folder)
    code, out, err = sync_and_meanwhile(dst, lambda proc: os.killpg(proc.pid, signal.SIGINT), src,
                                        sshd_server.url(sftp_folder), "-y", "--scheduler", dask_cluster.address,
                                        "--dst-options", *ssh_options(sshd_server), start_new_session=True)  # fmt: skip
    assert code == 130, (out, err)
    assert "interrupted" in err
    assert not any(text in err for text in NOT_ALLOWED), err
    assert (dst / "extra").read_bytes() == b"stays: deletes come last"
    # The run's tasks and backends are gone from the cluster, and its writes were abandoned.
    wait_for(lambda: synctool_leftovers(dask_cluster) == {"tasks": [], "plugins": [], "worker plugins": []},
             "the cluster to forget the run")  # fmt: skip
    assert temp_debris(dst) == []
    assert len(read_tree(dst)) < 17


def test_a_lost_scheduler_ends_the_run_with_exit_1_and_deletes_nothing(sshd_server, sftp_folder, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {f"big{i:02d}.bin": os.urandom(4 << 20) for i in range(16)})
    sshd_server.put(sftp_folder, {"extra": b"stays"})
    dst = sshd_server.local(sftp_folder)
    with start_cluster(tmp_path / "cluster", workers=1, threads=2, nanny=False) as cluster:
        code, out, err = sync_and_meanwhile(dst, lambda _: cluster.scheduler.kill(), src, sshd_server.url(sftp_folder),
                                            "-y", "--scheduler", cluster.address, "--dst-options", *ssh_options(sshd_server))  # fmt: skip
    assert code == 1, (out, err)
    assert f"lost the connection to the Dask scheduler at {cluster.address}" in err
    assert not any(text in err for text in NOT_ALLOWED), err
    assert (dst / "extra").read_bytes() == b"stays"


def test_tls_scheduler_with_certificates(s3_server, s3_bucket, tmp_path):
    src = tmp_path / "src"
    make_tree(src, FILES)
    tls = certificate(tmp_path / "cert", client_auth=True)
    with start_cluster(tmp_path / "cluster", workers=1, threads=2, tls=tls, nanny=False) as cluster:
        assert cluster.address.startswith("tls://")
        args = [src, f"s3://{s3_bucket}/t", "-y", "--dst-options", *(f"{k}={v}" for k, v in s3_server.options().items()),
                *FAST_CLI]  # fmt: skip
        # Without Dask's TLS settings the client cannot connect: a clear error.
        refused = start_synctool(*args, "--scheduler", cluster.address)
        out, err = refused.communicate(timeout=180)
        assert refused.returncode == 1, (out, err)
        assert f"cannot reach the Dask scheduler at {cluster.address}" in err
        # With them (and the address from the environment), the run goes through.
        env = {**os.environ, **cluster.client_env(), "DASK_SCHEDULER_ADDRESS": cluster.address}
        proc = start_synctool(*args, env=env)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (out, err)
        assert "running shards on the Dask cluster at tls://" in err
    assert s3_objects(s3_server, s3_bucket, "t") == FILES


def test_secrets_stay_out_of_task_keys_specs_events_and_logs(dask_cluster, s3_server, s3_bucket, tmp_path):
    src = tmp_path / "src"
    make_tree(src, {f"f{i:03d}": os.urandom(20_000) for i in range(300)})
    secret = s3_server.secret.encode()
    seen: dict[str, bytes] = {}
    stop = threading.Event()

    def watch() -> None:
        """Take every synctool task's key and pickled spec while the run goes."""
        with dask_cluster.client() as client:
            while not stop.is_set():
                seen.update(client.run_on_scheduler(lambda dask_scheduler: {
                    str(k): pickle.dumps(ts.run_spec) for k, ts in dask_scheduler.tasks.items() if "synctool" in str(k)
                }))  # fmt: skip

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ok(synctool.sync(str(src), f"s3://{s3_bucket}/s", dst_options=s3_server.options(),
                         scheduler=dask_cluster.address, **FAST))  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert any(key.startswith("synctool-shard-") for key in seen)
    assert all(secret not in key.encode() and secret not in spec for key, spec in seen.items())
    events = synctool_events(dask_cluster)
    assert events and secret not in pickle.dumps(events)
    for log in dask_cluster.folder.glob("*.log"):
        assert secret not in log.read_bytes(), log


@pytest.mark.skipif(os.geteuid() != 0, reason="a worker with another view of the files needs a mount namespace (root)")
def test_a_worker_that_cannot_see_the_folder_is_a_clear_error(tmp_path, s3_server, s3_bucket):
    hidden = tmp_path / "hidden"
    src = hidden / "src"
    make_tree(src, FILES)
    s3_server.client().put_object(Bucket=s3_bucket, Key="h/extra", Body=b"stays")
    with start_cluster(tmp_path / "cluster", workers=1, threads=1, nanny=False) as cluster:
        # This worker sees an empty folder where the source is.
        cluster.add_workers(1, 1, prefix=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                          f'mount -t tmpfs tmpfs "{hidden}" && exec "$0" "$@"'], nanny=False)  # fmt: skip
        cluster.wait_for_workers(2)
        report = synctool.sync(str(src), f"s3://{s3_bucket}/h", dst_options=s3_server.options(),
                               scheduler=cluster.address, **FAST)  # fmt: skip
    assert report.exit_code == 1, report.to_dict()
    [error] = report.errors
    assert f"cannot open the source: folder {src} does not exist" in error
    assert "same path on every Dask worker" in error
    assert s3_objects(s3_server, s3_bucket, "h")["extra"] == b"stays"
