#!/usr/bin/env python
"""Time synctool against ``rclone sync`` on S3 routes, with a real S3 server on loopback.

    python scripts/s3_speed.py                      # every case, once each
    python scripts/s3_speed.py --cases small-up,large-up --repeat 3
    python scripts/s3_speed.py --dst-options s3-native=false   # force the boto3 path
    python scripts/s3_speed.py --baseline "s3-native=false s3-concurrency=8 s3-sign-payload=true"

It starts ``rclone serve s3`` over a tmpfs folder under /dev/shm, makes the
workloads there (5,000 x 4 KiB in 250 folders; 4 x 256 MiB), and for each
case runs synctool (the installed executable, not a shim) and rclone sync
alternately into fresh destinations, with the same number of transfers in
flight. It prints the median wall time of each and the peak memory of each
tool's whole process tree (psutil, sampled every 20 ms).

This is the S3 backend's own yardstick; scripts/bench.py is the full benchmark.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

KiB, MiB = 1 << 10, 1 << 20
SYNCTOOL = Path(sys.executable).parent / "synctool"  # the real console script
CASES = {
    # name: (workload, route)
    "small-up": ("small", "local>s3"),
    "small-down": ("small", "s3>local"),
    "small-s3s3": ("small", "s3>s3"),
    "large-up": ("large", "local>s3"),
    "large-down": ("large", "s3>local"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_workloads(root: Path) -> dict[str, Path]:
    """Random content from a fixed seed, written once."""
    import random

    rng = random.Random(1234)
    small = root / "small"
    for i in range(5000):
        path = small / f"d{i % 25:02d}" / f"e{i % 250:03d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(4 * KiB))
    large = root / "large"
    large.mkdir()
    block = rng.randbytes(MiB)
    for i in range(4):
        with open(large / f"big{i}.bin", "wb") as f:
            for j in range(256):
                # vary every MiB so no two blocks are alike
                f.write(j.to_bytes(4, "little") + i.to_bytes(4, "little") + block[8:])
    return {"small": small, "large": large}


class Server:
    """rclone serve s3 over ``data``; each top-level folder there is a bucket."""

    def __init__(self, data: Path):
        self.key = "speedKEY" + secrets.token_hex(4)
        self.secret = "speedSECRET" + secrets.token_hex(12)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["rclone", "serve", "s3", str(data), "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{self.key},{self.secret}", "--config", "/dev/null"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("rclone serve s3 did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def synctool_options(self) -> list[str]:
        return [f"s3-server-name={self.endpoint}", f"aws-access-key-id={self.key}", f"aws-secret-access-key={self.secret}"]

    def rclone_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RCLONE_CONFIG_SRV_TYPE": "s3",
            "RCLONE_CONFIG_SRV_PROVIDER": "Other",
            "RCLONE_CONFIG_SRV_ENDPOINT": self.endpoint,
            "RCLONE_CONFIG_SRV_ACCESS_KEY_ID": self.key,
            "RCLONE_CONFIG_SRV_SECRET_ACCESS_KEY": self.secret,
            "RCLONE_CONFIG_SRV_FORCE_PATH_STYLE": "true",
        }


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS of its process tree)."""
    started = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                tree = [proc, *proc.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return elapsed, peak


def same_tree(a: Path, b: Path) -> bool:
    def files(root: Path) -> dict[str, int]:
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}

    fa, fb = files(a), files(b)
    if fa != fb:
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in list(fa)[:: max(1, len(fa) // 50)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--transfers", type=int, default=0, help="rclone --transfers (default: workers x synctool's S3 concurrency)")
    ap.add_argument("--dst-options", default="", help="extra synctool destination options, space-separated key=value")
    ap.add_argument("--src-options", default="", help="extra synctool source options")
    ap.add_argument("--only", choices=("synctool", "rclone"), default=None)
    ap.add_argument("--baseline", default=None, metavar="OPTIONS",
                    help="also run synctool with these S3 options on both sides (a before/after in one run)")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from synctool.backends import BackendSpec
    from synctool.backends.s3 import S3Backend

    # rclone gets as many transfers in flight as synctool's workers x jobs each
    probe = S3Backend(BackendSpec("s3://b", {"s3-server-name": "http://127.0.0.1:1", **dict(
        o.split("=", 1) for o in args.dst_options.split())}))
    transfers = args.transfers or args.workers * probe.concurrency
    base = Path(tempfile.mkdtemp(prefix="s3speed-", dir="/dev/shm"))
    try:
        print(f"workloads in {base} ...", file=sys.stderr)
        loads = make_workloads(base / "src")
        data = base / "s3"
        # Source buckets are plain folders under the served root, made before
        # the server starts so its directory cache sees them.
        for name, path in loads.items():
            shutil.copytree(path, data / f"src-{name}")
        server = Server(data)
        try:
            rows = run_cases(args, server, loads, base, transfers)
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{os.cpu_count()} CPUs, rclone serve s3 on loopback, {args.workers} workers, rclone --transfers {transfers}")
    if args.baseline:
        print(f"baseline: synctool with {args.baseline}")
    fmt = lambda v, spec: format(v, spec) if v else "-"  # noqa: E731
    print(f"{'case':<12} {'synctool s':>10} {'baseline s':>10} {'rclone s':>9} {'ratio':>6} "
          f"{'synctool MiB':>13} {'baseline MiB':>13} {'rclone MiB':>11}")
    for name, t, m in rows:
        ratio = f"{t['synctool'] / t['rclone']:.2f}" if t["synctool"] and t["rclone"] else "-"
        print(f"{name:<12} {fmt(t['synctool'], '10.2f')} {fmt(t['baseline'], '10.2f')} {fmt(t['rclone'], '9.2f')} {ratio:>6} "
              f"{fmt(m['synctool'] / MiB, '13.0f')} {fmt(m['baseline'] / MiB, '13.0f')} {fmt(m['rclone'] / MiB, '11.0f')}")


def run_cases(args, server: Server, loads: dict[str, Path], base: Path, transfers: int) -> list:
    rows = []
    counter = iter(range(10**6))
    opts = server.synctool_options()
    for case in args.cases.split(","):
        workload, route = CASES[case]
        src_kind, dst_kind = route.split(">")
        tools = ["synctool", "rclone"] + (["baseline"] if args.baseline else [])
        times: dict[str, list[float]] = {t: [] for t in ("synctool", "baseline", "rclone")}
        peaks: dict[str, int] = {t: 0 for t in ("synctool", "baseline", "rclone")}
        for _ in range(args.repeat):
            for tool in tools:
                if args.only and tool != args.only:
                    continue
                n = next(counter)
                if src_kind == "local":
                    src_st, src_rc = str(loads[workload]), str(loads[workload])
                else:
                    src_st, src_rc = f"s3://src-{workload}", f"srv:src-{workload}"
                if dst_kind == "local":
                    out = base / f"out{n}"
                    dst_st = dst_rc = str(out)
                else:
                    bucket = f"dst{n}"
                    dst_st, dst_rc = f"s3://{bucket}/m", f"srv:{bucket}/m"
                if tool != "rclone":
                    extra = args.baseline.split() if tool == "baseline" else []
                    cmd = [str(SYNCTOOL), src_st, dst_st, "--confirm", "--workers", str(args.workers), "--log-level", "Warning"]
                    if src_kind == "s3":
                        cmd += ["--src-options", *opts, *args.src_options.split(), *extra]
                    if dst_kind == "s3":
                        cmd += ["--dst-options", *opts, *args.dst_options.split(), *extra]
                    elapsed, peak = timed(cmd)
                else:
                    cmd = ["rclone", "sync", src_rc, dst_rc, "--config", "/dev/null",
                           "--transfers", str(transfers), "--checkers", str(transfers)]
                    elapsed, peak = timed(cmd, env=server.rclone_env())
                times[tool].append(elapsed)
                peaks[tool] = max(peaks[tool], peak)
                if dst_kind == "local":
                    if not same_tree(loads[workload], out):
                        raise SystemExit(f"{tool} {case}: the destination differs from the source")
                    shutil.rmtree(out)
                else:
                    # check the mirror through the server's folder, then free the tmpfs
                    if not same_tree(loads[workload], base / "s3" / bucket / "m"):
                        raise SystemExit(f"{tool} {case}: the destination differs from the source")
                    shutil.rmtree(base / "s3" / bucket)
                print(f"{case} {tool}: {elapsed:.2f} s, peak {peak / MiB:.0f} MiB", file=sys.stderr)
        med = {t: statistics.median(v) if v else 0.0 for t, v in times.items()}
        rows.append((case, med, peaks))
    return rows


if __name__ == "__main__":
    main()
