"""The real ``synctool`` console script and ``python -m synctool``, run as subprocesses.

Usage errors, unknown schemes and missing folders are rows of tests/test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import psutil
import pytest

import synctool
from tests.helpers import FAST_CLI as FAST
from tests.helpers import (
    make_tree,
    read_tree,
    temp_debris,
    tree_digests,
    wait_until,
    write_big_file,
)

SYNCTOOL = shutil.which("synctool") or pytest.fail("the synctool console script is not installed")
FILES = {"a.txt": b"alpha", "empty": b"", "dir with spaces/ünïcödé.bin": os.urandom(5000), "d/e/f/g": b"deep"}


def run(*args, stdin=subprocess.DEVNULL, timeout=60, module=False):
    cmd = [sys.executable, "-m", "synctool"] if module else [SYNCTOOL]
    return subprocess.run(
        [*cmd, *map(str, args)], stdin=stdin, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    make_tree(root, FILES)
    return root


@pytest.mark.parametrize("module", [False, True], ids=["script", "module"])
def test_version(module):
    p = run("--version", module=module)
    assert p.returncode == 0
    assert p.stdout.strip() == f"synctool {synctool.__version__}"


@pytest.mark.parametrize("flag", ["-h", "-?", "--help"])
def test_help_lists_options_and_exit_codes(flag):
    p = run(flag)
    assert p.returncode == 0, p.stderr
    for text in ("SOURCE", "DESTINATION", "--retention", "--verify-get-after-put", "Exit codes", "130"):
        assert text in p.stdout


def test_help_through_python_m():
    p = run("--help", module=True)
    assert p.returncode == 0 and "Exit codes" in p.stdout


def test_sync_writes_report_and_appends_to_a_private_log_file(tmp_path, src):
    dst, report, log = tmp_path / "dst", tmp_path / "out" / "report.json", tmp_path / "logs" / "sub" / "run.log"
    p = run(src, dst, "-y", "--report", report, "--log-file", log, *FAST)
    assert p.returncode == 0, p.stderr
    assert read_tree(dst) == FILES
    assert "Copied 4 file(s)" in p.stdout
    figures = json.loads(report.read_text())
    assert figures["copied"] == 4 and figures["copied_bytes"] == sum(map(len, FILES.values()))
    assert figures["exit_code"] == 0 and figures["failed"] == [] and figures["worker_peak_rss"] > 0
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    first = log.read_text()
    assert "listed 4 file(s)" in first

    p = run(src, dst, "-y", "--report", report, "--log-file", log, *FAST)
    assert p.returncode == 0, p.stderr
    assert json.loads(report.read_text())["copied"] == 0  # mtimes kept: nothing to do
    second = log.read_text()
    assert second.startswith(first) and second.count("listed 4 file(s)") == 2  # appended


def test_python_m_synctool_syncs(tmp_path, src):
    p = run(src, tmp_path / "dst", "--yes", *FAST, module=True)
    assert p.returncode == 0, p.stderr
    assert read_tree(tmp_path / "dst") == FILES


def test_without_yes_and_no_terminal_nothing_is_written(tmp_path, src):
    dst = tmp_path / "dst"
    make_tree(dst, {"extra": b"stays", "a.txt": b"other"})
    before = read_tree(dst)
    p = run(src, dst, *FAST)
    assert p.returncode == 4, p.stderr
    assert "-y" in p.stdout + p.stderr
    assert read_tree(dst) == before and not temp_debris(dst)
    assert read_tree(src) == FILES


def test_a_source_file_that_keeps_growing_fails_with_exit_3(tmp_path, src):
    growing = src / "growing.log"
    growing.write_bytes(b"x" * 100_000)
    stop = threading.Event()

    def append() -> None:
        with open(growing, "ab") as f:
            while not stop.is_set():
                f.write(b"more\n")
                f.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        p = run(src, tmp_path / "dst", "-y", "--report", tmp_path / "r.json", *FAST)
    finally:
        stop.set()
        writer.join()
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert p.stderr.count("ERROR: growing.log: source changed") == 1, p.stderr
    assert "growing.log" not in p.stdout and "failed 1" in p.stdout
    figures = json.loads((tmp_path / "r.json").read_text())
    assert [f["name"] for f in figures["failed"]] == ["growing.log"]
    assert figures["retries"] == 3  # the default --retry
    assert read_tree(tmp_path / "dst") == FILES  # the others made it; no half file
    assert not temp_debris(tmp_path / "dst")


def test_dry_run_from_global_options_and_explicit_flags_win(tmp_path, src):
    dst, glog, own = tmp_path / "dst", tmp_path / "global.log", tmp_path / "own.log"
    p = run(src, dst, "-y", "--global-options", "dry-run=true", f"log-file={glog}", *FAST)
    assert p.returncode == 0, p.stderr
    assert "Would copy 4 file(s)" in p.stdout
    assert not dst.exists() and "would copy" in glog.read_text()

    # An explicit --log-file wins over the global key; -d wins over dry-run=false.
    p = run(src, dst, "-y", "-d", "--global-options", "dry-run=false", f"log-file={glog}", "--log-file", own, *FAST)
    assert p.returncode == 0, p.stderr
    assert not dst.exists()
    assert "would copy" in own.read_text() and glog.read_text().count("listed 4 file(s)") == 1

    p = run(src, dst, "-y", "--global-options", "dry-run=false", *FAST)
    assert p.returncode == 0 and read_tree(dst) == FILES


@pytest.mark.slow
def test_sigint_and_sigterm_stop_workers_and_remove_temporary_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_big_file(src / "big0", 256 << 20)
    for i in (1, 2):  # same bytes, three files: the copy is long, the set-up short
        os.link(src / "big0", src / f"big{i}")
    expected = tree_digests(src)
    try:
        # Ctrl-C reaches the whole process group; `kill` only the coordinator.
        for sig, to_group in ((signal.SIGINT, True), (signal.SIGTERM, False)):
            dst = tmp_path / f"dst-{sig.name}"
            proc = subprocess.Popen(
                [SYNCTOOL, src, dst, "-y", *FAST],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, start_new_session=True,
            )
            try:
                wait_until(lambda: dst.is_dir() and temp_debris(dst), proc)
                workers = psutil.Process(proc.pid).children(recursive=True)
                assert workers
                (os.killpg if to_group else os.kill)(proc.pid, sig)
                out, err = proc.communicate(timeout=10)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            assert proc.returncode == 130, (sig, out, err)
            gone, alive = psutil.wait_procs(workers, timeout=5)
            assert not alive, f"{sig.name}: worker processes left running: {alive}"
            assert not temp_debris(dst), (sig.name, out, err)
            assert "Traceback" not in err, err

            p = run(src, dst, "-y", *FAST)
            assert p.returncode == 0, p.stderr
            assert tree_digests(dst) == expected
            shutil.rmtree(dst)
    finally:
        shutil.rmtree(src)


def run_console(script: str) -> subprocess.CompletedProcess:
    """Run the console entry point in a fresh interpreter, after ``script`` has replaced parts of it."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_outside_the_run_s_own_handling_still_exits_130(sig):
    """A stop signal that lands as main() hands back its result, outside the
    run's own handling, exits 130 with no traceback: left to Python, the
    process would end killed by SIGINT, even after a SIGTERM."""
    script = (
        "import os, signal; from synctool.cli import console, main as cli; "
        f"cli.main = lambda argv=None: os.kill(os.getpid(), {int(sig)}) or 0; "
        "console.entry()"
    )
    p = run_console(script)
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_caught_inside_exec_d_code_keeps_the_exit_code_under_python_m(sig, tmp_path):
    """A stop that lands in code built by exec() of a string (dataclasses do
    that while a module imports) and is caught still ends with the run's
    exit code. CPython notes such an interrupt as unhandled, and a program
    run with ``python -m`` (how the stress run starts synctool) would end
    killed by SIGINT; run with ``-c`` or as a script, the note goes unread."""
    (tmp_path / "stopped_in_exec.py").write_text(
        "from synctool.cli import console, main as cli\n"
        "def fake_main(argv=None):\n"
        "    try:\n"
        f"        exec('import os, signal\\nos.kill(os.getpid(), {int(sig)})\\nfor _ in range(3): pass')\n"
        "    except KeyboardInterrupt:\n"
        "        return 130\n"
        "    return 0\n"
        "cli.main = fake_main\n"
        "console.entry()\n"
    )
    p = subprocess.run([sys.executable, "-m", "stopped_in_exec"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr) == (130, "")


def test_a_signal_after_the_run_leaves_its_exit_code():
    """Once the run is over, a late signal changes nothing: the exit code is the run's."""
    script = (
        "import os, signal; from synctool.cli import console, main as cli; "
        "cli.main = lambda argv=None: 3; "
        "real = console._ignore_stop_signals; "
        "console._ignore_stop_signals = lambda: (real(), os.kill(os.getpid(), signal.SIGTERM), os.kill(os.getpid(), signal.SIGINT)); "
        "console.entry()"
    )
    assert run_console(script).returncode == 3


def test_a_signal_inside_a_weakref_callback_is_not_lost():
    """A Ctrl-C that lands inside a weak reference's callback (importlib's
    module locks have one) would print "Exception ignored" and be forgotten;
    it still ends the run with 130 and prints nothing."""
    script = (
        "import gc, os, signal, time, weakref; from synctool.cli import console, main as cli\n"
        "class Thing: pass\n"
        "def callback(ref): os.kill(os.getpid(), signal.SIGINT)\n"
        "def fake_main(argv=None):\n"
        "    thing = Thing(); ref = weakref.ref(thing, callback)\n"
        "    try:\n"
        "        del thing; gc.collect()\n"
        "        time.sleep(30)\n"
        "    except KeyboardInterrupt:\n"
        "        return 130\n"
        "    return 0\n"
        "cli.main = fake_main\n"
        "console.entry()\n"
    )
    p = run_console(script)
    assert (p.returncode, p.stderr) == (130, "")
