"""CPU that an SFTP upload and its read-back cost, on the client and in sshd.

    python scripts/sftp_cost.py                 # 256 MiB, read back 3 times
    python scripts/sftp_cost.py --mib 1024 --reads 5

It starts OpenSSH's sshd on loopback over a tmpfs folder, writes one file of
random bytes through synctool's SFTP backend (hashing it as a sync does),
then reads it back and hashes it as --verify-get-after-put does. For each
phase it prints the wall time, this process's user and system CPU, and the
CPU of sshd's processes. A read-back that costs the client and sshd together
more than 30% of what the upload cost cannot stay within 1.3x of the upload's
time on a machine where both share the cores, however the work is spread.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.servers import openssh_sftp
from synctool.backends import BackendSpec, open_backend
from workers.transfer import hash_stream, new_hasher

MiB = 1 << 20


def _client_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _tree_cpu(pid: int) -> float:
    total = 0.0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass  # a session process that ended between the listing and the read
    return total


def _hashed(data: bytes, step: int = MiB):
    """``data`` in chunks, hashed on the way as a sync hashes what it sends."""
    hasher, view = new_hasher(len(data)), memoryview(data)
    for i in range(0, len(view), step):
        hasher.update(view[i : i + step])
        yield view[i : i + step]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size [256]")
    parser.add_argument("--reads", type=int, default=3, help="read-backs to time [3]")
    args = parser.parse_args()

    data = os.urandom(args.mib * MiB)
    run = Path("/dev/shm") / f"synctool-sftp-cost-{os.getpid()}"
    run.mkdir()
    try:
        with openssh_sftp(run / "sshd") as server:
            spec = BackendSpec(server.url(str(run / "dst")), server.synctool_options())
            with open_backend(spec) as backend:
                backend.prepare(True)
                totals = {}
                for phase in ["write"] + ["read"] * args.reads:
                    cpu0, sshd0, t0 = (
                        _client_cpu(),
                        _tree_cpu(server.proc.pid),
                        time.perf_counter(),
                    )
                    if phase == "write":
                        backend.write("f", _hashed(data), len(data))
                    else:
                        _, got = hash_stream(
                            backend.read_sized("f", len(data)),
                            len(data),
                            threading.Event(),
                        )
                        assert got == len(data)
                    wall = time.perf_counter() - t0
                    cpu1, sshd1 = _client_cpu(), _tree_cpu(server.proc.pid)
                    user, system, sshd = (
                        cpu1[0] - cpu0[0],
                        cpu1[1] - cpu0[1],
                        sshd1 - sshd0,
                    )
                    totals.setdefault(phase, []).append(user + system + sshd)
                    print(
                        f"{phase:5s} wall {wall:5.2f} s  client user {user:5.2f} sys {system:5.2f}  sshd {sshd:5.2f} CPU-s"
                    )
                write, read = totals["write"][0], min(totals["read"])
                print(f"read-back CPU / upload CPU (client + sshd): {read / write:.2f}")
    finally:
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
