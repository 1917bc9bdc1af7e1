"""Worker memory stays flat on a large file, and a killed worker is replaced.

Both run the real ``synctool`` console script, so its worker processes are
forks of a small coordinator, not of the test process (whose memory a fork
would inherit and count).
"""

from __future__ import annotations

import json
import shutil
import threading

import psutil
import pytest

from tests.helpers import (
    FAST_CLI,
    start_synctool,
    sync_losing_a_worker,
    temp_debris,
    tree_digests,
    write_big_file,
)

LIMIT = 100 << 20


class PeakWatcher(threading.Thread):
    """Sample the RSS of every worker (child of the coordinator ``pid``) every 20 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.coordinator = psutil.Process(pid)
        self.peaks: dict[int, int] = {}
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                workers = self.coordinator.children(recursive=True)
            except psutil.Error:
                return
            for proc in workers:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[proc.pid] = max(rss, self.peaks.get(proc.pid, 0))
                self.samples += 1


@pytest.mark.slow
def test_300_mib_file_with_get_after_put_keeps_every_worker_under_100_mib(tmp_path):
    src, dst, report = tmp_path / "src", tmp_path / "dst", tmp_path / "report.json"
    src.mkdir()
    write_big_file(src / "big.bin", 300 << 20)
    try:
        proc = start_synctool(src, dst, "-y", *FAST_CLI, "--verify-get-after-put", "--report", report)
        watcher = PeakWatcher(proc.pid)
        watcher.start()
        out, err = proc.communicate(timeout=120)
        watcher.done.set()
        watcher.join()

        assert proc.returncode == 0, (out, err)
        assert watcher.samples > 10 and watcher.peaks, "no worker was ever seen"
        for pid, peak in watcher.peaks.items():
            assert peak < LIMIT, f"worker {pid} peaked at {peak / 2**20:.0f} MiB"
        figures = json.loads(report.read_text())
        assert figures["copied_bytes"] == 300 << 20 and figures["verified_after_put"] == 1
        assert 0 < figures["worker_peak_rss"] < LIMIT
        assert tree_digests(dst) == tree_digests(src)
    finally:
        shutil.rmtree(src)
        shutil.rmtree(dst, ignore_errors=True)


def test_a_killed_worker_is_replaced_and_its_jobs_requeued(tmp_path):
    src, dst, report = tmp_path / "src", tmp_path / "dst", tmp_path / "report.json"
    src.mkdir()
    for i in range(120):
        write_big_file(src / f"f{i:03}.bin", (2 << 20) + i, seed=i)
    victim, _ = sync_losing_a_worker(
        lambda: dst.is_dir() and temp_debris(dst),  # a copy is under way
        src, dst, "-y", *FAST_CLI, "--verify-get-after-put", "--report", report,
    )  # fmt: skip
    figures = json.loads(report.read_text())
    assert figures["copied"] == 120 and figures["failed"] == []
    assert figures["retries"] >= 1  # the dead worker's jobs came back
    assert tree_digests(dst) == tree_digests(src)  # no debris of the killed write either
    assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE
