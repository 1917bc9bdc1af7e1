#!/usr/bin/env python
"""synctool against ``rclone sync``, side by side, on real servers over loopback.

    python scripts/bench.py                         # everything, 3 runs each (long)
    python scripts/bench.py --quick                 # small workloads: checks the script
    python scripts/bench.py --routes local-s3 --workloads small --cases full,noop --repeat 5
    python scripts/bench.py --defaults --rtt 40 --routes local-s3,local-sftp,s3-sftp --cases full,noop

For each route (local-local, local-s3, local-sftp, s3-sftp, local-ftp, local-webdav), workload (small,
large, mixed) and case (full: first sync into a fresh destination; noop: the
same sync again, nothing changed; verify: first sync with
--verify-get-after-put), it runs synctool and rclone alternately, each into a
fresh destination, checks that every destination equals the source (names,
sizes and BLAKE3 of every file, outside the timed part), and prints one table
of medians. The table also goes to BENCHMARKS.md with the machine and the
versions used. --defaults runs both tools as a user does (endpoints and
credentials only), --rtt puts the S3 and SSH servers a round trip away
(scripts/latency_proxy.py); each such run writes its own section of the
report and leaves the rest. Issue 5 says what is measured and why; BENCHMARKS.md says how.

Everything lives on tmpfs (/dev/shm): the workloads, the local destinations
and the servers' folders, so both tools see the same steady storage.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import blake3
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # scripts/servers.py
sys.path.insert(1, str(REPO))  # synctool, when not installed

from latency_proxy import delayed  # noqa: E402
from servers import LOOPBACK, S3Server, SSHServer, openssh_sftp, rclone_s3, real_executable  # noqa: E402
from servers_ftp import FTPServer, rclone_ftp  # noqa: E402
from servers_dask import dask_cluster  # noqa: E402
from servers_webdav import WebDAVServer, rclone_webdav  # noqa: E402
from servers_azure import AzuriteServer, azurite  # noqa: E402

from synctool.backends.base import BackendSpec  # noqa: E402
from synctool.backends.registry import open_backend  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SHM = Path("/dev/shm")
SEED = 20240501
#: Every source file gets this modification time, so a re-run compares equal.
SOURCE_MTIME = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
#: Bump when the way workloads are generated changes: the cache is then made anew.
GENERATOR = 2

ROUTES = {"local-local": ("local", "local"), "local-s3": ("local", "s3"),
          "local-sftp": ("local", "sftp"), "s3-sftp": ("s3", "sftp"), "local-ftp": ("local", "ftp"),
          "local-webdav": ("local", "webdav"), "local-azure": ("local", "azure")}  # fmt: skip
WORKLOADS = ("small", "large", "mixed")
CASES = ("full", "noop", "verify")
SRC_BUCKET = "benchsrc"


# -- workloads -------------------------------------------------------------------------
def workload_files(name: str, quick: bool) -> list[tuple[str, int]]:
    """(relative path, size) of every file of a workload."""
    if name == "small":
        # 250 leaf folders, ten under each of 25 top folders, files dealt round-robin.
        count, leaves = (500, 25) if quick else (5000, 250)
        return [(f"d{i % leaves // 10:02d}/e{i % leaves:03d}/f{i:05d}.bin", 4 * KiB) for i in range(count)]
    if name == "large":
        count, size = (2, 32 * MiB) if quick else (4, 256 * MiB)
        return [(f"big{i}.bin", size) for i in range(count)]
    if name == "mixed":
        # Many small files and a few large ones, as in a backup folder: 2%
        # empty, 95% log-uniform from 1 B to 4 MiB (as many in each doubling
        # of size), 3% log-uniform from 4 to 64 MiB. About 0.9 GiB in all,
        # two thirds of it in the large 3%. (Log-uniform all the way to
        # 64 MiB would be ~3.6 GiB and make the bench four times longer.)
        rng = random.Random(SEED)
        count = 100 if quick else 1000
        files = []
        for i in range(count):
            kind = rng.random()
            if kind < 0.02:
                size = 0
            elif kind < 0.97:
                size = int(2 ** rng.uniform(0, 22))
            else:
                size = int(2 ** rng.uniform(22, 26))
            files.append((f"m{i % 10}/m{i:04d}.bin", size))
        return files
    raise ValueError(name)


def content(workload: str, name: str, size: int) -> Iterator[bytes]:
    """A file's random bytes: BLAKE3's extendable output, keyed by seed and name.

    Fast (GB/s), the same on every machine, and no two files share a block,
    so no tool can take a shortcut through duplicate content.
    """
    hasher = blake3.blake3(f"{SEED}/{workload}/{name}".encode())
    for offset in range(0, size, 8 * MiB):
        yield hasher.digest(length=min(8 * MiB, size - offset), seek=offset)


def hash_file(path: Path) -> str:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


@dataclasses.dataclass
class Workload:
    name: str
    root: Path
    manifest: dict[str, tuple[int, str]]  # relative path -> (size, BLAKE3 hex)

    @property
    def files(self) -> int:
        return len(self.manifest)

    @property
    def bytes(self) -> int:
        return sum(size for size, _ in self.manifest.values())

    @property
    def folders(self) -> int:
        return len({os.path.dirname(n) for n in self.manifest} - {""})


def make_workload(cache: Path, name: str, quick: bool) -> Workload:
    """Generate a workload into ``cache``, or reuse what an earlier run left there."""
    root = cache / ("quick" if quick else "full") / name
    stamp = root.with_suffix(".json")
    files = workload_files(name, quick)
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved["generator"] == GENERATOR and all(
            (root / n).is_file() and (root / n).stat().st_size == s for n, s in files
        ):
            return Workload(name, root, {n: tuple(v) for n, v in saved["manifest"].items()})
    shutil.rmtree(root, ignore_errors=True)
    manifest = {}
    for rel, size in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        hasher = blake3.blake3()
        with open(path, "wb") as f:
            for chunk in content(name, rel, size):
                f.write(chunk)
                hasher.update(chunk)
        os.utime(path, (SOURCE_MTIME, SOURCE_MTIME))
        manifest[rel] = (size, hasher.hexdigest())
    stamp.write_text(json.dumps({"generator": GENERATOR, "manifest": manifest}))
    return Workload(name, root, manifest)


# -- checking a destination --------------------------------------------------------
def listing(side: Side) -> dict[str, tuple[int, object]]:
    """name -> (size, a stamp that changes when the file is written again)."""
    if side.blobs is not None:
        return side.blobs()  # a blob's stamp is its ETag
    out = {}
    for folder, _, names in os.walk(side.disk):
        for n in names:
            st = os.stat(os.path.join(folder, n))
            out[os.path.relpath(os.path.join(folder, n), side.disk)] = (st.st_size, (st.st_ino, st.st_mtime_ns))
    return out


def differences(workload: Workload, side: Side) -> str | None:
    """None when ``side`` holds exactly the workload's files, byte for byte."""
    if side.blobs is None and not side.disk.is_dir():
        return f"{side.disk} does not exist"
    found = listing(side)
    missing = sorted(set(workload.manifest) - set(found))
    extra = sorted(set(found) - set(workload.manifest))
    if missing or extra:
        return f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})"
    for rel, (size, digest) in workload.manifest.items():
        if found[rel][0] != size:
            return f"{rel}: {found[rel][0]} bytes, expected {size}"
        if (side.hash(rel) if side.hash else hash_file(side.disk / rel)) != digest:
            return f"{rel}: content differs"
    return None


def rewritten(before: dict[str, tuple[int, object]], side: Side) -> int:
    """Files a no-op run replaced or touched (new inode or mtime; a new ETag)."""
    after = listing(side)
    return sum(1 for rel, stamp in before.items() if after.get(rel) != stamp)


# -- running and measuring one command ---------------------------------------------
@dataclasses.dataclass
class Run:
    seconds: float
    peak_rss: int  # bytes, the whole process tree at its largest
    error: str | None = None  # the tool failed, or its destination is wrong
    rewritten: int = 0  # no-op runs only: files the run wrote anyway
    capped: bool = False  # stopped at --cap: ``seconds`` is a lower bound
    load: float = 0.0  # the machine's 1-minute load average as the run started


def timed(commands: list[list[str]], log: Path, env: dict[str, str], cap: float) -> Run:
    """Run commands one after another; wall time of all, peak RSS of each tree.

    A run still going after ``cap`` seconds in all is stopped: its time is
    then a lower bound (rclone's SFTP hash check takes minutes on small files,
    and a hung tool must not hang the bench).

    Output goes to ``log``, not the terminal: a terminal would slow the tools
    and mix with the table. The sampler sums the RSS of the process and all
    its children every 20 ms (synctool's workers are child processes).
    """
    total, peak = 0.0, 0
    load = os.getloadavg()[0]
    with open(log, "ab") as out:
        for cmd in commands:
            out.write(f"$ {shlex.join(cmd)}\n".encode())
            out.flush()
            started = time.perf_counter()
            proc = psutil.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            done = threading.Event()
            peaks = [0]

            def sample(proc=proc, done=done, peaks=peaks) -> None:
                while not done.is_set():
                    rss = 0
                    with contextlib.suppress(psutil.Error):
                        for p in [proc, *proc.children(recursive=True)]:
                            with contextlib.suppress(psutil.Error):
                                rss += p.memory_info().rss
                    peaks[0] = max(peaks[0], rss)
                    done.wait(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                code = proc.wait(max(0.1, cap - total))
            except psutil.TimeoutExpired:
                for p in [*proc.children(recursive=True), proc]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                proc.wait(10)
                code = None
            total += time.perf_counter() - started
            done.set()
            sampler.join()
            peak = max(peak, peaks[0])
            if code is None:
                out.write(f"stopped at the cap of {cap:.0f} s\n".encode())
                return Run(cap, peak, capped=True, load=load)
            if code != 0:
                return Run(total, peak, f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} exit {code}, see {log}", load=load)
    return Run(total, peak, load=load)


# -- the bench ---------------------------------------------------------------------
@dataclasses.dataclass
class Side:
    """One end of a sync, as each tool names it, and where its files sit on disk."""

    synctool: str
    options: dict[str, str]
    rclone: str
    disk: Path
    #: Where the files are no plain files (Azurite's blobs): list and hash them through the server.
    blobs: Callable[[], dict[str, tuple[int, object]]] | None = None
    hash: Callable[[str], str] | None = None


class Bench:
    def __init__(
        self,
        args,
        run_dir: Path,
        s3: S3Server | None,
        ssh: SSHServer | None,
        ftp: FTPServer | None = None,
        dav: WebDAVServer | None = None,
        az: AzuriteServer | None = None,
        s3_nearby: S3Server | None = None,
        dask=None,
    ):
        """``s3`` and ``ssh`` are the servers as the tools reach them (through
        the latency proxy with --rtt); ``s3_nearby`` is the same S3 server
        reached directly, for setting up buckets outside the timing."""
        self.args = args
        self.dask = dask  # a DaskCluster: synctool-dask runs the shards there
        self.run_dir = run_dir
        self.s3, self.ssh, self.ftp, self.dav, self.az = s3, ssh, ftp, dav, az
        self.s3_nearby = s3_nearby or s3
        self.synctool = real_executable("synctool")
        self.rclone = real_executable("rclone")
        self.counter = 0
        # rclone reads the remotes from these variables; --config /dev/null
        # keeps any config file of the user's out of it.
        self.env = {**os.environ, "RCLONE_CACHE_DIR": str(run_dir / "rclone-cache")}
        if s3:
            self.env.update(s3.rclone_env("benchs3"))
        if ssh:
            self.env.update(ssh.rclone_env("benchsftp"))
        if ftp:
            self.env.update(ftp.rclone_env("benchftp"))
        if dav:
            self.env.update(dav.rclone_env("benchdav"))
        if az:
            self.env.update(az.rclone_env("benchaz"))
        self.results: dict[tuple[str, str, str, str], list[Run]] = {}
        self.transfers: dict[str, int] = {}

    # -- the two ends ----------------------------------------------------------
    def source(self, kind: str, workload: Workload) -> Side:
        if kind == "local":
            return Side(str(workload.root), {}, str(workload.root), workload.root)
        assert self.s3
        return Side(f"s3://{SRC_BUCKET}/{workload.name}", self.s3.synctool_options(),
                    f"benchs3:{SRC_BUCKET}/{workload.name}", self.s3.root / SRC_BUCKET / workload.name)  # fmt: skip

    def fresh_destination(self, kind: str) -> Side:
        """A destination no run has used: a new folder, or a new bucket."""
        self.counter += 1
        n = self.counter
        if kind == "local":
            path = self.run_dir / "local" / f"d{n:04d}"
            return Side(str(path), {}, str(path), path)
        if kind == "s3":
            assert self.s3 and self.s3_nearby
            bucket = f"dst{n:04d}"
            self.s3_nearby.create_bucket(bucket)  # for both tools alike, outside the timing
            return Side(f"s3://{bucket}/mirror", self.s3.synctool_options(), f"benchs3:{bucket}/mirror",
                        self.s3.root / bucket / "mirror")  # fmt: skip
        if kind == "ftp":
            assert self.ftp
            return Side(self.ftp.url(f"d{n:04d}"), self.ftp.synctool_options(), f"benchftp:d{n:04d}",
                        self.ftp.root / f"d{n:04d}")  # fmt: skip
        if kind == "webdav":
            assert self.dav
            folder = f"d{n:04d}"
            return Side(self.dav.url(folder), self.dav.synctool_options(), f"benchdav:{folder}", self.dav.root / folder)
        if kind == "azure":
            assert self.az
            container = f"dst{n:04d}"
            self.az.create_container(container)
            return Side(f"azure://{container}/mirror", self.az.synctool_options(), f"benchaz:{container}/mirror",
                        Path(container), lambda: self.az.stamps(container, "mirror/"),
                        lambda rel: self.az.blake3(container, f"mirror/{rel}"))  # fmt: skip
        assert self.ssh
        path = self.run_dir / "sftp" / f"d{n:04d}"
        return Side(self.ssh.url(str(path)), self.ssh.synctool_options(), f"benchsftp:{path}", path)

    def settle(self, dst: Side) -> None:
        """List an S3 destination once through the server, outside the timing.

        rclone serve s3 reads each object that an S3 client wrote and has not
        listed yet, to compute its MD5 (about a second per GiB; objects rclone
        writes are spared). A real S3 service knows its ETags from the upload,
        so the no-op that follows times the tool, not this server's one-off.
        """
        if dst.synctool.startswith("s3://"):
            assert self.s3_nearby
            bucket, _, prefix = dst.synctool.removeprefix("s3://").partition("/")
            pages = self.s3_nearby.client().get_paginator("list_objects_v2")
            for _ in pages.paginate(Bucket=bucket, Prefix=f"{prefix}/"):
                pass

    def remove(self, dst: Side) -> None:
        if dst.blobs is not None:
            self.az.container(str(dst.disk)).delete_container()
            return
        # An S3 destination's bucket folder goes too (bucket names are never reused).
        shutil.rmtree(dst.disk.parent if dst.synctool.startswith("s3://") else dst.disk, ignore_errors=True)

    def parallel_transfers(self, src: Side, dst: Side) -> int:
        """What synctool keeps in flight: workers x jobs per worker.

        A worker runs max(source, destination) concurrency jobs at once (see
        workers/process.py); the backends are only constructed here, which
        opens no connection.
        """
        per_worker = max(open_backend(BackendSpec(side.synctool, side.options)).concurrency for side in (src, dst))
        return self.args.workers * per_worker

    # -- commands --------------------------------------------------------------------
    def synctool_command(self, src: Side, dst: Side, verify: bool, dask: bool = False) -> list[list[str]]:
        # At --defaults, as a user runs it: endpoints, credentials, and -y
        # (there is no one to answer the question).
        cmd = [self.synctool, src.synctool, dst.synctool, "-y"]
        if not self.args.defaults:
            cmd += ["--log-level", "warning", "--workers", str(self.args.workers)]
        if dask:
            cmd += ["--scheduler", self.dask.address]
        for flag, side in (("--src-options", src), ("--dst-options", dst)):
            if side.options:
                cmd += [flag, *(f"{k}={v}" for k, v in side.options.items())]
        if verify:
            cmd.append("--verify-get-after-put")
        return [cmd]

    def rclone_command(self, tool: str, src: Side, dst: Side, verify: bool, transfers: int | None) -> list[list[str]]:
        # --config /dev/null: the remotes come from the environment, and no
        # config file of the user's changes what is measured.
        flags = ["--config", "/dev/null"] + ([] if self.args.defaults else ["-q"])
        if transfers and not self.args.defaults:
            flags += ["--transfers", str(transfers), "--checkers", str(transfers)]
        if tool == "rclone-nohash":
            flags.append("--sftp-disable-hashcheck")
        commands = [[self.rclone, "sync", src.rclone, dst.rclone, *flags]]
        if verify:
            # rclone has no get-after-put; its nearest is reading every
            # destination file back and comparing it with the source.
            commands.append([self.rclone, "check", "--download", "--one-way", src.rclone, dst.rclone, *flags])
        return commands

    # -- one route and workload ------------------------------------------------------
    def run_block(self, route: str, workload: Workload) -> None:
        src_kind, dst_kind = ROUTES[route]
        src = self.source(src_kind, workload)
        probe = self.fresh_destination(dst_kind)
        transfers = self.parallel_transfers(src, probe)
        self.remove(probe)
        # local-local: synctool copies inline (1 job per worker); rclone keeps its defaults.
        rclone_transfers = None if route == "local-local" or self.args.defaults else transfers
        self.transfers[route] = transfers
        tools = ["synctool", *(["synctool-dask"] if self.dask else []), "rclone"] + (["rclone-nohash"] if dst_kind == "sftp" else [])
        cases = self.args.cases
        given_up: set[tuple[str, str]] = set()  # (tool, case group) slower than --slow
        log = self.run_dir / "logs" / f"{route}-{workload.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)

        def record(case: str, tool: str, run: Run) -> None:
            self.results.setdefault((route, workload.name, case, tool), []).append(run)
            mark = f" FAILED: {run.error}" if run.error else ""
            mark += f" (rewrote {run.rewritten} files)" if run.rewritten else ""
            print(f"  {route} {workload.name} {case} {tool}: {run.seconds:.2f} s, "
                  f"peak {run.peak_rss / MiB:.0f} MiB{mark}", file=sys.stderr, flush=True)  # fmt: skip

        def command(tool: str, dst: Side, verify: bool) -> list[list[str]]:
            if tool.startswith("synctool"):
                return self.synctool_command(src, dst, verify, dask=tool == "synctool-dask")
            return self.rclone_command(tool, src, dst, verify, rclone_transfers)

        def checked(run: Run, dst: Side) -> Run:
            if run.error is None and not run.capped:
                run.error = differences(workload, dst)
            return run

        for rep in range(self.args.repeat):
            # Alternate who goes first, so neither always runs on a warmer machine.
            order = tools if rep % 2 == 0 else tools[::-1]
            for tool in order:
                if ("full" in cases or "noop" in cases) and (tool, "sync") not in given_up:
                    dst = self.fresh_destination(dst_kind)
                    # Without "full" in the cases, the first sync only sets up the no-op.
                    run = checked(timed(command(tool, dst, False), log, self.env, self.args.cap), dst)
                    if "full" in cases or run.error or run.capped:
                        # A failed set-up run is the no-op's failure when only noop is asked for.
                        record("full" if "full" in cases else "noop", tool, run)
                    if run.capped or run.seconds > self.args.slow:
                        given_up.add((tool, "sync"))
                    # A capped first sync left a partial destination: no no-op to time.
                    if "noop" in cases and run.error is None and not run.capped:
                        self.settle(dst)
                        before = listing(dst)
                        again = timed(command(tool, dst, False), log, self.env, self.args.cap)
                        again.rewritten = rewritten(before, dst)
                        checked(again, dst)
                        record("noop", tool, again)
                    self.remove(dst)
                if "verify" in cases and (tool, "verify") not in given_up:
                    dst = self.fresh_destination(dst_kind)
                    run = checked(timed(command(tool, dst, True), log, self.env, self.args.cap), dst)
                    record("verify", tool, run)
                    if run.capped or run.seconds > self.args.slow:
                        given_up.add((tool, "verify"))
                    self.remove(dst)


# -- the table ----------------------------------------------------------------------
RCLONE_LABEL = {"rclone": "rclone", "rclone-nohash": "rclone --sftp-disable-hashcheck"}


def table_rows(bench: Bench, workloads: dict[str, Workload]) -> list[list[str]]:
    rows = []
    seen = sorted({k[:3] for k in bench.results}, key=lambda k: (list(ROUTES).index(k[0]), WORKLOADS.index(k[1]), CASES.index(k[2])))
    for route, wl, case in seen:
        w = workloads[wl]
        st = bench.results.get((route, wl, case, "synctool"), [])
        for variant in ("rclone", "rclone-nohash"):
            rc = bench.results.get((route, wl, case, variant))
            if rc is None:
                continue
            s, r = summary(st, bench.args.repeat), summary(rc, bench.args.repeat)
            ratio = ratio_text(s, r)
            loads = [run.load for run in st + rc]
            rows.append([
                route, wl, case, RCLONE_LABEL[variant],
                s["time"], r["time"], ratio,
                rate(w.bytes / 1e6, s, case), rate(w.bytes / 1e6, r, case),
                rate(w.files, s), rate(w.files, r),
                s["peak"], r["peak"], f"{statistics.median(loads):.1f}" if loads else "–",
            ])  # fmt: skip
    return rows


def summary(runs: list[Run], repeat: int) -> dict:
    """Median of the runs that succeeded; ``capped`` when that is a lower bound."""
    good = [r for r in runs if r.error is None]
    if not runs:
        return {"ok": False, "time": "–", "peak": "–", "median": 0, "capped": False}
    if not good:
        return {"ok": False, "time": "FAILED", "peak": "–", "median": 0, "capped": False}
    median = statistics.median(r.seconds for r in good)
    capped = any(r.capped for r in good)
    text = f"> {median:.0f} (stopped)" if capped else f"{median:.2f}"
    if len(good) < len(runs):
        text += f" ({len(runs) - len(good)} failed)"
    elif len(runs) < repeat:
        text += f" (n={len(runs)})"
    return {"ok": True, "time": text, "median": median, "capped": capped,
            "peak": f"{max(r.peak_rss for r in good) / MiB:.0f}"}  # fmt: skip


def ratio_text(s: dict, r: dict) -> str:
    """synctool / rclone; a stopped run's time is a lower bound, so is the ratio's side."""
    if not (s["ok"] and r["ok"]) or (s["capped"] and r["capped"]):
        return "–"
    ratio = f"{s['median'] / r['median']:.2f}"
    return f"< {ratio}" if r["capped"] else f"> {ratio}" if s["capped"] else ratio


def rate(amount: float, s: dict, case: str = "") -> str:
    # A no-op run moves no bytes: MB/s would mean nothing there.
    if not s["ok"] or s["capped"] or case == "noop" or s["median"] <= 0:
        return "–"
    return f"{amount / s['median']:.0f}"


HEADER = ["route", "workload", "case", "compared with", "synctool s", "rclone s", "ratio",
          "synctool MB/s", "rclone MB/s", "synctool files/s", "rclone files/s",
          "synctool peak MiB", "rclone peak MiB", "load"]  # fmt: skip


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [HEADER, *rows]]
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * 3 + "---|" + "--:|" * (len(HEADER) - 4)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def ratio_target(args, workload: str) -> float:
    """The largest synctool / rclone ratio a row may show.

    Across a network, small files are round trips, and synctool keeps more
    of them in flight than rclone's defaults do: it must take at most half
    rclone's time there; large files are bandwidth, which both share alike.
    """
    if args.rtt:
        return 1.0 if workload == "large" else 0.5
    return 1.0


def target_misses(bench: Bench) -> list[str]:
    """The targets, checked on this run's figures."""
    def med(route, wl, case, tool):
        s = summary(bench.results.get((route, wl, case, tool), []), bench.args.repeat)
        return s["median"] if s["ok"] and not s["capped"] else None

    misses = []
    for route, wl, case, tool in sorted(bench.results):
        if tool.startswith("synctool"):
            continue
        st, rc = med(route, wl, case, "synctool"), med(route, wl, case, tool)
        target = ratio_target(bench.args, wl)
        if st and rc and st > target * rc:
            misses.append(f"{route} {wl} {case}: synctool {st:.2f} s, {RCLONE_LABEL[tool]} {rc:.2f} s "
                          f"(ratio {st / rc:.2f}, target ≤ {target:.1f})")  # fmt: skip
    for route, wl in sorted({k[:2] for k in bench.results}):
        full, verify = med(route, wl, "full", "synctool"), med(route, wl, "verify", "synctool")
        if full and verify and verify > 1.3 * full:
            misses.append(f"{route} {wl}: --verify-get-after-put costs {verify / full:.2f}× the full sync (target ≤ 1.3)")
        runs = [r for r in bench.results.get((route, wl, "full", "synctool"), []) if r.error is None]
        if wl == "large" and runs and max(r.peak_rss for r in runs) >= 300 * MiB:
            misses.append(f"{route} large: synctool peak {max(r.peak_rss for r in runs) / MiB:.0f} MiB (target < 300)")
    for route, wl, case, pool, dask in dask_rows(bench):
        if pool and dask and dask > (1 + DASK_OVERHEAD_TARGET) * pool:
            misses.append(f"{route} {wl} {case}: synctool on Dask {dask:.2f} s, "
                          f"{dask / pool - 1:+.0%} over the process pool {pool:.2f} s (target ≤ {DASK_OVERHEAD_TARGET:+.0%})")
    for key, runs in sorted(bench.results.items()):
        for r in runs:
            if r.error:
                misses.append(f"{' '.join(key)}: FAILED: {r.error}")
            elif r.capped and key[3] == "synctool":
                misses.append(f"{' '.join(key)}: synctool stopped at the cap of {r.seconds:.0f} s")
            elif r.rewritten:
                misses.append(f"{' '.join(key)}: the no-op run rewrote {r.rewritten} files")
    return misses


# -- synctool on Dask -------------------------------------------------------------------
DASK_OVERHEAD_TARGET = 0.10  # at most this much slower than the process pool on the same host
SCHEDULER_PROBE_TASKS = 1000


def dask_rows(bench: Bench) -> list[tuple[str, str, str, float | None, float | None]]:
    """(route, workload, case, process pool median s, Dask median s) of every case both ran."""
    rows = []
    for route, wl, case, tool in sorted(bench.results):
        if tool != "synctool-dask":
            continue
        pool, dask = (summary(bench.results.get((route, wl, case, t), []), bench.args.repeat) for t in ("synctool", tool))
        rows.append((route, wl, case, *(s["median"] if s["ok"] and not s["capped"] else None for s in (pool, dask))))
    return rows


def scheduler_costs(cluster) -> dict[str, float]:
    """What the scheduler costs per task, and per round trip, on this cluster (seconds)."""
    with cluster.client() as client:
        for _ in range(2):  # the first round warms the workers up
            started = time.perf_counter()
            client.gather(client.map(abs, range(SCHEDULER_PROBE_TASKS), pure=False))
            per_task = (time.perf_counter() - started) / SCHEDULER_PROBE_TASKS
        started = time.perf_counter()
        for _ in range(200):
            client.get_metadata(["bench-probe"], None)
        round_trip = (time.perf_counter() - started) / 200
    imports = []
    for _ in range(3):  # what every run with --scheduler pays before it can connect
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import distributed"], check=True)
        imports.append(time.perf_counter() - started)
    return {"task": per_task, "round_trip": round_trip, "import": statistics.median(imports)}


def dask_section(bench: Bench, workloads: dict[str, Workload]) -> list[str]:
    if bench.dask is None:
        return []
    costs = bench.scheduler_costs
    rows = [f"| {route} | {wl} | {case} | {pool or 0:.2f} | {dask or 0:.2f} | "
            f"{f'{dask / pool - 1:+.1%}' if pool and dask else '–'} |" for route, wl, case, pool, dask in dask_rows(bench)]  # fmt: skip
    noop = [(workloads[wl].files / pool, route) for route, wl, case, pool, _ in dask_rows(bench)
            if case == "noop" and wl == "small" and pool]  # fmt: skip
    listing = f"{max(noop)[0]:,.0f} files/s ({max(noop)[1]} no-op, small workload)" if noop else "the noop rows of the table above give its rate"
    per_shard = costs["task"] + 2 * costs["round_trip"]
    return [
        "## synctool on a Dask cluster (`--scheduler`)",
        "",
        f"The same runs with `--scheduler`: a `dask scheduler` and `dask worker --nworkers {bench.args.workers} "
        "--nthreads 2` on this host (as many Dask workers as pool workers; two shards at a time each, as a pool "
        "worker holds one running and one waiting), started once before the timing by `scripts/servers_dask.py`. "
        "Overhead = Dask / process pool − 1 (target: at most "
        f"{DASK_OVERHEAD_TARGET:+.0%}). Peak memory above counts synctool's own process tree only: the Dask "
        "workers are not its children.",
        "",
        "| route | workload | case | process pool s | Dask s | overhead |",
        "|---|---|---|--:|--:|--:|",
        *rows,
        "",
        f"Scheduler cost measured here: {costs['task'] * 1e3:.2f} ms per task ({SCHEDULER_PROBE_TASKS} "
        f"trivial tasks in a row), {costs['round_trip'] * 1e3:.2f} ms per round trip to the scheduler; a "
        f"shard task costs about {per_shard * 1e3:.2f} ms (the task, and the two round trips with which it "
        "marks itself started), plus one event per 64 results. Each run also imports Dask's `distributed` "
        f"package before it connects: {costs['import']:.2f} s here (a fresh `python -c 'import distributed'`), "
        "a fixed cost that dominates the overhead of short runs.",
        "",
        "### How throughput grows with hosts",
        "",
        "With H hosts each moving B bytes/s (its network, or its cores hashing BLAKE3 and speaking "
        "TLS/HTTP, whichever is less), a run copies at about min(H × B, S, C, Q):",
        "",
        f"- **S, the scheduler**: one task per shard, shards of up to 64 small files or 64 MiB: about "
        f"64 / {per_shard * 1e3:.2f} ms ≈ {64 / per_shard:,.0f} files/s, or 64 MiB per task of large files, "
        "on one scheduler core.",
        f"- **C, the coordinator**: one process lists both sides and plans ({listing}: a bound on "
        "what a no-op run checks, and the floor under every run's start), and books every result.",
        "- **Q, the storage itself**: an S3 service's request rate per prefix, an SFTP server's disks; "
        "more hosts do not raise it.",
        "",
        "So large files scale with hosts until the storage or the network between them is full; small "
        "files scale until the scheduler's few thousand tasks per second, times 64 files a task, or the "
        "coordinator's single listing stream bounds them. Loopback on one 2-core host measures the costs, "
        "not B.",
        "",
    ]


# -- the report ---------------------------------------------------------------------
def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts(bench: Bench) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    rclone = subprocess.run([bench.rclone, "version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=30).stderr.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "synctool", "workers"],
                           capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
    import synctool

    return [
        f"- CPUs: {os.cpu_count()} × {cpu}; memory {psutil.virtual_memory().total / GiB:.1f} GiB; "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; synctool {synctool.__version__} (commit {commit}"
        f"{', with uncommitted changes' if dirty else ''}); {rclone}; boto3 {version('boto3')}; "
        f"awscrt {version('awscrt')}; paramiko {version('paramiko')}; blake3 {version('blake3')}; {ssh}",
    ]


SECTION_START, SECTION_END = "<!-- bench section {} -->", "<!-- end of bench section {} -->"


def section_key(args) -> str | None:
    """The part of the report a run of these options owns; None: the main tables."""
    if args.section:
        return args.section
    if not (args.defaults or args.rtt):
        return None
    return f"{'defaults' if args.defaults else 'matched'}-rtt{args.rtt:g}"


def sections(text: str) -> dict[str, str]:
    """The marked sections of a report, each with its markers, by key."""
    pattern = re.escape(SECTION_START.format("KEY")).replace("KEY", r"(\S+)") + r".*?" + re.escape(SECTION_END.format("KEY")).replace("KEY", r"\1")
    return {m.group(1): m.group(0) for m in re.finditer(pattern, text, re.DOTALL)}


def write_report(path: Path, bench: Bench, workloads: dict[str, Workload], command: str, started: float, finished: bool) -> None:
    """Write this run's tables into the report, keeping the other runs' sections.

    The main run (matched transfers, loopback) writes the whole file around
    the sections; a --defaults or --rtt run replaces only its own section.
    """
    old = path.read_text() if path.exists() else ""
    kept = sections(old)
    key = section_key(bench.args)
    if key is None:
        body = main_report(bench, workloads, command, started, finished)
        path.write_text("\n".join([*body, *(kept[k] + "\n" for k in sorted(kept))]))
        return
    mine = "\n".join(section_report(bench, workloads, command, started, finished, key))
    if key in kept:
        path.write_text(old.replace(kept[key], mine))
    else:
        path.write_text(old.rstrip("\n") + "\n\n" + mine + "\n")


def run_facts(bench: Bench, command: str, started: float, finished: bool) -> list[str]:
    """When the run was, how it was started, and on what."""
    return [
        f"Run {datetime.datetime.fromtimestamp(started).strftime('%Y-%m-%d %H:%M')} "
        f"(took {(time.time() - started) / 60:.0f} min{'' if finished else ', unfinished'}), with:",
        "",
        f"    {command}",
        "",
        *machine_facts(bench),
    ]


def section_report(bench: Bench, workloads, command: str, started: float, finished: bool, key: str) -> list[str]:
    args = bench.args
    where = f"across a {args.rtt:g} ms round trip" if args.rtt else "over loopback"
    how = "both tools at their defaults" if args.defaults else "rclone given synctool's transfers"
    loads = [r.load for runs in bench.results.values() for r in runs]
    return [
        SECTION_START.format(key),
        f"## {how[0].upper() + how[1:]}, {where}" + (f": {', '.join(args.routes)}" if args.section else ""),
        "",
        *run_facts(bench, command, started, finished),
        f"- Load (1-minute average as each run started): {min(loads, default=0):.1f} to "
        f"{max(loads, default=0):.1f}; the table's last column is each row's median. "
        "Compare the tools within a row, not times across rows.",
        *([f"- Workloads: {', '.join(f'{w.name} {w.files:,} files, {w.bytes / MiB:,.1f} MiB' for w in workloads.values())}."]),
        "",
        f"Median wall time of {args.repeat} runs each, the tools alternating (fewer where marked); "
        "ratio = synctool / rclone.",
        "",
        markdown_table(table_rows(bench, workloads)),
        "",
        "Targets missed in this run (ratio at most "
        + ("0.5 on small and mixed, 1.0 on large" if args.rtt else "1.0 on every row") + "):",
        "",
        *(f"- {m}" for m in target_misses(bench) or ["none"]),
        "",
        "How:",
        "",
        *([
            "- synctool: `synctool SRC DST -y` and the backends' endpoint and credentials "
            "(`--src-options`/`--dst-options`: S3 endpoint and keys; SSH key file, pinned host key, agent off), nothing else.",
            "- rclone: `rclone sync SRC DST --config /dev/null`, its remotes (endpoint, credentials, "
            "known_hosts) in environment variables, nothing else: 4 transfers, 8 checkers, its "
            "own S3 upload cutoff and chunk size; on SFTP its default md5sum check after each upload, and a second row with "
            "`--sftp-disable-hashcheck`.",
        ] if args.defaults else [
            "- synctool and rclone as in the main table above.",
        ]),
        *([
            f"- The network: each server (S3, SSH) sits behind its own `scripts/latency_proxy.py` on "
            f"loopback, which holds every chunk {args.rtt / 2:g} ms in each direction (a round trip "
            f"of {args.rtt:g} ms), makes a new connection wait one round trip before its first "
            "byte, and lets at most 4 MiB per direction of a connection be in flight (besides the "
            "kernel's socket buffers), as a TCP window would; no bandwidth cap. Buckets are made and "
            "the S3 source loaded directly, outside the timing.",
        ] if args.rtt else []),
        "- Everything else (tmpfs, servers, checking every destination, stopped runs) as in "
        "\"How it is measured\" above.",
        SECTION_END.format(key),
    ]


def main_report(bench: Bench, workloads: dict[str, Workload], command: str, started: float, finished: bool) -> list[str]:
    rows = table_rows(bench, workloads)
    transfers = ", ".join(f"{r} {t}" for r, t in bench.transfers.items())
    lines = [
        "# Benchmarks: synctool and rclone sync",
        "",
        "Generated by `scripts/bench.py`; edit that, not this file. Issue 5 defines what is measured.",
        "",
        *run_facts(bench, command, started, finished),
        "- Other work shared the machine's cores during the run: compare the two tools within a row "
        "(their runs alternate), not absolute times across rows or runs.",
        "",
        "## Workloads",
        "",
        "Random content (BLAKE3 output from a fixed seed), every file's mtime 2024-01-01.",
        "",
        "| workload | files | folders | total |",
        "|---|--:|--:|--:|",
        *(f"| {w.name} | {w.files:,} | {w.folders} | {w.bytes / MiB:,.1f} MiB |" for w in workloads.values()),
        "",
        "## Results",
        "",
        f"Median wall time of {bench.args.repeat} runs each (fewer where marked); ratio = synctool / rclone, "
        "below 1.0 synctool is faster. MB = 10⁶ bytes; MB/s and files/s are the workload's size and file "
        "count over the median time (for noop, files compared per second). Peak = the largest summed RSS "
        "of the tool's whole process tree; load = the machine's 1-minute load average as the row's runs "
        "started (median).",
        "",
        markdown_table(rows),
        "",
        *dask_section(bench, workloads),
        "## Issue 5's targets missed in this run",
        "",
        *(f"- {m}" for m in target_misses(bench) or ["none"]),
        "",
        "## How it is measured",
        "",
        "- **Storage**: the workloads, the local destinations and both servers' folders are on tmpfs "
        "(`/dev/shm`). The disk under /tmp here is ext4 whose metadata speed swings between runs "
        "(deletes trigger discards); on tmpfs both tools see the same steady storage, so the figures "
        "measure the tools and the protocols, not the disk.",
        "- **Servers**: `rclone serve s3` (S3), OpenSSH's sshd with `internal-sftp` (SFTP) and "
        "`rclone serve ftp` (FTP, which has no MFMT: copies keep their upload time), on "
        "127.0.0.1, started by `scripts/servers.py` and `scripts/servers_ftp.py`. Both tools talk to the same server processes, "
        "whose memory is not counted in either tool's peak. The S3 source of s3-sftp is loaded once, "
        "with `rclone copy`, before any timing.",
        "- **Executables**: the real `synctool` console script and rclone binary beside the Python "
        "interpreter, not the pyenv shims (which add ~0.1 s per start). Output goes to log files.",
        f"- **synctool**: `synctool SRC DST -y --log-level warning --workers {bench.args.workers}` "
        "plus the backends' options (S3 keys; SSH key file, pinned host key, agent off).",
        "- **rclone**: `rclone sync SRC DST --config /dev/null -q --transfers N --checkers N`, the "
        "remotes defined by environment variables (SFTP: key file, known_hosts file with the host "
        "key, shell type and hash commands given as a saved config holds them; FTP: host, port, "
        "user and the password obscured by `rclone obscure`). N = what synctool "
        "keeps in flight: workers × max(source, destination) jobs per worker "
        f"({transfers}). On local-local synctool copies inline (one job per worker), and rclone keeps "
        "its defaults (4 transfers, 8 checkers).",
        "- **SFTP destinations** show two rclone rows: its default, which after each upload runs "
        "`md5sum` on the server over an SSH exec channel to check the hash, and with "
        "`--sftp-disable-hashcheck`. synctool's figures are the same in both rows (one set of runs).",
        "- **Cases**: *full* is a first sync into a fresh destination (new folder or new bucket); "
        "*noop* runs the same command again on that destination, nothing having changed (a no-op "
        "that rewrote any file, by inode or mtime, is reported below the table; an S3 destination "
        "is listed once before it, untimed, because rclone serve s3 computes the MD5 of an object "
        "an S3 client wrote at its first listing, a second or so per GiB that a real S3 service "
        "does not spend); *verify* is a "
        "first sync with `--verify-get-after-put`. rclone has no get-after-put: its verify row is "
        "`rclone sync` followed by `rclone check --download --one-way` with the same flags, timed "
        "together, which reads every destination file back and compares it byte for byte with the "
        "source (it also re-reads the source, which synctool does not need: it hashed the bytes as "
        "they passed). rclone's plain sync already compares hashes where both ends have one "
        "(local-local, local-s3 by MD5 on single-part uploads, SFTP by the remote md5sum).",
        "- **Runs**: for each repetition the tools alternate, and who goes first alternates too. "
        "Every run gets a fresh destination. After each run, outside the timing, the destination "
        "is compared with the source: names, sizes and the BLAKE3 of every file; a run that fails "
        "or leaves a wrong destination is reported as failed and not counted. A tool whose first "
        f"run of a case takes longer than {bench.args.slow:.0f} s is not repeated in that case "
        f"(marked n=1), and a run still going after {bench.args.cap:.0f} s is stopped: its time "
        "shows as a lower bound (\"> N (stopped)\"), its ratio as a bound, and a stopped first "
        "sync has no no-op row. That is rclone's default SFTP hash check on thousands of small "
        "files, which takes minutes.",
        "- **Memory**: psutil sums the RSS of the tool's process and all its children every 20 ms "
        "(RSS counts shared pages once per process, so forked workers are slightly over-counted).",
        "",
    ]
    return lines


# -- main ---------------------------------------------------------------------------
def pick(value: str, choices, what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in chosen if v not in choices]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)}; choose from {', '.join(choices)}")
    return chosen


def check_space(needed: int) -> None:
    free = shutil.disk_usage(SHM).free
    if free < needed:
        raise SystemExit(f"{SHM} has {free / GiB:.1f} GiB free; this run needs about {needed / GiB:.1f} GiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routes", default=",".join(ROUTES), help="comma-separated: %(default)s")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: %(default)s")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: %(default)s")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool per case [%(default)s]")
    ap.add_argument("--quick", action="store_true", help="much smaller workloads, to check the script")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="markdown report [%(default)s]")
    ap.add_argument("--keep", action="store_true", help="keep the workload cache and the run's folders and logs")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="synctool --workers [CPU count]")
    ap.add_argument("--slow", type=float, default=60.0, help="do not repeat a tool's case whose first run took longer [%(default)s s]")
    ap.add_argument("--cap", type=float, default=90.0, help="stop a run after this many seconds; its time is then a lower bound [%(default)s]")
    ap.add_argument("--dask", action="store_true", help="also run synctool on a local Dask cluster (--scheduler)")
    ap.add_argument("--cache", type=Path, default=SHM / "synctool-bench-cache", help="where workloads are generated [%(default)s]")
    ap.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                    help="reach the S3 and SSH servers across this round trip (scripts/latency_proxy.py) [none]")
    ap.add_argument("--defaults", action="store_true",
                    help="both tools as a user runs them: endpoints and credentials only (no --workers, --transfers ...)")
    ap.add_argument("--section", metavar="KEY",
                    help="write the tables as their own section KEY of the report, keeping the rest "
                         "(--defaults and --rtt runs always do) [the main tables]")
    args = ap.parse_args()
    args.routes = pick(args.routes, ROUTES, "route")
    args.workloads = pick(args.workloads, WORKLOADS, "workload")
    args.cases = pick(args.cases, CASES, "case")
    if args.rtt and any(set(ROUTES[r]) & {"ftp", "webdav"} for r in args.routes):
        raise SystemExit("--rtt puts only the S3 and SSH servers across a network; leave out the FTP and WebDAV routes")
    command = "python scripts/bench.py " + shlex.join(sys.argv[1:])
    started = time.time()

    sizes = {w: sum(s for _, s in workload_files(w, args.quick)) for w in args.workloads}
    cached = sum(sizes[w] for w in args.workloads if (args.cache / ("quick" if args.quick else "full") / w).is_dir())
    s3_source = any(ROUTES[r][0] == "s3" for r in args.routes)
    # the workloads, their copy in the S3 source bucket, one destination at a time, and slack
    check_space(sum(sizes.values()) * (2 if s3_source else 1) - cached + max(sizes.values()) + GiB)

    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "") or SHM / f"synctool-bench-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=False)
    try:
        print(f"workloads in {args.cache} ...", file=sys.stderr, flush=True)
        workloads = {w: make_workload(args.cache, w, args.quick) for w in args.workloads}
        byte_compile()
        needs_s3 = any("s3" in ROUTES[r] for r in args.routes)
        needs_ssh = any("sftp" in ROUTES[r] for r in args.routes)
        needs_ftp = any("ftp" in ROUTES[r] for r in args.routes)
        needs_dav = any("webdav" in ROUTES[r] for r in args.routes)
        needs_azure = any("azure" in ROUTES[r] for r in args.routes)
        with contextlib.ExitStack() as stack:
            s3 = stack.enter_context(rclone_s3(run_dir / "s3")) if needs_s3 else None
            ssh = stack.enter_context(openssh_sftp(run_dir / "sshd")) if needs_ssh else None
            ftp = stack.enter_context(rclone_ftp(run_dir / "ftp")) if needs_ftp else None
            dav = stack.enter_context(rclone_webdav(run_dir / "webdav")) if needs_dav else None
            az = stack.enter_context(azurite(run_dir / "azurite")) if needs_azure else None
            s3_far, ssh_far = s3, ssh
            if args.rtt:
                s3_far, ssh_far = across_network(stack, s3, ssh, args.rtt)
            dask = stack.enter_context(dask_cluster(run_dir / "dask", workers=args.workers, threads=2)) if args.dask else None
            bench = Bench(args, run_dir, s3_far, ssh_far, ftp, dav, az, s3_nearby=s3, dask=dask)
            if dask:
                bench.scheduler_costs = scheduler_costs(dask)
            if s3_source:
                load_s3_source(bench, workloads.values())
            for route in args.routes:
                for name in args.workloads:
                    print(f"{route} {name}:", file=sys.stderr, flush=True)
                    bench.run_block(route, workloads[name])
                    write_report(args.out, bench, workloads, command, started, finished=False)
            write_report(args.out, bench, workloads, command, started, finished=True)
        print()
        print(text_table(table_rows(bench, workloads)))
        misses = target_misses(bench)
        print("\nissue 5 targets missed:" if misses else "\nno target missed")
        for m in misses:
            print(f"  {m}")
        print(f"\nwritten to {args.out}; took {(time.time() - started) / 60:.1f} min")
        return 1 if any(r.error for runs in bench.results.values() for r in runs) else 0
    finally:
        if args.keep:
            print(f"kept {run_dir} and {args.cache}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(args.cache, ignore_errors=True)


def across_network(stack: contextlib.ExitStack, s3: S3Server | None, ssh: SSHServer | None, rtt_ms: float):
    """The S3 and SSH servers as the tools see them from ``rtt_ms`` away: each behind its own proxy."""
    s3_far = ssh_far = None
    if s3:
        proxy = stack.enter_context(delayed(s3.port, rtt_ms / 2))
        s3_far = dataclasses.replace(s3, endpoint=f"http://{LOOPBACK}:{proxy.port}", port=proxy.port, _client=None)
    if ssh:
        proxy = stack.enter_context(delayed(ssh.port, rtt_ms / 2))
        # rclone checks the host key against the address it dials: the proxy's port.
        known_hosts = ssh.known_hosts.with_name(f"known_hosts-{proxy.port}")
        key_type, key = ssh.known_hosts.read_text().split()[1:3]
        known_hosts.write_text(f"[{LOOPBACK}]:{proxy.port} {key_type} {key}\n")
        ssh_far = dataclasses.replace(ssh, port=proxy.port, known_hosts=known_hosts)
    return s3_far, ssh_far


def byte_compile() -> None:
    """Compile synctool's modules, as ``pip install`` does.

    Run from a checkout with PYTHONDONTWRITEBYTECODE set, every start would
    compile them afresh, a cost an installed tool never pays.
    """
    for package in ("synctool", "workers"):
        compileall.compile_dir(REPO / package, quiet=1)


def load_s3_source(bench: Bench, workloads) -> None:
    """Upload each workload once into the source bucket (not timed), and check it.

    Straight to the server, not across --rtt's delay: this is set-up.
    """
    assert bench.s3_nearby
    bench.s3_nearby.create_bucket(SRC_BUCKET)
    env = {**bench.env, **bench.s3_nearby.rclone_env("benchs3")}
    for w in workloads:
        src = bench.source("s3", w)
        code = subprocess.run(
            [bench.rclone, "copy", str(w.root), src.rclone, "--config", "/dev/null", "-q", "--transfers", "16"],
            env=env, timeout=1200,
        ).returncode  # fmt: skip
        problem = "rclone copy failed" if code else differences(w, src)
        if problem:
            raise SystemExit(f"loading the S3 source {src.rclone}: {problem}")


if __name__ == "__main__":
    sys.exit(main())
