#!/usr/bin/env python
"""Listing millions of objects: synctool against rclone, time and peak memory.

    python scripts/scale.py                      # 1,000,000 objects, local and S3 (long)
    python scripts/scale.py --count 20000        # a smoke run
    python scripts/scale.py --count 1000000 --targets local --where /var/tmp/scale

It makes ``--count`` empty files in folders of 1,000 (100 folders to a top
folder) twice: a local source, and the folder that ``rclone serve s3``
serves as bucket ``scale``, as hard links to the first (each file there is
an object; making files is far quicker than a PUT each). Both trees carry one mtime, so a sync
between them has nothing to do and measures listing and planning alone.
The trees are kept under ``--where`` and reused by the next run of the same
count.

Then, for each target, one after the other, each in a process tree of its
own whose wall time and peak RSS (the sum over the tree, sampled every 20 ms,
as scripts/bench.py does) are printed:

* synctool's listing (``Backend.list()``, every entry read and dropped) and
  ``rclone lsf -R``, at rclone's default and with ``--fast-list``;
* ``synctool SRC DST --dry-run`` end to end against ``rclone sync --dry-run``
  and ``rclone check --size-only`` (no hashing: both sides are listed and
  compared), each rclone at its default and with ``--fast-list``.

Targets: ``local`` (the source folder; the dry runs go to the served folder
read as a local folder) and ``s3`` (the bucket; the dry runs go from the
local source to the bucket). The S3 server's own memory is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
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
        self.rows: list[tuple[str, str, Run]] = []

    def synctool(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "synctool", *args]

    def s3_options(self) -> list[str]:
        assert self.s3 is not None
        return [f"{k}={v}" for k, v in self.s3.synctool_options().items()]

    def measure(self, target: str, what: str, cmd: list[str]) -> None:
        run = timed([cmd], self.log, self.env, self.args.cap)
        self.rows.append((target, what, run))
        state = "capped" if run.capped else (run.error or "ok")
        print(f"{target:6} {what:42} {run.seconds:8.1f} s  peak {run.peak_rss / MiB:7.0f} MiB  {state}",
              file=sys.stderr, flush=True)  # fmt: skip

    def warm_up(self, targets: list[str]) -> None:
        """List every tree once, untimed: the first command measured would
        otherwise pay for reading the folders from disk for all the others."""
        trees = [str(self.where / "src"), str(self.where / "s3" / BUCKET)] + ([f"scale:{BUCKET}"] if "s3" in targets else [])
        for tree in trees:
            subprocess.run(self.rclone_cmd("lsf", "-R", tree, fast=False), env=self.env, stdout=subprocess.DEVNULL, check=True)

    def rclone_cmd(self, *args: str, fast: bool) -> list[str]:
        return [self.rclone, *args, "--config", "/dev/null", "-q", *(["--fast-list"] if fast else [])]

    def run_target(self, target: str) -> None:
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
                 "", "| target | command | seconds | peak MiB |", "| --- | --- | ---: | ---: |"]  # fmt: skip
        for target, what, run in self.rows:
            note = " (capped)" if run.capped else (" (failed)" if run.error else "")
            lines.append(f"| {target} | {what}{note} | {run.seconds:.1f} | {run.peak_rss / MiB:.0f} |")
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="objects on each side")
    parser.add_argument("--targets", default="local,s3", help="comma-separated: local, s3")
    parser.add_argument("--where", type=Path, default=Path("/var/tmp/synctool-scale"), help="folder for the trees")
    parser.add_argument("--cap", type=float, default=3600, help="seconds after which one command is stopped")
    parser.add_argument("--list-only", nargs="+", metavar=("URL", "OPTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list_only:
        list_only(args.list_only[0], args.list_only[1:])
        return

    targets = [t for t in args.targets.split(",") if t]
    where = args.where / str(args.count)
    where.mkdir(parents=True, exist_ok=True)
    make_tree(where / "src", args.count)
    make_tree(where / "s3" / BUCKET, args.count, like=where / "src")
    s3_wanted = "s3" in targets
    # rclone serve s3 keeps folder listings for --dir-cache-time (5 minutes by
    # default): kept for the whole run, every command finds the server as warm
    # as the one before it did.
    serving = rclone_s3(where / "s3", extra_args=["--dir-cache-time", "1000h"]) if s3_wanted else contextlib.nullcontext()
    with serving as s3:
        scale = Scale(args, where, s3)
        scale.warm_up(targets)
        for target in targets:
            scale.run_target(target)
    print(scale.table())


if __name__ == "__main__":
    main()
