"""Small helpers shared by the tests: build folder trees and read them back."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from scripts.servers import LOOPBACK, real_executable
from synctool.errors import ExitCode

# Library options for a quick run: retries do not wait, two workers even on one CPU.
FAST = {"retry_delay": 0.01, "workers": 2}
OLD = 1_500_000_000.0  # a source mtime well in the past
RETAINED = re.compile(r"(^|/)\d{14}\.old\.")  # a retention name: <yyyyMMddHHmmss>.old.<name>
# A small tree with the names that trip backends up: empty, spaces, unicode, deep.
SAMPLE_FILES = {
    "a.txt": b"alpha",
    "empty": b"",
    "dir with spaces/ünïcödé ファイル.bin": b"u" * 3000,
    "deep/er/and/deeper/leaf": b"leaf",
}


def ok(report) -> None:
    """The run succeeded; else show its whole report."""
    assert report.exit_code == ExitCode.SUCCESS, report.to_dict()


# The console script itself (not a pyenv shim), and command-line options for a
# quick run: two workers, retries that do not wait.
SYNCTOOL = real_executable("synctool")
FAST_CLI = ["--workers", "2", "--backend-retry-delay", "10ms"]


def start_synctool(*args, **popen) -> subprocess.Popen:
    """Start ``synctool ARGS`` with no stdin and its output captured as text."""
    return subprocess.Popen(
        [SYNCTOOL, *map(str, args)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip


def without_root_overrides(command: list[str]) -> list[str]:
    """``command`` run so that file modes bind it: root reads and writes
    through them, unless it lacks these two capabilities."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 20.0, poll: float = 0.01) -> None:
    """Poll ``predicate`` while synctool ``proc`` runs: fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "synctool ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def sync_losing_a_worker(under_way, *args) -> tuple[psutil.Process, str]:
    """Run ``synctool ARGS`` and SIGKILL one of its workers (as the OOM killer
    would) once ``under_way()`` holds; assert that the run noticed and still
    succeeded. Returns the killed worker and the run's stderr."""
    proc = start_synctool(*args)
    try:
        wait_until(under_way, proc)
        victim = psutil.Process(proc.pid).children()[0]
        victim.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out, err)
    assert f"(process {victim.pid}) died (signal {int(signal.SIGKILL)})" in err
    return victim, err


def stop_synctool(proc: subprocess.Popen, sig: int, moment=lambda: True, poll: float = 0.01) -> tuple[str, str]:
    """Once ``moment()`` holds, send ``sig`` to synctool ``proc`` (started in
    its own session) as a user would: SIGINT to the whole process group, as
    Ctrl-C does; SIGTERM to synctool alone, as ``kill`` does. Its (stdout, stderr)."""
    try:
        wait_until(moment, proc, poll=poll)
        (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def interrupt_when(moment, proc: subprocess.Popen, sig: int, poll: float = 0.01) -> None:
    """Once ``moment()`` holds and workers run, stop synctool ``proc`` with
    ``sig`` (see stop_synctool). The run must end as interrupted, cleanly: no
    worker left running, no traceback."""
    workers: list[psutil.Process] = []

    def workers_started() -> bool:
        if not moment():
            return False
        workers.extend(psutil.Process(proc.pid).children(recursive=True))
        assert workers
        return True

    out, err = stop_synctool(proc, sig, workers_started, poll)
    assert proc.returncode == ExitCode.INTERRUPTED, (out, err)
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"worker processes left running: {alive}"
    assert "Traceback" not in err, err


def read_to_its_end(proc: subprocess.Popen, source: pathlib.Path, began=None):
    """A moment for :func:`interrupt_when`: a worker of ``proc`` has read the
    file ``source`` to its end, whatever it has sent of it yet. A worker
    closes the file at its end: seen open once, then no more (the read
    takes tens of milliseconds: poll often). With ``began`` (the write has
    begun: an upload exists), a reading before it (a file hashed before
    its upload) does not count, and the file closed once it holds is the end."""
    target, seen_open = str(source), [False]

    def moment() -> bool:
        try:
            open_now = any(f.path == target for w in psutil.Process(proc.pid).children() for f in w.open_files())
        except psutil.NoSuchProcess:
            return False
        if began is not None:
            return not open_now and began()
        seen_open[0] = seen_open[0] or open_now
        return seen_open[0] and not open_now

    return moment


class SlowUplink:
    """A loopback TCP relay to a real server that passes what clients send at
    ``rate`` bytes a second, all connections together (answers pass at full
    speed): an upload stays on its way long enough for a test to act."""

    def __init__(self, port: int, rate: float):
        self.target, self.rate = port, rate
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.next_free = time.monotonic()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection((LOOPBACK, self.target))
            except OSError:
                return  # closed
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(65536):
                if slow:
                    with self.lock:  # each piece takes its own slot of time after the last
                        self.next_free = max(self.next_free, time.monotonic()) + len(data) / self.rate
                        due = self.next_free
                    time.sleep(max(0.0, due - time.monotonic()))
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        for s in self.sockets:
            # A bare close leaves a socket open while a pump thread waits on
            # it; shutting it down wakes the thread and ends the connection.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def __enter__(self) -> "SlowUplink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kill_when(moment, server, restart_after: float | None, never: str):
    """In the background: kill ``server`` once ``moment()`` holds, and start it
    again ``restart_after`` seconds later (None: leave it down). The future
    fails with ``never`` if that moment does not come within 30 s."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not moment():
            assert time.monotonic() < deadline, never
            time.sleep(0.002)
        server.kill()
        if restart_after is not None:
            time.sleep(restart_after)
            server.start()

    executor = ThreadPoolExecutor(1)
    future = executor.submit(watch)
    executor.shutdown(wait=False)
    return future


def make_tree(root: pathlib.Path, files: dict[str, bytes], mtime: float | None = None) -> None:
    """Write ``files`` (relative name -> content) below ``root``."""
    for name, data in files.items():
        path = root.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def read_tree(root: pathlib.Path) -> dict[str, bytes]:
    """Every regular file below ``root`` as relative name -> content."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def temp_debris(root: pathlib.Path) -> list[pathlib.Path]:
    """Temporary files of unfinished writes (``.synctool-*.tmp``) anywhere below ``root``."""
    return sorted(root.rglob(".synctool-*.tmp"))


def a_temp_file_grew(root: pathlib.Path, size: int) -> bool:
    """Whether a temporary file below ``root`` holds more than ``size`` bytes
    (while a run renames and removes them under our eyes)."""
    try:
        debris = temp_debris(root)
    except OSError:
        return False
    for path in debris:
        try:
            if path.stat().st_size > size:
                return True
        except OSError:
            pass  # renamed into place or removed while we looked
    return False


def write_big_file(path: pathlib.Path, size: int, seed: int = 0, block: int = 1 << 20) -> None:
    """Write ``size`` bytes fast: one random block, each copy stamped with its index and ``seed``.

    No two blocks are equal (so a misplaced chunk changes the hash), and it
    costs one urandom call instead of ``size`` bytes of randomness.
    """
    pattern = bytearray(os.urandom(block))
    with open(path, "wb") as f:
        for index, offset in enumerate(range(0, size, block)):
            pattern[:16] = index.to_bytes(8, "little") + seed.to_bytes(8, "little")
            f.write(memoryview(pattern)[: size - offset])


def tree_digests(root: pathlib.Path) -> dict[str, str]:
    """Every regular file below ``root`` as relative name -> SHA-256, read in chunks (for big trees)."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[path.relative_to(root).as_posix()] = digest.hexdigest()
    return out


def roundtrip(spec, name: str = "f.txt", data: bytes = b"hello") -> list[str]:
    """Log in, write a file (dated OLD), read it back; the names listed afterwards."""
    from synctool.backends import open_backend

    with open_backend(spec) as b:
        b.prepare(create=True)
        b.write(name, iter([data]), len(data), mtime=OLD)
        assert b"".join(b.read(name)) == data
        return sorted(e.name for e in b.list())


def refused(spec) -> str:
    """The message of the FatalBackendError that connecting to ``spec`` raises."""
    import pytest

    from synctool.backends import open_backend
    from synctool.backends.base import FatalBackendError

    with pytest.raises(FatalBackendError) as info:
        with open_backend(spec) as b:
            b.prepare(create=True)
    return str(info.value)


def open_uploads(client, bucket: str) -> list[dict]:
    """Multipart uploads still open in ``bucket`` (``client``: boto3's).

    rclone serve s3 answers NoSuchUpload instead of an empty list for a bucket
    in which nothing was uploaded in parts since it (re)started.
    """
    try:
        return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except client.exceptions.NoSuchUpload:
        return []
