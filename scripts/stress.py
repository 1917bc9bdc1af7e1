#!/usr/bin/env python
"""Stress run: local → S3 → SFTP → local under injected faults; nothing may be lost.

    python scripts/stress.py --files 5000 --faults 30          # the long run, by hand
    python scripts/stress.py --files 5000 --faults 30 --retention
    python scripts/stress.py --short                            # the size the test suite runs

It builds a seeded tree of files of random sizes (mostly small, a few above
the S3 part size so that multipart uploads happen, nested folders, some
unicode and space names), then mirrors it over three hops, each a real
``synctool`` process against real servers on loopback (rclone serve s3,
OpenSSH's sshd):

    source folder → s3://stress/mirror → ssh://…/sftp → local folder

While a hop runs, faults land at random moments: SIGKILL of a worker process,
SIGINT or SIGTERM of the whole run, the S3 server killed and started again,
every SFTP connection cut. Between runs the source changes (files added,
rewritten, deleted, a file turned into a folder and back). Each hop is run
again until it converges: a run with no fault that exits 0, then a run that
finds nothing left to do. At the end every destination must equal its source,
file by file, by BLAKE3. With --retention every run keeps old versions, and
every (name, BLAKE3) seen at a destination before any run must still be there,
under its name or a ``<yyyyMMddHHmmss>.old.<name>`` retention name.

Every run is held to its word on the way: one that exits 0 must have left an
exact mirror (success over a broken copy is the worst thing a sync can do),
one that exits 1 must have changed nothing, an interrupted one must stop
within seconds and leave no temporary file, no worker may outlive its run,
and no unfinished multipart upload may stay on the S3 server.

Every random choice comes from --seed (the tree, the changes, the faults and
their moments), and every fault is logged, so a failure can be replayed; only
where a fault lands inside the run depends on the machine's speed.

The logic is in functions (:func:`stress`) so that tests/test_stress.py runs
the short version in-process and a failure shows a traceback.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import blake3
import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: make `scripts` and `synctool` importable

from scripts.servers import S3Server, SSHServer, openssh_sftp, rclone_s3, takes_sigterm  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
PART_SIZE = 5 * MiB  # S3's smallest part; files above it go up in parts
BUCKET, PREFIX = "stress", "mirror"
#: A retention name's prefix (``20261128043100.old.``), possibly repeated when a
#: kept version is itself kept again one hop further on.
RETAINED_PREFIX = re.compile(r"^(?:\d{14}\.old\.)+")
TEMP_NAME = re.compile(r"^\.synctool-[0-9a-f]+\.tmp$")
#: A run that takes longer than this is hung: a finding, not a slow machine.
RUN_TIMEOUT = 600.0
#: After SIGINT/SIGTERM, the run must be gone within this (workers get 8 s).
STOP_BOUND = 30.0
#: A stop signal ends a run quietly: none of these may show in its output.
NOT_PRINTED = (b"Traceback", b"exception calling callback", b"Exception ignored")
#: The S3 server stays down this long (seconds) before it is started again.
S3_DOWNTIME = (0.2, 2.0)


@dataclasses.dataclass
class Config:
    files: int = 2000
    seed: int = 1
    retention: bool = False
    faults: int = 12
    rounds: int = 3  # the first syncs the fresh tree; each later one changes the source first
    workdir: Path | None = None
    keep: bool = False
    change_fraction: float = 0.03  # share of files added, changed or deleted per change
    quiet: bool = False

    @classmethod
    def short(cls, **overrides) -> "Config":
        """The test suite's size: under a minute on two cores."""
        return cls(**{"files": 150, "faults": 6, "rounds": 2, "change_fraction": 0.05, **overrides})


@dataclasses.dataclass
class Result:
    files: int = 0
    bytes: int = 0
    faults: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    missed: int = 0  # faults aimed after the run had ended (tried again; dropped after three in a row)
    changes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    runs: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # hop -> runs to converge, per round
    versions: int = 0  # (name, BLAKE3) pairs seen at destinations (--retention)
    lost: list[str] = dataclasses.field(default_factory=list)
    mismatches: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)  # wrong exit codes, hangs, leftovers
    converged: bool = True
    stop_latency: float = 0.0  # longest SIGINT/SIGTERM-to-exit
    wall: float = 0.0
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return self.converged and not (self.lost or self.mismatches or self.problems)

    def lines(self) -> list[str]:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        changes = ", ".join(f"{k} {v}" for k, v in sorted(self.changes.items())) or "none"
        runs = "; ".join(f"{hop}: {', '.join(map(str, n))}" for hop, n in self.runs.items())
        out = [
            f"files            {self.files} ({self.bytes / MiB:.1f} MiB at the end)",
            f"faults injected  {sum(self.faults.values())} ({faults}); {self.missed} aimed after the run had ended",
            f"source changes   {changes}",
            f"runs to converge {runs} (per round)",
            f"slowest stop     {self.stop_latency:.1f} s from SIGINT/SIGTERM to exit",
        ]
        if self.versions:
            out.append(f"versions tracked {self.versions}")
        out += [
            f"files lost       {len(self.lost)}",
            f"mismatched       {len(self.mismatches)}",
            f"problems         {len(self.problems)}",
            f"converged        {'yes' if self.converged else 'NO'}",
            f"wall time        {self.wall:.1f} s",
        ]
        for title, items in (("LOST", self.lost), ("MISMATCH", self.mismatches), ("PROBLEM", self.problems)):
            out += [f"{title}: {item}" for item in items[:50]]
        return out


class Log:
    """Timestamped lines to stress.log, and to stdout unless quiet."""

    def __init__(self, path: Path, quiet: bool):
        self.file = open(path, "a", encoding="utf-8")
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {message}"
        self.file.write(line + "\n")
        self.file.flush()
        if not self.quiet:
            print(line, flush=True)

    def close(self) -> None:
        self.file.close()


# -- the tree and its changes ---------------------------------------------------------
FOLDERS = ["alpha", "beta", "gamma dir", "ünïcödé", "深い フォルダ", "x", "data 2024"]
ODD_NAMES = ["naïve file {i}.txt", "ファイル {i}.bin", "café crème {i}", "with  two  spaces {i}.dat", "Ωmega-{i}.bin"]


def random_size(rng: random.Random) -> int:
    """Mostly small, some medium, a few above the S3 part size (multipart)."""
    roll = rng.random()
    if roll < 0.03:
        return 0
    if roll < 0.90:
        return int(2 ** rng.uniform(0, 16))  # 1 B .. 64 KiB, log-uniform
    if roll < 0.995:
        return int(2 ** rng.uniform(16, 20))  # 64 KiB .. 1 MiB
    return rng.randint(PART_SIZE + 1, 2 * PART_SIZE)


def random_name(rng: random.Random, serial: int) -> str:
    folders = [rng.choice(FOLDERS) for _ in range(rng.choice((0, 1, 1, 2, 2, 3)))]
    base = rng.choice(ODD_NAMES).format(i=serial) if rng.random() < 0.03 else f"f{serial:05d}.dat"
    return "/".join([*folders, base])


def write_file(root: Path, name: str, size: int, rng: random.Random) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rng.randbytes(size))


class SourceTree:
    """The source folder, and the seeded changes made to it between runs."""

    def __init__(self, root: Path, rng: random.Random):
        self.root, self.rng = root, rng
        self.serial = 0

    def build(self, count: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        sizes = [random_size(self.rng) for _ in range(count)]
        # At least two multipart files, whatever the seed.
        for i in range(min(2, count)):
            sizes[i] = max(sizes[i], PART_SIZE + 1 + i * MiB)
        for size in sizes:
            self._add(size)

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def _add(self, size: int | None = None) -> str:
        self.serial += 1
        name = random_name(self.rng, self.serial)
        while (self.root / name).exists() or any(p.is_file() for p in (self.root / name).parents):
            self.serial += 1
            name = random_name(self.rng, self.serial)
        write_file(self.root, name, random_size(self.rng) if size is None else size, self.rng)
        return name

    def change(self, fraction: float, counts: collections.Counter, folder_to_file: bool = True) -> list[str]:
        """Add, rewrite and delete about ``fraction`` of the files; now and then turn
        a file into a folder or (``folder_to_file``) a folder into a file. Returns what was done."""
        names = self.files()
        n = max(3, int(len(names) * fraction))
        done = []
        for _ in range(n):
            weights = [30, 35, 30, 3, 2 if folder_to_file else 0]
            kind = self.rng.choices(["add", "rewrite", "delete", "file-to-folder", "folder-to-file"], weights)[0]
            names = names or self.files()
            if kind == "add" or not names:
                done.append(f"add {self._add()}")
                counts["add"] += 1
                continue
            victim = self.rng.choice(names)
            names.remove(victim)
            path = self.root / victim
            if kind == "rewrite":
                # Another size, so the change shows whatever the timestamps say:
                # a same-size rewrite within a second of the last copy is, by the
                # seed page's rules, not a change.
                old = path.stat().st_size
                size = random_size(self.rng)
                while size == old:
                    size = random_size(self.rng)
                write_file(self.root, victim, size, self.rng)
            elif kind == "delete":
                path.unlink()
            elif kind == "file-to-folder":
                path.unlink()
                write_file(self.root, f"{victim}/inside.dat", random_size(self.rng), self.rng)
            else:
                folder = path.parent
                if folder == self.root or sum(1 for p in folder.rglob("*") if p.is_file()) > 5:
                    continue  # only small folders: a whole top folder would be most of the tree
                shutil.rmtree(folder)
                write_file(self.root, folder.relative_to(self.root).as_posix(), random_size(self.rng), self.rng)
                names = self.files()
                victim = folder.relative_to(self.root).as_posix()
            done.append(f"{kind} {victim}")
            counts[kind] += 1
        self._prune_empty()
        return done

    def _prune_empty(self) -> None:
        # Empty folders are not files: no backend shows them, so none should stay.
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()


# -- reading a side by BLAKE3 -----------------------------------------------------------
class Hasher:
    """BLAKE3 of files on this machine, remembered while a file's identity holds."""

    def __init__(self):
        self.cache: dict[tuple, str] = {}

    def digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        found = self.cache.get(key)
        if found is None:
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if st.st_size > 8 * MiB else 1)
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(MiB), b""):
                    hasher.update(chunk)
            found = self.cache[key] = hasher.hexdigest()
        return found

    def tree(self, root: Path) -> dict[str, str]:
        """Every file below ``root`` (name relative, with '/') -> BLAKE3."""
        out = {}
        if not root.exists():
            return out
        for folder, _dirs, files in os.walk(root):
            for f in files:
                path = Path(folder, f)
                out[path.relative_to(root).as_posix()] = self.digest(path)
        return out


def temp_files(root: Path) -> list[str]:
    """The temporary files of unfinished writes below ``root``."""
    names = (Path(folder, f).relative_to(root).as_posix() for folder, _dirs, files in os.walk(root) for f in files)
    return [n for n in names if is_temp(n)]


def origin(name: str) -> str:
    """The name a file had before retention renamed it (``a/2026….old.b`` -> ``a/b``)."""
    folder, slash, base = name.rpartition("/")
    return folder + slash + RETAINED_PREFIX.sub("", base)


def is_retained(name: str) -> bool:
    return bool(RETAINED_PREFIX.match(name.rpartition("/")[2]))


def is_temp(name: str) -> bool:
    return bool(TEMP_NAME.match(name.rpartition("/")[2]))


def mirror_problems(src: dict[str, str], dst: dict[str, str], retention: bool, what: str) -> list[str]:
    """How ``dst`` differs from an exact mirror of ``src`` (with --retention: plus kept versions)."""
    out = []
    for name, digest in sorted(src.items()):
        if name not in dst:
            out.append(f"{what}: {name} is missing")
        elif dst[name] != digest:
            out.append(f"{what}: {name} differs (BLAKE3 {dst[name][:12]} != {digest[:12]})")
    for name in sorted(dst.keys() - src.keys()):
        if not (retention and is_retained(name)):
            out.append(f"{what}: {name} should not be there")
    return out


def lost_versions(seen: set[tuple[str, str]], final: dict[str, str], what: str) -> list[str]:
    """Versions seen at a destination that are no longer there under any name of theirs."""
    kept = {(origin(name), digest) for name, digest in final.items()}
    return [
        f"{what}: {name} (BLAKE3 {digest[:12]}) is gone"
        for name, digest in sorted(seen)
        if final.get(name) != digest and (origin(name), digest) not in kept
    ]


# -- one hop, and the faults -------------------------------------------------------------
@dataclasses.dataclass
class Hop:
    name: str
    source: str
    destination: str
    src_options: dict[str, str]
    dst_options: dict[str, str]
    source_dir: Path  # where the source's files are on this machine
    destination_dir: Path
    faults: tuple[str, ...]  # the kinds of fault that make sense here
    listing: float = 0.5  # seconds from the start of the last run to the end of its listing
    copying: float = 2.0  # seconds from the end of the listing to the end of the last run with work

    def command(self, retention: bool, report: Path) -> list[str]:
        cmd = [sys.executable, "-m", "synctool", self.source, self.destination, "-y",
               "--report", str(report), "--backend-retry-delay", "250ms", "--log-level", "Retry"]  # fmt: skip
        if retention:
            cmd.append("--retention")
        for flag, options in (("--src-options", self.src_options), ("--dst-options", self.dst_options)):
            if options:
                cmd += [flag, *(f"{k}={v}" for k, v in options.items())]
        return cmd


@dataclasses.dataclass
class RunOutcome:
    code: int
    seconds: float
    fault: str | None  # the kind injected, None if none landed
    report: dict | None
    workers: int  # worker processes seen (a run with nothing to copy starts none)


def worker_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(proc.pid).children(recursive=True)
    return []


class Stress:
    def __init__(self, cfg: Config, workdir: Path, s3: S3Server, ssh: SSHServer, log: Log):
        self.cfg, self.workdir, self.s3, self.ssh, self.log = cfg, workdir, s3, ssh, log
        self.result = Result(workdir=str(workdir))
        self.tree_rng = random.Random(cfg.seed)
        self.fault_rng = random.Random(cfg.seed * 7919 + 1)
        self.hasher = Hasher()
        self.source = SourceTree(workdir / "source", self.tree_rng)
        self.seen: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
        self.logs = workdir / "runs"
        self.logs.mkdir(exist_ok=True)
        self.run_serial = 0
        self.restart_errors: list[RuntimeError] = []
        s3_dir = s3.root / BUCKET / PREFIX
        s3_url = f"s3://{BUCKET}/{PREFIX}"
        s3_opts = {**s3.synctool_options(), "s3-part-size": f"{PART_SIZE // MiB}MiB"}
        sftp_dir = workdir / "sftp"
        sftp_url, ssh_opts = ssh.url(str(sftp_dir)), ssh.synctool_options()
        self.hops = [
            Hop("local→s3", str(self.source.root), s3_url, {}, s3_opts, self.source.root, s3_dir,
                ("worker-kill", "sigint", "sigterm", "s3-restart")),
            Hop("s3→sftp", s3_url, sftp_url, s3_opts, ssh_opts, s3_dir, sftp_dir,
                ("worker-kill", "sigint", "sigterm", "s3-restart", "sftp-cut")),
            Hop("sftp→local", sftp_url, str(workdir / "local"), ssh_opts, {}, sftp_dir, workdir / "local",
                ("worker-kill", "sigint", "sigterm", "sftp-cut")),
        ]  # fmt: skip

    # -- the whole run ------------------------------------------------------------
    def run(self) -> Result:
        started = time.monotonic()
        cfg = self.cfg
        self.log(f"building {cfg.files} files (seed {cfg.seed}) in {self.source.root}")
        self.source.build(cfg.files)
        self.s3.create_bucket(BUCKET)
        budget = self._deal_faults()
        for rnd in range(cfg.rounds):
            if rnd:
                self._change_source(f"round {rnd}")
            for h, hop in enumerate(self.hops):
                runs = self._converge(hop, rnd, budget[rnd][h])
                self.result.runs.setdefault(hop.name, []).append(runs)
                if runs == 0:
                    self.result.converged = False
                    self.log(f"{hop.name} did not converge in round {rnd}: stopping")
                    return self._finish(started)
        self._final_checks()
        return self._finish(started)

    def _finish(self, started: float) -> Result:
        r = self.result
        files = self.hasher.tree(self.source.root)
        r.files = len(files)
        r.bytes = sum((self.source.root / n).stat().st_size for n in files)
        r.versions = sum(len(v) for v in self.seen.values())
        r.wall = time.monotonic() - started
        return r

    def _deal_faults(self) -> list[list[int]]:
        """Spread the faults over (round, hop) at random."""
        budget = [[0] * len(self.hops) for _ in range(self.cfg.rounds)]
        for _ in range(self.cfg.faults):
            budget[self.fault_rng.randrange(self.cfg.rounds)][self.fault_rng.randrange(len(self.hops))] += 1
        return budget

    def _change_source(self, why: str) -> None:
        # With --retention a folder never empties (its kept versions stay in
        # it), so a file of its name can never land on a destination that has
        # real folders: synctool reports that copy as failed at every run.
        done = self.source.change(self.cfg.change_fraction, self.result.changes, folder_to_file=not self.cfg.retention)
        self.log(f"changed the source ({why}): {len(done)} change(s): " + "; ".join(done[:8]) + (" …" if len(done) > 8 else ""))

    # -- one hop until it converges ---------------------------------------------------
    def _converge(self, hop: Hop, rnd: int, faults: int) -> int:
        """Run ``hop`` until a clean run succeeds and the next finds nothing to do.

        Returns the runs it took (the no-op check not counted), 0 if it never did.
        """
        bound = 4 * faults + 8
        runs = misses = 0
        clean_ok = False
        last_miss: RunOutcome | None = None
        while runs < bound:
            if clean_ok:
                outcome = self._run(hop, rnd, None, (False, 0.0))
                planned = _planned(outcome.report)
                if outcome.code == 0 and planned == 0:
                    self.log(f"{hop.name} converged in round {rnd} after {runs} run(s)")
                    return runs
                self._problem(
                    f"{hop.name} round {rnd}: a clean run exited 0, yet the next run planned {planned} "
                    f"change(s) and exited {outcome.code}"
                )
                clean_ok = False
                continue
            runs += 1
            kind = self._pick(hop, last_miss) if faults else None
            if kind and hop is self.hops[0] and runs > 1:
                # Give the fault some copying to land in.
                self._change_source(f"between runs of {hop.name}")
            outcome = self._run(hop, rnd, kind, self._aim(hop, last_miss) if kind else (False, 0.0))
            last_miss = None
            if outcome.fault:
                faults -= 1
                misses = 0
            elif kind:
                # The run ended first: it had little or nothing to copy. The
                # next try aims inside a run that short; after three in a row
                # this hop has nothing left to interrupt.
                self.result.missed += 1
                misses += 1
                if misses == 3:
                    faults, misses = faults - 1, 0
                else:
                    last_miss = outcome
            elif outcome.code == 0:
                clean_ok = True
            else:
                self._problem(f"{hop.name} round {rnd}: a run without a fault exited {outcome.code} ({_errors(outcome.report)})")
        return 0

    def _pick(self, hop: Hop, last_miss: RunOutcome | None) -> str:
        """A kind of fault for this hop; none that needs workers after a run that started none."""
        kinds = [k for k in hop.faults if k != "worker-kill" or last_miss is None or last_miss.workers]
        return self.fault_rng.choice(kinds)

    def _aim(self, hop: Hop, last_miss: RunOutcome | None) -> tuple[bool, float]:
        """When a fault lands: (after the listing?, delay in seconds).

        Most land a while into the copying, a few while the run starts and
        lists; after a miss, anywhere inside a run as short as the one missed.
        """
        if last_miss is not None:
            return False, self.fault_rng.uniform(0.05, max(0.1, last_miss.seconds))
        if self.fault_rng.random() < 0.7:
            return True, self.fault_rng.uniform(0, hop.copying)
        return False, self.fault_rng.uniform(0.05, hop.listing)

    def _run(self, hop: Hop, rnd: int, kind: str | None, aim: tuple[bool, float]) -> RunOutcome:
        """One synctool process; with ``kind``, that fault at the moment ``aim`` says."""
        self.run_serial += 1
        tag = f"{self.run_serial:03d}-r{rnd}-{hop.name.replace('→', '-')}"
        report_path, out_path = self.logs / f"{tag}.json", self.logs / f"{tag}.log"
        before = self._files(hop.destination_dir)
        # A run killed whole (a hang) leaves its temporary files to the next run.
        debris_before = set(temp_files(hop.destination_dir))
        if self.cfg.retention:
            self.seen[hop.name].update(before.items())
        in_copying, delay = aim
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(hop.command(self.cfg.retention, report_path), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        started = time.monotonic()
        injected: str | None = None
        signalled_at: float | None = None
        expect = {0}
        children: dict[int, psutil.Process] = {}
        restart: threading.Thread | None = None
        next_look = 0.0
        listed: float | None = None  # when the run said it had listed both sides
        while proc.poll() is None:
            now = time.monotonic() - started
            if now >= next_look:
                next_look = now + 0.1
                children.update((c.pid, c) for c in worker_processes(proc))
                if listed is None and b"listed " in out_path.read_bytes():
                    listed = now
            at = (listed + delay if listed is not None else None) if in_copying else delay
            # A stop signal is sent once synctool takes it: before, Python
            # itself answers (with a traceback while importing).
            stoppable = kind not in ("sigint", "sigterm") or takes_sigterm(proc.pid)
            if kind and not injected and at is not None and now >= at and stoppable:
                injected, expect, restart = self._inject(kind, proc, children)
                if injected:
                    self.log(f"run {tag}: {kind} at {now:.2f} s")
                    self.result.faults[kind] += 1
                    signalled_at = time.monotonic() if kind in ("sigint", "sigterm") else None
            if now > RUN_TIMEOUT:
                self._problem(f"run {tag} hung for {RUN_TIMEOUT:.0f} s; killed")
                _kill_tree(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.02)
        seconds = time.monotonic() - started
        if restart is not None:
            restart.join()
            if self.restart_errors:
                raise self.restart_errors.pop()
        if signalled_at is not None:
            latency = time.monotonic() - signalled_at
            self.result.stop_latency = max(self.result.stop_latency, latency)
            if latency > STOP_BOUND:
                self._problem(f"run {tag}: took {latency:.1f} s to stop after {injected}")
        report = _read_json(report_path)
        output = out_path.read_bytes()
        if injected in ("sigint", "sigterm") and proc.returncode == 1 and b"Fatal Python error" in output:
            expect = {1}  # the signal came while the interpreter itself was starting
        elif injected in ("sigint", "sigterm") and (shown := [t.decode() for t in NOT_PRINTED if t in output]):
            self._problem(f"run {tag}: {injected} printed {shown} (see {out_path})")
        if proc.returncode not in expect:
            self._problem(f"run {tag}: exit code {proc.returncode} after {injected or 'no fault'}, expected {sorted(expect)} ({_errors(report)}; see {out_path})")
        self._check_leftovers(tag, children, hop, injected, debris_before)
        if proc.returncode == 1 and self._files(hop.destination_dir) != before:
            self._problem(f"run {tag} exited 1 (a failed listing or connection: nothing may change), yet the destination changed")
        if proc.returncode == 0:
            # The worst thing a sync can do is report success over a broken copy.
            wrong = mirror_problems(self._tree(hop.source_dir), self._tree(hop.destination_dir), self.cfg.retention, hop.name)
            if wrong:
                self._problem(f"run {tag} exited 0 after {injected or 'no fault'}, but the destination is no mirror: {wrong[:3]}")
        if kind and not injected:
            where = f"{delay:.2f} s after the listing" if in_copying else f"{delay:.2f} s"
            self.log(f"run {tag}: {kind} aimed at {where} missed: the run ended first")
        if listed is not None:
            hop.listing = listed
        if listed is not None and report and report.get("copied") and injected not in ("sigint", "sigterm"):
            hop.copying = seconds - listed  # where the next faults are aimed
        self.log(f"run {tag}: exit {proc.returncode} in {seconds:.1f} s"
                 + (f", copied {report.get('copied')} deleted {report.get('deleted')} renamed {report.get('renamed')}"
                    f" failed {len(report.get('failed', ()))} retries {report.get('retries')}" if report else ""))  # fmt: skip
        return RunOutcome(proc.returncode, seconds, injected, report, len(children))

    def _inject(self, kind: str, proc: subprocess.Popen, children: dict[int, psutil.Process]):
        """Do the fault now; returns (kind or None if it could not land, exit codes allowed, a thread to join)."""
        workers = worker_processes(proc)
        if kind == "worker-kill":
            if not workers:
                return None, {0}, None  # not started yet: try again at the next look
            victim = self.fault_rng.choice(sorted(workers, key=lambda p: p.pid))
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
            # The coordinator replaces it and re-queues its jobs: the run still succeeds.
            return kind, {0}, None
        if kind in ("sigint", "sigterm"):
            signum = signal.SIGINT if kind == "sigint" else signal.SIGTERM
            # 0: the signal came after the work was done (every exit 0 is
            # checked to be a true mirror). Before the workers exist the
            # process may still be importing, where Python's default handling
            # applies; so it may at the very end, once Python is shutting down.
            expect = {0, 130} if workers else {0, 130, -signum}
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            return kind, expect, None
        if kind == "s3-restart":
            down = self.fault_rng.uniform(*S3_DOWNTIME)
            self.s3.kill()

            def start_again() -> None:
                time.sleep(down)
                try:
                    self.s3.start()
                except RuntimeError as exc:  # re-raised once the run has ended
                    self.restart_errors.append(exc)

            thread = threading.Thread(target=start_again, name="s3-restart")
            thread.start()
            # Down longer than the retries wait: some files, or a listing, fail.
            return kind, {0, 1, 3}, thread
        if kind == "sftp-cut":
            self.ssh.cut()
            # Workers and listings reconnect and retry. A cut while the run
            # opens its first connection fails it at once (an unreachable
            # backend is fatal, exit 1), with nothing changed.
            return kind, {0, 1}, None
        raise ValueError(kind)

    def _check_leftovers(
        self, tag: str, children: dict[int, psutil.Process], hop: Hop, injected: str | None, debris_before: set[str]
    ) -> None:
        """No worker outlives its run; an interrupted run removes its temporary files."""
        for pid, child in children.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    self._problem(f"run {tag}: worker process {pid} outlived the run")
                    child.kill()
        if injected in ("sigint", "sigterm"):
            debris = sorted(set(temp_files(hop.destination_dir)) - debris_before)
            if debris:
                self._problem(f"run {tag}: {len(debris)} temporary file(s) left after {injected}: {debris[:3]}")

    def _files(self, root: Path) -> dict[str, str]:
        """A side's files by BLAKE3, without the temporary files of unfinished writes."""
        return {n: d for n, d in self._tree(root).items() if not is_temp(n)}

    def _tree(self, root: Path) -> dict[str, str]:
        """Every file of a side by BLAKE3, as a client of that side sees it.

        The S3 bucket's objects are files in rclone's folder, but not every
        file there is an object: rclone keeps the parts of a multipart upload
        beside them (``.rclone_temp_multipart_*``) and leaves them behind when
        it is killed. So the names come from the S3 listing, the bytes from
        the folder.
        """
        if root != self.hops[0].destination_dir:
            return self.hasher.tree(root)
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/")
        names = [obj["Key"][len(PREFIX) + 1 :] for page in pages for obj in page.get("Contents", ())]
        return {name: self.hasher.digest(root / name) if (root / name).is_file() else "not a file" for name in names}

    def _problem(self, text: str) -> None:
        self.log("PROBLEM: " + text)
        self.result.problems.append(text)

    # -- the end ----------------------------------------------------------------------
    def _final_checks(self) -> None:
        r, retention = self.result, self.cfg.retention
        source = self.hasher.tree(self.source.root)
        for hop in self.hops:
            src, dst = self._tree(hop.source_dir), self._tree(hop.destination_dir)
            r.mismatches += mirror_problems(src, dst, retention, hop.name)
            live = {n: d for n, d in dst.items() if not is_retained(n)}
            if retention:
                r.mismatches += mirror_problems(source, live, False, f"source→{hop.name.split('→')[1]}")
                self.seen[hop.name].update(self._files(hop.destination_dir).items())
                r.lost += lost_versions(self.seen[hop.name], dst, hop.name)
        if uploads := self._unfinished_uploads():
            self._problem(f"{len(uploads)} unfinished multipart upload(s) left on the S3 server: {[u['Key'] for u in uploads[:3]]}")
        self.log(f"checked {len(source)} source files against every destination by BLAKE3")


    def _unfinished_uploads(self) -> list[dict]:
        from botocore.exceptions import ClientError

        try:
            return self.s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        except ClientError as exc:
            # rclone keeps uploads in memory: after a restart it knows of none,
            # and says so with this error rather than an empty list.
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return []
            raise


def _planned(report: dict | None) -> int:
    if not report:
        return -1
    return report["planned_copies"] + report["planned_deletes"] + report["planned_renames"] + len(report["failed"])


def _errors(report: dict | None) -> str:
    if not report:
        return "no report"
    items = [*report.get("errors", []), *(_failure(f) for f in report.get("failed", []))]
    return "; ".join(items[:3]) or "no errors reported"


def _failure(item) -> str:
    """One entry of a report's ``failed`` list: a [name, error] pair or a {name, error} object."""
    if isinstance(item, dict):
        return f"{item.get('name')}: {item.get('error')}"
    name, error = item
    return f"{name}: {error}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kill_tree(proc: subprocess.Popen) -> None:
    for child in worker_processes(proc):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.kill()


# -- entry points --------------------------------------------------------------------------
def _scratch(files: int) -> str | None:
    """/dev/shm when it has room, else the system's temporary folder.

    tmpfs is memory: the tree lives there five times over (source, three
    destinations, kept versions), about 100 KiB a file each time.
    """
    needed = files * 100 * KiB * 5 * 2  # twice over: leave the machine room
    if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > needed:
        return "/dev/shm"
    return None


def stress(cfg: Config) -> Result:
    """Build the tree, start the servers, run the hops under faults, check everything.

    A temporary work folder is removed afterwards only when everything passed
    (and --keep was not given): otherwise every run's log and report stay there.
    """
    if cfg.workdir is not None:
        workdir = cfg.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise SystemExit(f"--workdir {workdir} is not empty: the run needs a fresh folder")
    else:
        workdir = Path(tempfile.mkdtemp(prefix="synctool-stress-", dir=_scratch(cfg.files)))
    result: Result | None = None
    log = Log(workdir / "stress.log", cfg.quiet)
    try:
        with rclone_s3(workdir / "s3") as s3, openssh_sftp(workdir / "sshd") as ssh:
            result = Stress(cfg, workdir, s3, ssh, log).run()
        for line in result.lines():
            log(line)
    finally:
        log.close()
        if cfg.workdir is None and not cfg.keep and result is not None and result.ok:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, help="files in the tree (default 2000; --short: 150)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    parser.add_argument("--retention", action="store_true", help="sync with --retention and check that no version is lost")
    parser.add_argument("--faults", type=int, help="faults to inject in all (default 12; --short: 6)")
    parser.add_argument("--rounds", type=int, help="rounds of hops; each after the first changes the source (default 3; --short: 2)")
    parser.add_argument("--short", action="store_true", help="the test suite's size (under a minute)")
    parser.add_argument("--workdir", type=Path, help="work here (an empty folder) and keep it (default: a temporary folder under /dev/shm if it has room)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = parser.parse_args(argv)
    given = {k: v for k, v in (("files", args.files), ("faults", args.faults), ("rounds", args.rounds)) if v is not None}
    common = {"seed": args.seed, "retention": args.retention, "workdir": args.workdir, "keep": args.keep, **given}
    cfg = Config.short(**common) if args.short else Config(**common)
    result = stress(cfg)
    if not result.ok:
        print(f"stress run FAILED; runs' logs and reports are in {result.workdir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
