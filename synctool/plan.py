"""Decide what to do: a merge of two name-sorted listings (rclone's march).

The plan only decides; nothing here touches a backend. It follows the seed
page: copy what is missing, differs in size or is newer at the source; delete
(or, with --retention, rename) what is only at the destination.

What it never does: pick a name that is taken for a kept version, act on a
destination's symbolic link or on anything below one, or take one of
synctool's own files (temporary files, journals) for a user's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from synctool.backends.base import JOURNAL_RE, Backend, Entry, UnsafeName, check_name, is_journal
from synctool.march import march

#: ``20261128043100.old.name``: a version kept by --retention.
RETENTION_RE = re.compile(r"^\d{14}\.old\.")
STAMP_FORMAT = "%Y%m%d%H%M%S"
#: Retention names tried for one file before giving up: each one taken means
#: another writer is busy at the destination.
MAX_NAME_CONFLICTS = 100
#: A source dated further than this ahead of the clock gets a warning.
FUTURE_SLACK_SECONDS = 60.0
__all__ = ["JOURNAL_RE", "RETENTION_RE", "Copy", "Compare", "Plan", "RetentionNames", "make_plan", "retention_name"]


def basename(name: str) -> str:
    return name.rpartition("/")[2]


def is_retention_name(name: str) -> bool:
    return bool(RETENTION_RE.match(basename(name)))


def _kept_parts(name: str) -> Iterator[str]:
    """``name`` and its folders that are retention names: ``d/<stamp>.old.a/x``
    -> ``d/<stamp>.old.a``. Whatever lies below a kept folder is kept too."""
    if ".old." in name:  # most names have no part to look at
        for part in (*_ancestors(name), name):
            if is_retention_name(part):
                yield part


def _ancestors(name: str) -> Iterable[str]:
    """``a/b/c`` -> ``a``, ``a/b``."""
    for i, ch in enumerate(name):
        if ch == "/":
            yield name[:i]


class RetentionNames:
    """Where --retention keeps old versions: ``<stamp>.old.<name>`` in the same folder.

    A name already taken (by a version kept earlier in the same second, by a
    source file of that form, or earlier in this run) is never chosen: the
    stamp moves on one second at a time until the name is free, so the
    format stays Duplicati's. A name longer than the destination allows
    (``max_segment_bytes``) keeps its start and gains ``~`` and 16 hex digits
    of the SHA-256 of the whole original name, which tell apart two long
    names that start alike: ``<stamp>.old.<start of name>~<hash>``.
    """

    def __init__(self, stamp: str, taken: Iterable[str] = (), max_segment_bytes: int | None = None):
        self.stamp = datetime.strptime(stamp, STAMP_FORMAT)
        self.first_stamp = stamp
        self.taken = set(taken)
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()  # renames choose names from several threads

    def name_for(self, name: str) -> str:
        """A free retention name for ``name``, now taken."""
        when = self.stamp
        with self._lock:
            while True:
                candidate = retention_name(name, when.strftime(STAMP_FORMAT), self.max_segment_bytes)
                if candidate not in self.taken:
                    self.taken.add(candidate)
                    return candidate
                when += timedelta(seconds=1)

    def mark_taken(self, name: str) -> None:
        """``name`` turned out to exist (another writer made it): never choose it."""
        with self._lock:
            self.taken.add(name)

    def mark_listed(self, name: str) -> None:
        """A retention name in a listing. Only one stamped this run's second or
        later can ever be chosen, so only those are kept: a destination holding
        millions of old versions costs no memory here."""
        if basename(name)[:14] >= self.first_stamp:
            self.mark_taken(name)


def retention_name(name: str, stamp: str, max_segment_bytes: int | None = None) -> str:
    """``a/b/c.txt`` -> ``a/b/<stamp>.old.c.txt``, shortened as :class:`RetentionNames` says."""
    folder, slash, base = name.rpartition("/")
    return folder + slash + fit_segment(f"{stamp}.old.", base, max_segment_bytes)


def fit_segment(head: str, base: str, limit: int | None) -> str:
    """``head + base``, shortened to ``limit`` UTF-8 bytes as :class:`RetentionNames` says."""
    whole = head + base
    if limit is None or len(whole.encode("utf-8", "surrogateescape")) <= limit:
        return whole
    tail = "~" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    room = max(0, limit - len(head.encode()) - len(tail))
    start = base.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return head + start + tail


@dataclasses.dataclass(slots=True)
class Copy:
    entry: Entry
    reason: str  # "missing", "size", "newer", "force", "content", "unverified"
    keep_old_as: str | None = None  # --retention: where the overwritten version goes
    #: The destination may not hold this name yet; nothing there is replaced.
    new: bool = False
    #: "newer" than a destination that lists its upload time: copied unless
    #: the source time stored with the object says it is the same file.
    unless_stored_mtime: bool = False
    #: A destination-only file or folder being removed stands where this goes:
    #: it is written after the removals.
    blocked: bool = False


@dataclasses.dataclass(slots=True)
class Compare:
    """--verify-contents: hash both sides; copy when they differ."""

    source: Entry
    destination: Entry
    keep_old_as: str | None = None


@dataclasses.dataclass
class Plan:
    copies: list[Copy] = dataclasses.field(default_factory=list)
    compares: list[Compare] = dataclasses.field(default_factory=list)
    renames: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    deletes: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # source names that cannot be mirrored
    ignored: list[str] = dataclasses.field(default_factory=list)  # unsafe destination names
    links: list[str] = dataclasses.field(default_factory=list)  # destination links, left alone
    skipped_links: list[str] = dataclasses.field(default_factory=list)  # source links, not followed
    future: list[str] = dataclasses.field(default_factory=list)  # source files dated ahead of the clock
    journals: list[str] = dataclasses.field(default_factory=list)  # removed once their files are checked
    kept: int = 0  # retention versions left alone
    unchanged: int = 0
    retention: RetentionNames | None = None

    def add(self, kind: str, value: object) -> None:
        """Take one of :class:`Planner`'s events."""
        getattr(self, kind).append(value)

    @property
    def copy_bytes(self) -> int:
        return sum(c.entry.size for c in self.copies)

    @property
    def compare_bytes(self) -> int:
        return sum(c.source.size + c.destination.size for c in self.compares)

    @property
    def removals(self) -> int:
        """Files that leave their name at the destination: renames plus deletes."""
        return len(self.renames) + len(self.deletes)


@dataclasses.dataclass(frozen=True)
class DestinationTraits:
    """What the plan needs to know of the destination backend."""

    keeps_mtime: bool = True  # the listing shows the mtime a write was given
    max_segment_bytes: int | None = None
    #: Whether a name is one of the backend's temporary names: the debris of
    #: a killed run, removed, never taken for a user's file.
    is_temporary: Callable[[str], bool] = Backend.is_temporary

    @classmethod
    def of(cls, backend: Backend | type[Backend]) -> "DestinationTraits":
        return cls(backend.keeps_mtime, backend.max_segment_bytes, backend.is_temporary)


def make_plan(source: Iterable[Entry], destination: Iterable[Entry], *, ordered: bool = False, **settings) -> Plan:
    """The whole plan at once, in memory: for tests and small listings.

    ``settings`` are :class:`Planner`'s. ``ordered`` listings (every
    backend's, see synctool/backends/walk.py) are merged as they come;
    others are sorted first.
    """
    if not ordered:
        source, destination = sorted(source, key=_name), sorted(destination, key=_name)
    planner = Planner(**settings)
    plan = Plan(retention=planner.retention)
    for kind, value in planner.events(source, destination):
        plan.add(kind, value)
    plan.unchanged, plan.kept = planner.unchanged, planner.kept
    return plan


def _name(entry: Entry) -> str:
    return entry.name


def _beyond(name: str | None, prefix: str) -> bool:
    """Whether ``name`` (None: the end) comes after every name below ``prefix/``.

    Names such as ``prefix-x`` sort between ``prefix`` and ``prefix/...``:
    they are not beyond it yet.
    """
    folder = prefix + "/"
    return name is None or (name > folder and not name.startswith(folder))


class Planner:
    """Merge two name-ordered listings into a stream of what to do.

    :meth:`events` yields ``(kind, value)`` pairs as the march goes (the
    kinds are :class:`Plan`'s fields: "copies", "renames", "deletes", ...),
    holding only the small state that the order needs:

    - ``waiting``: new source files whose ``name/`` range the destination may
      still fill with files to remove; they are decided once the march has
      passed that range (a folder of removed files then stands where the
      file goes, and the copy is ``blocked``: written after the removals);
      the versions in that folder move aside under one retention name
      chosen for the folder (``aside``), so that it empties and every
      version survives;
    - ``removed``: destination names being removed that may still be the
      folder of a coming source name (a removed file standing where a folder
      goes blocks the copies below it).

    Both hold one entry per folder level at most in a listing of the usual
    shape. ``unchanged`` and ``kept`` are counted, not yielded.

    ``mtime_window`` is the coarser of the two sides' timestamp resolutions:
    a source newer by less than that is not "newer". ``now`` (the run's
    start) finds source files dated in the future. ``recheck`` names files
    whose copy at the destination was never read back (an interrupted
    --verify-get-after-put run): their contents are compared.
    ``source_is_temporary`` tells the source backend's temporary names,
    which are never copied. Names are decided in order: a retention name
    that a later name of the listings takes is found taken when the rename
    or write refuses it, and the next is used.
    """

    def __init__(
        self,
        *,
        stamp: str,
        force: bool = False,
        retention: bool = False,
        verify_contents: bool = False,
        mtime_window: float = 1.0,
        now: float | None = None,
        target: DestinationTraits = DestinationTraits(),
        recheck: frozenset[str] = frozenset(),
        source_is_temporary: Callable[[str], bool] = Backend.is_temporary,
    ):
        self.force = force
        self.keep_old = retention
        self.verify_contents = verify_contents
        self.window = mtime_window
        self.now = now
        self.target = target
        self.recheck = recheck
        self.source_is_temporary = source_is_temporary
        self.retention = RetentionNames(stamp, (), target.max_segment_bytes)
        self.unchanged = 0
        self.kept = 0
        self.dst_links: set[str] = set()
        self.removed: list[str] = []
        self.waiting: list[Copy] = []
        self.aside: dict[str, str] = {}  # a waiting copy's name -> where its folder's versions go
        self.out: list[tuple[str, object]] = []

    def events(self, source: Iterable[Entry], destination: Iterable[Entry]) -> Iterator[tuple[str, object]]:
        own = (e for e in source if not (self.source_is_temporary(e.name) or is_journal(e.name)))
        out = self.out
        for s, d in march(own, destination):
            self.step(s, d)
            if out:
                yield from out
                out.clear()
        self._pass(None)
        yield from out
        out.clear()

    def step(self, s: Entry | None, d: Entry | None) -> None:
        name = (s or d).name  # type: ignore[union-attr]
        self._pass(name)
        if d is not None and d.link:
            self.dst_links.add(d.name)
        for kept in _kept_parts(name):
            self.retention.mark_listed(kept)
        if s is not None and self.now is not None and not s.link and s.mtime > self.now + FUTURE_SLACK_SECONDS:
            self.out.append(("future", s.name))
        if d is None:
            self.source_only(s)  # type: ignore[arg-type]
        elif s is None:
            self.destination_only(d)
        else:
            self.both(s, d)

    def _pass(self, name: str | None) -> None:
        """The march has reached ``name`` (None: the end): close the ranges it is beyond."""
        while self.removed and _beyond(name, self.removed[-1]):
            self.removed.pop()
        if self.waiting:
            done = [c for c in self.waiting if _beyond(name, c.entry.name)]
            if done:
                self.waiting = [c for c in self.waiting if c not in done]
                for c in done:
                    self.aside.pop(c.entry.name, None)
                self.out.extend(("copies", c) for c in done)

    def _removing(self, name: str) -> None:
        """The destination-only ``name`` leaves: what waits inside its folders, or below it, must wait longer."""
        for copy in self.waiting:
            if name.startswith(copy.entry.name + "/"):
                copy.blocked = True  # a folder of removed files stands where the file goes
        self.removed.append(name)

    def _moved_aside(self, name: str) -> str | None:
        """Where the destination-only ``name`` goes when a new source file waits
        for a folder of ``name``'s to go: ``a/sub/x`` -> ``<stamp>.old.a/sub/x``,
        one retention name for the whole folder. None when nothing waits."""
        for copy in self.waiting:
            folder = copy.entry.name
            if name.startswith(folder + "/"):
                if folder not in self.aside:
                    self.aside[folder] = self.retention.name_for(folder)
                return self.aside[folder] + name[len(folder) :]
        return None

    def _add_copy(self, copy: Copy) -> None:
        if any(copy.entry.name.startswith(r + "/") for r in self.removed):
            copy.blocked = True  # a removed file stands where a folder goes
        if copy.new:
            self.waiting.append(copy)
        else:
            self.out.append(("copies", copy))

    def _problem(self, s: Entry) -> str | None:
        """Why the source file ``s`` cannot be mirrored, or None."""
        try:
            check_name(s.name)
        except UnsafeName as exc:
            return str(exc)
        limit = self.target.max_segment_bytes
        # A character is at most four bytes in UTF-8: most names are too short to look at.
        if limit is not None and len(s.name) * 4 > limit:
            for part in s.name.split("/"):
                if len(part.encode("utf-8", "surrogateescape")) > limit:
                    return f"refusing {s.name!r}: a name in it is longer than the destination's {limit} bytes"
        for link in (s.name, *_ancestors(s.name)) if self.dst_links else ():
            if link in self.dst_links:
                return (
                    f"{s.name}: the destination has a symbolic link at {link}, which is never "
                    "followed nor replaced; move it away to mirror this file"
                )
        return None

    def _accept(self, s: Entry) -> bool:
        """Whether the source entry ``s`` takes part; refused names are noted."""
        if s.link:
            self.out.append(("skipped_links", s.name))
            return False
        problem = self._problem(s)
        if problem:
            self.out.append(("refused", (s.name, problem)))
            return False
        return True

    def source_only(self, s: Entry) -> None:
        if self._accept(s):
            self._add_copy(Copy(s, "missing", new=True))

    def destination_only(self, d: Entry) -> None:
        if d.link:
            self.out.append(("links", d.name))  # never followed, renamed nor deleted
            return
        try:
            check_name(d.name)
        except UnsafeName:
            self.out.append(("ignored", d.name))  # never act on a name that could point outside the root
            return
        kept = any(_kept_parts(d.name))
        if self.target.is_temporary(d.name):
            self.out.append(("deletes", d.name))  # debris of a killed run, never user data
            self._removing(d.name)
        elif is_journal(d.name):
            self.out.append(("journals", d.name))
        elif (self.keep_old or kept) and (aside := self._moved_aside(d.name)):
            # Renamed in place, the versions would keep the folder from ever emptying.
            self.out.append(("renames", (d.name, aside)))
            self._removing(d.name)
        elif kept:
            self.kept += 1  # a kept version is never deleted nor renamed again
        elif self.keep_old:
            self.out.append(("renames", (d.name, self.retention.name_for(d.name))))
            self._removing(d.name)
        else:
            self.out.append(("deletes", d.name))
            self._removing(d.name)

    def both(self, s: Entry, d: Entry) -> None:
        if d.link and not s.link:
            # A link at the destination where the source has a file.
            problem = self._problem(s)
            self.out.append(("refused", (s.name, problem or f"{s.name}: a symbolic link at the destination is in the way")))
            return
        if d.link:
            self.out.append(("links", d.name))
            self.out.append(("skipped_links", s.name))
            return
        if not self._accept(s):
            return
        if self.force:
            reason: str | None = "force"
        elif s.size != d.size:
            reason = "size"
        elif s.mtime > d.mtime + self.window:
            reason = "newer"
        else:
            reason = None
        if reason is None and not (self.verify_contents or s.name in self.recheck):
            self.unchanged += 1
            return
        keep = self.retention.name_for(d.name) if self.keep_old else None
        if reason is None:
            self.out.append(("compares", Compare(s, d, keep)))
        else:
            stored = reason == "newer" and not self.target.keeps_mtime
            self._add_copy(Copy(s, reason, keep, unless_stored_mtime=stored))
