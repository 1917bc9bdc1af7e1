"""Ctrl-C or SIGTERM at any moment of a run ends it quietly: exit 130, no traceback.

Thousands of small files keep hundreds of jobs queued on each worker's
threads and keep results, logins and imports in flight: the moments where a
stop signal used to print a traceback (one per queued job), end in another
error, or leave a worker running. Each test syncs a tree of small files with
the real console script against the real servers, and stops one run after
another at seeded random moments, between the program taking the signals and
the end of a whole run: Ctrl-C to the process group, as a terminal sends it,
or SIGTERM to synctool alone, as ``kill`` does. Before the program has run
its first line, Python itself answers a signal (with a traceback for Ctrl-C
while ``site`` is imported), and no program can change that.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from scripts.servers import takes_sigterm
from tests.helpers import FAST_CLI, make_tree, start_synctool, stop_synctool, temp_debris

FILES = 2000
INTERRUPTS = 5
NOT_ALLOWED = ("Traceback", "exception calling callback", "Exception ignored")
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_ssh_environment(no_ssh_environment):
    """No known_hosts and no agent of the person running the tests."""


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("small") / "src"
    make_tree(root, {f"d{i % 20:02d}/f{i:05d}.bin": rng.randbytes(rng.randint(100, 3000)) for i in range(FILES)})
    return root


def run_whole(args: list) -> float:
    """Run synctool to its end; its length in seconds."""
    started = time.monotonic()
    proc = start_synctool(*args, *FAST_CLI)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out, err)
    assert not any(text in err for text in NOT_ALLOWED), err
    return time.monotonic() - started


def run_and_stop(args: list, sig: signal.Signals, at: float) -> tuple[int, str, list[psutil.Process], bool]:
    """Start synctool, send ``sig`` ``at`` seconds after it takes signals; (exit code, stderr, workers, sent)."""
    proc = start_synctool(*args, *FAST_CLI, start_new_session=True)
    workers: dict[int, psutil.Process] = {}
    sent = False
    try:
        while not takes_sigterm(proc.pid) and proc.poll() is None:
            time.sleep(0.001)
        deadline = time.monotonic() + at
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                workers.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
            time.sleep(0.01)
        if proc.poll() is None:
            (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
            sent = True
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err, list(workers.values()), sent


def stop_at_random_moments(seed: int, args_for: Callable[[str], list], copied: Callable[[str], int], debris: Callable[[str], list]) -> None:
    """Interrupt INTERRUPTS runs into fresh destinations; collect every way one went wrong, then fail."""
    rng = random.Random(seed)
    whole = run_whole(args_for("whole"))
    assert copied("whole") == FILES
    problems = []
    for n in range(INTERRUPTS):
        run = f"run{n}"
        sig = rng.choice((signal.SIGINT, signal.SIGTERM))
        at = rng.uniform(0, whole)
        code, err, workers, sent = run_and_stop(args_for(run), sig, at)
        what = f"{sig.name} at {at:.2f} s"
        shown = [text for text in NOT_ALLOWED if text in err]
        if shown:
            problems.append(f"{what}: stderr holds {shown}:\n{err[:3000]}")
        if code not in (0, 130):
            problems.append(f"{what}: exit code {code}:\n{err[-2000:]}")
        if code == 0 and copied(run) != FILES:
            problems.append(f"{what}: exit code 0 with {copied(run)} of {FILES} files copied")
        if not sent and code != 0:
            problems.append(f"{what}: the run ended by itself with exit code {code}")
        _, alive = psutil.wait_procs(workers, timeout=5)
        if alive:
            problems.append(f"{what}: worker processes outlived the run: {alive}")
            for p in alive:
                p.kill()
        if left := debris(run):
            problems.append(f"{what}: temporary files left: {left[:3]}")
    assert not problems, "\n\n".join(problems)


@pytest.mark.slow
def test_local_to_s3(small_files, s3_server, s3_bucket):
    dst = [f"{k}={v}" for k, v in s3_server.options().items()]
    stop_at_random_moments(
        1,
        lambda run: [small_files, f"s3://{s3_bucket}/{run}", "-y", "--dst-options", *dst],
        lambda run: len(s3_server.keys_under(s3_bucket, f"{run}/")),
        lambda run: [],  # a small file is one PUT: S3 holds all of it or nothing
    )


@pytest.fixture
def sshd_folder(sshd_server, sftp_folder):
    yield sftp_folder
    shutil.rmtree(sshd_server.local(sftp_folder), ignore_errors=True)


def count_files(root) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


@pytest.mark.slow
def test_local_to_sftp(small_files, sshd_server, sshd_folder):
    dst = [f"{k}={v}" for k, v in sshd_server.key_options().items()]
    stop_at_random_moments(
        2,
        lambda run: [small_files, sshd_server.url(f"{sshd_folder}/{run}"), "-y", "--dst-options", *dst],
        lambda run: count_files(sshd_server.local(f"{sshd_folder}/{run}")),
        lambda run: temp_debris(sshd_server.local(f"{sshd_folder}/{run}")),
    )


@pytest.mark.slow
def test_s3_to_sftp(small_files, s3_server, s3_bucket, sshd_server, sshd_folder):
    s3 = [f"{k}={v}" for k, v in s3_server.options().items()]
    run_whole([small_files, f"s3://{s3_bucket}/source", "-y", "--dst-options", *s3])
    dst = [f"{k}={v}" for k, v in sshd_server.key_options().items()]
    stop_at_random_moments(
        3,
        lambda run: [f"s3://{s3_bucket}/source", sshd_server.url(f"{sshd_folder}/{run}"), "-y",
                     "--src-options", *s3, "--dst-options", *dst],  # fmt: skip
        lambda run: count_files(sshd_server.local(f"{sshd_folder}/{run}")),
        lambda run: temp_debris(sshd_server.local(f"{sshd_folder}/{run}")),
    )


def console_entry() -> tuple[str, str]:
    """The module and function the ``synctool`` console script runs, as pyproject.toml names them."""
    found = re.search(r'^synctool = "(.+):(.+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert found, "pyproject.toml names no synctool console script"
    return found[1], found[2]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_signal_while_the_command_line_is_imported(tmp_path, sig):
    """The console script takes the signals before it imports the command line
    (click, the coordinator, the backends: a good part of a second on a busy
    machine), and a signal during those imports exits 130 without a traceback."""
    module, function = console_entry()
    heavy = {"click", "synctool.coordinator", "multiprocess", "boto3", "paramiko"}
    probe = f"import sys, {module}; print(sorted(set(sys.modules) & {heavy!r}))"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.stdout.strip() == "[]", (p.stdout, p.stderr)

    (tmp_path / "src").mkdir()
    rng = random.Random(int(sig))
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", f"from {module} import {function}; {function}()", tmp_path / "src", tmp_path / "dst", "-y"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            while not takes_sigterm(proc.pid) and proc.poll() is None:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.03))  # inside the imports
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # 0: the run, with nothing to copy, was over before the signal.
        assert proc.returncode in (0, 130), (proc.returncode, err)
        assert not any(text in err for text in NOT_ALLOWED), err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_signal_while_an_ssh_server_keeps_silent(tmp_path, sig):
    """Stopped while waiting for an SSH server's greeting, synctool says it
    was interrupted and nothing more: paramiko's own thread, whose socket the
    stop closes under it, does not get to print its failure as well."""
    (tmp_path / "src").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(60)
        url = f"ssh://nobody@127.0.0.1:{silent.getsockname()[1]}/dst"
        args = [tmp_path / "src", url, "-y", "--dst-options", "ssh-accept-any-fingerprints=true"]
        proc = start_synctool(*args, *FAST_CLI, start_new_session=True)
        connection, _ = silent.accept()  # synctool has dialled and waits for the greeting
        with connection:
            time.sleep(0.2)
            _, err = stop_synctool(proc, sig)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["ERROR: interrupted before anything was changed"], err
