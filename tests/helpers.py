"""Small helpers shared by the tests: build folder trees and read them back."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from scripts.servers import real_executable
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


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Poll ``predicate`` while synctool ``proc`` runs: fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "synctool ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sync_losing_a_worker(under_way, *args) -> psutil.Process:
    """Run ``synctool ARGS`` and SIGKILL one of its workers (as the OOM killer
    would) once ``under_way()`` holds; assert that the run noticed and still
    succeeded. Returns the killed worker."""
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
    return victim


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
