#!/usr/bin/env python
"""Listing and syncing millions of objects: synctool against rclone, time and peak memory.

    python scripts/scale.py                      # 1,000,000 objects, local and S3 (long)
    python scripts/scale.py --count 20000        # a smoke run
    python scripts/scale.py --count 1000000 --targets local --where /var/tmp/scale
    python scripts/scale.py --count 100000 --what noop,first --repeat 2
    python scripts/scale.py --count 100000000 --what plan   # no files made

It makes ``--count`` empty files in folders of 1,000 (100 folders to a top
folder) twice: a local source, and the folder that ``rclone serve s3``
serves as bucket ``scale``, as hard links to the first (each file there is
an object; making files is far quicker than a PUT each). Both trees carry one mtime, so a sync
between them has nothing to do and measures listing and planning alone.
The trees are kept under ``--where`` and reused by the next run of the same
count.

Then, for each target, one after the other, each in a process tree of its
own whose wall time, CPU time and peak RSS (the sum over the tree, sampled every 20 ms,
as scripts/bench.py does) are printed:

* synctool's listing (``Backend.list()``, every entry read and dropped) and
  ``rclone lsf -R``, at rclone's default and with ``--fast-list``;
* ``synctool SRC DST --dry-run`` end to end against ``rclone sync --dry-run``
  and ``rclone check --size-only`` (no hashing: both sides are listed and
  compared), each rclone at its default and with ``--fast-list``.

* with ``--what noop``: a real sync with nothing to do (``synctool -y``,
  ``rclone sync``, both at their defaults otherwise);
* with ``--what first``: the first sync of the source into an empty
  destination (a new folder, or a new bucket), which copies every file;
  also the time until the first file shows at the destination. The copy is
  counted afterwards (a short one is marked failed), then removed.

* with ``--what plan``: planning alone at any count, 10M or 100M entries
  included, with no files made: ``synctool --dry-run`` between two listings
  that scripts/generated_backend.py makes up as they are read, the second
  differing from the first at every ``DIFFER_EVERY``-th name. No rclone row:
  rclone cannot read those listings. The count of "would copy" and "would
  delete" lines is checked against what the listings hold.

``--what`` picks among ``listing``, ``dry-run``, ``noop``, ``first`` and
``plan`` (default: the first two); ``--repeat`` runs each pair that many
times, synctool and rclone taking turns.

Targets: ``local`` (the source folder; the dry runs go to the served folder
read as a local folder) and ``s3`` (the bucket; the dry runs go from the
local source to the bucket). The S3 server's own memory is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.bench import Run, timed  # noqa: E402
from scripts.servers import S3Server, real_executable, rclone_s3  # noqa: E402

BUCKET = "scale"
MTIME = 1_500_000_000  # one mtime for every file of both trees
PER_FOLDER = 1_000
FOLDERS_PER_TOP = 100
MiB = 1 << 20
#: How often the made-up mirror of ``--what plan`` differs from its source.
DIFFER_EVERY = 100_000


def names(count: int):
    """``t000/d000/f0000``: folders of PER_FOLDER files, FOLDERS_PER_TOP folders to a top folder."""
    for i in range(count):
        folder = i // PER_FOLDER
        yield f"t{folder // FOLDERS_PER_TOP:03}/d{folder % FOLDERS_PER_TOP:03}/f{i % PER_FOLDER:04}"


def make_tree(root: Path, count: int, like: Path | None = None) -> None:
    """``count`` empty files below ``root`` (hard links to those of ``like``:
    the same names, sizes and times, made several times faster), unless a
    complete tree of that count is there."""
    done = root.parent / f".{root.name}-{count}.done"
    if done.exists():
        return
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    if like is not None:
        shutil.copytree(like, root, copy_function=os.link)
    else:
        made: set[str] = set()
        for name in names(count):
            folder = name.rpartition("/")[0]
            if folder not in made:
                (root / folder).mkdir(parents=True, exist_ok=True)
                made.add(folder)
            path = os.path.join(root, name)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.utime(path, (MTIME, MTIME))
    done.touch()
    print(f"made {count:,} files in {root} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def list_only(url: str, options: list[str]) -> None:
    """Child process: read a whole listing through synctool's backend and print its length."""
    from synctool.backends import BackendSpec, open_backend

    backend = open_backend(BackendSpec(url, dict(option.split("=", 1) for option in options)))
    backend.prepare(create=False)
    count = sum(1 for _ in backend.list())
    backend.close()
    print(count)


class Scale:
    def __init__(self, args, where: Path, s3: S3Server | None):
        self.args, self.where, self.s3 = args, where, s3
        self.rclone = real_executable("rclone")
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(s3.rclone_env("scale") if s3 else {})}
        self.log = where / "scale.log"
        self.rows: list[tuple[str, str, Run, float | None, float]] = []
        self.runs = 0  # first syncs so far: each gets a destination of its own

    def synctool(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "synctool", *args]

    def s3_options(self) -> list[str]:
        assert self.s3 is not None
        return [f"{k}={v}" for k, v in self.s3.synctool_options().items()]

    def measure(self, target: str, what: str, cmd: list[str], first_file: Path | None = None) -> Run:
        """Run ``cmd``; with ``first_file`` (a destination folder on disk),
        note when the first copied file shows below it."""
        watch = _FirstFile(first_file) if first_file is not None else None
        cpu_before = _children_cpu()
        run = timed([cmd], self.log, self.env, self.args.cap)
        cpu = _children_cpu() - cpu_before
        first = watch.stop() if watch is not None else None
        self.rows.append((target, what, run, first, cpu))
        state = "capped" if run.capped else (run.error or "ok")
        shown = f"  first file {first:6.2f} s" if first is not None else ""
        print(f"{target:6} {what:42} {run.seconds:8.1f} s  cpu {cpu:7.1f} s  peak {run.peak_rss / MiB:5.0f} MiB{shown}  load {run.load:.1f}  {state}",
              file=sys.stderr, flush=True)  # fmt: skip
        return run

    def warm_up(self, targets: list[str]) -> None:
        """List every tree once, untimed: the first command measured would
        otherwise pay for reading the folders from disk for all the others."""
        trees = [str(self.where / "src"), str(self.where / "s3" / BUCKET)] + ([f"scale:{BUCKET}"] if "s3" in targets else [])
        for tree in trees:
            subprocess.run(self.rclone_cmd("lsf", "-R", tree, fast=False), env=self.env, stdout=subprocess.DEVNULL, check=True)

    def rclone_cmd(self, *args: str, fast: bool) -> list[str]:
        return [self.rclone, *args, "--config", "/dev/null", "-q", *(["--fast-list"] if fast else [])]

    def plan(self) -> None:
        """A dry run between two made-up listings of ``--count`` entries each."""
        count = self.args.count
        source = f"generated://source?count={count}"
        mirror = f"generated://mirror?count={count}&differ-every={DIFFER_EVERY}"
        told_from = self.log.stat().st_size if self.log.exists() else 0
        cmd = [sys.executable, __file__, "--generated", source, mirror, "--dry-run", "--log-level", "warning"]
        run = self.measure("made-up", "synctool --dry-run (plan only)", cmd)
        with open(self.log, "rb") as log:
            log.seek(told_from)
            told = log.read().decode(errors="replace").splitlines()
        # Every DIFFER_EVERY-th file is older at the mirror (a copy), and
        # another is there under a name of its own (a copy and a delete).
        older = len(range(0, count, DIFFER_EVERY))
        replaced = len(range(DIFFER_EVERY // 2, count, DIFFER_EVERY))
        copies = sum(line.startswith("would copy ") for line in told)
        deletes = sum(line.startswith("would delete ") for line in told)
        if (copies, deletes) != (older + replaced, replaced) and not run.error:
            run.error = f"{copies:,} copies and {deletes:,} deletes planned, not {older + replaced:,} and {replaced:,}"
            print(f"       {run.error}", file=sys.stderr, flush=True)

    def run_target(self, target: str) -> None:
        for _ in range(self.args.repeat):
            if "listing" in self.args.what or "dry-run" in self.args.what:
                self.list_and_plan(target)
            if "noop" in self.args.what:
                self.noop(target)
            if "first" in self.args.what:
                self.first(target)

    def noop(self, target: str) -> None:
        """A real sync into the served tree, which holds the source already."""
        src = str(self.where / "src")
        if target == "local":
            dst, dst_rclone, dst_opts = str(self.where / "s3" / BUCKET), str(self.where / "s3" / BUCKET), []
        else:
            dst, dst_rclone, dst_opts = f"s3://{BUCKET}", f"scale:{BUCKET}", ["--dst-options", *self.s3_options()]
        self.measure(target, "synctool -y (nothing to do)", self.synctool(src, dst, "-y", *dst_opts))
        self.measure(target, "rclone sync (nothing to do)", self.rclone_cmd("sync", src, dst_rclone, fast=False))

    def first(self, target: str) -> None:
        """A sync into an empty destination, for each tool, removed afterwards."""
        src = str(self.where / "src")
        for tool in ("synctool", "rclone"):
            self.runs += 1
            name = f"first{self.runs}"
            if target == "local":
                on_disk = self.where / name
                dst = dst_rclone = str(on_disk)
                dst_opts: list[str] = []
            else:
                assert self.s3 is not None
                self.s3.create_bucket(name)
                on_disk = self.where / "s3" / name
                dst, dst_rclone, dst_opts = f"s3://{name}", f"scale:{name}", ["--dst-options", *self.s3_options()]
            cmd = self.synctool(src, dst, "-y", *dst_opts) if tool == "synctool" else self.rclone_cmd("sync", src, dst_rclone, fast=False)
            run = self.measure(target, f"{tool} first sync", cmd, first_file=on_disk)
            copied = _count_files(on_disk)
            if copied != self.args.count and not run.error:
                run.error = f"{copied:,} files at the destination, not {self.args.count:,}"
                print(f"       {run.error}", file=sys.stderr, flush=True)
            shutil.rmtree(on_disk, ignore_errors=True)

    def list_and_plan(self, target: str) -> None:
        src = str(self.where / "src")
        if target == "local":
            listed, listed_rclone, listed_opts = src, src, []
            dst, dst_rclone, dst_opts = str(self.where / "s3" / BUCKET), str(self.where / "s3" / BUCKET), []
        else:
            listed, listed_rclone, listed_opts = f"s3://{BUCKET}", f"scale:{BUCKET}", ["--src-options", *self.s3_options()]
            dst, dst_rclone, dst_opts = f"s3://{BUCKET}", f"scale:{BUCKET}", ["--dst-options", *self.s3_options()]
        list_opts = listed_opts[1:]
        self.measure(target, "synctool listing", [sys.executable, __file__, "--list-only", listed, *list_opts])
        fasts = (False,) if target == "local" else (False, True)  # --fast-list does nothing for a local folder
        for fast in fasts:
            self.measure(target, f"rclone lsf -R{' --fast-list' if fast else ''}",
                         self.rclone_cmd("lsf", "-R", "--files-only", listed_rclone, fast=fast))  # fmt: skip
        self.measure(target, "synctool --dry-run", self.synctool(src, dst, "--dry-run", "--log-level", "warning", *dst_opts))
        for fast in fasts:
            tail = " --fast-list" if fast else ""
            self.measure(target, f"rclone sync --dry-run{tail}", self.rclone_cmd("sync", "--dry-run", src, dst_rclone, fast=fast))
            self.measure(target, f"rclone check --size-only{tail}",
                         self.rclone_cmd("check", "--size-only", src, dst_rclone, fast=fast))  # fmt: skip

    def table(self) -> str:
        lines = [f"{self.args.count:,} objects ({PER_FOLDER:,} to a folder); wall time and peak RSS of the client's process tree",
                 "(CPU: user + system seconds of that tree; the load: the machine's 1-minute average at the start)",
                 "", "| target | command | seconds | CPU s | peak MiB | first file s | load |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for target, what, run, first, cpu in self.rows:
            note = " (capped)" if run.capped else (" (failed)" if run.error else "")
            shown = f"{first:.2f}" if first is not None else ""
            lines.append(f"| {target} | {what}{note} | {run.seconds:.1f} | {cpu:.1f} | {run.peak_rss / MiB:.0f} | {shown} | {run.load:.1f} |")
        return "\n".join(lines)


class _FirstFile:
    """Watch ``folder`` from now on: when does a finished file first show below it?

    Temporary names (synctool's ``.synctool-*``, rclone's ``*.partial``) do
    not count. The folder holds a few files at most while it is watched, so
    each look is cheap.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.started = time.perf_counter()
        self.seen: float | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.is_set():
            if _any_file(self.folder):
                self.seen = time.perf_counter() - self.started
                return
            self.done.wait(0.005)

    def stop(self) -> float | None:
        self.done.set()
        self.thread.join()
        return self.seen


def _children_cpu() -> float:
    """User and system seconds of the processes this one waited for, and of theirs:
    on a shared machine, the figure that the load moves least."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _any_file(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if any(not (f.startswith(".synctool-") or f.endswith(".partial")) for f in files):
            return True
    return False


def _count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="objects on each side")
    parser.add_argument("--targets", default="local,s3", help="comma-separated: local, s3")
    parser.add_argument("--where", type=Path, default=Path("/var/tmp/synctool-scale"), help="folder for the trees")
    parser.add_argument("--cap", type=float, default=3600, help="seconds after which one command is stopped")
    parser.add_argument("--what", default="listing,dry-run", help="comma-separated: listing, dry-run, noop, first, plan")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each pair, the tools taking turns")
    parser.add_argument("--list-only", nargs="+", metavar=("URL", "OPTION"), help=argparse.SUPPRESS)
    parser.add_argument("--generated", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list_only:
        list_only(args.list_only[0], args.list_only[1:])
        return
    if args.generated:
        from scripts.generated_backend import run_synctool

        run_synctool(args.generated)

    targets = [t for t in args.targets.split(",") if t]
    args.what = {w for w in args.what.split(",") if w}
    where = args.where / str(args.count)
    where.mkdir(parents=True, exist_ok=True)
    on_disk = bool(args.what - {"plan"})
    if on_disk:
        make_tree(where / "src", args.count)
        make_tree(where / "s3" / BUCKET, args.count, like=where / "src")
    s3_wanted = on_disk and "s3" in targets
    # rclone serve s3 keeps folder listings for --dir-cache-time (5 minutes by
    # default): kept for the whole run, every command finds the server as warm
    # as the one before it did.
    serving = rclone_s3(where / "s3", extra_args=["--dir-cache-time", "1000h"]) if s3_wanted else contextlib.nullcontext()
    with serving as s3:
        scale = Scale(args, where, s3)
        if "plan" in args.what:
            for _ in range(args.repeat):
                scale.plan()
        if on_disk:
            scale.warm_up(targets)
            for target in targets:
                scale.run_target(target)
    print(scale.table())


if __name__ == "__main__":
    main()
