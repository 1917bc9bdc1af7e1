"""Decide what to do: a merge of two name-sorted listings (rclone's march).

The plan only decides; nothing here touches a backend. It follows the seed
page: copy what is missing, differs in size or is newer at the source; delete
(or, with --retention, rename) what is only at the destination.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from synctool.backends.base import Entry, UnsafeName, check_name

#: ``20261128043100.old.name``: a version kept by --retention.
RETENTION_RE = re.compile(r"^\d{14}\.old\.")
#: A temporary file a write left behind when its process was killed.
TEMP_RE = re.compile(r"^\.synctool-[0-9a-f]+\.tmp$")


def basename(name: str) -> str:
    return name.rpartition("/")[2]


def retention_name(name: str, stamp: str) -> str:
    """``a/b/c.txt`` -> ``a/b/<stamp>.old.c.txt``: same folder, one stamp per run."""
    folder, slash, base = name.rpartition("/")
    return f"{folder}{slash}{stamp}.old.{base}"


def is_retention_name(name: str) -> bool:
    return bool(RETENTION_RE.match(basename(name)))


@dataclasses.dataclass(slots=True)
class Copy:
    entry: Entry
    reason: str  # "missing", "size", "newer", "force", "content"
    keep_old_as: str | None = None  # --retention: where the overwritten version goes


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
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # unsafe source names
    ignored: list[str] = dataclasses.field(default_factory=list)  # unsafe destination names
    kept: int = 0  # retention versions left alone
    unchanged: int = 0

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


def blocked_copies(plan: Plan) -> set[str]:
    """Names of copies that a destination-only file or folder stands in the way of.

    A destination file ``a`` leaves no room for the source's ``a/b``, and a
    destination folder ``a/`` none for the source's file ``a``. Such a copy can
    only be written after the removals, which come after every other copy.
    """
    removed = set(plan.deletes) | {old for old, _ in plan.renames}
    if not removed:
        return set()

    def folders(name: str) -> list[str]:
        return [name[:i] for i, ch in enumerate(name) if ch == "/"]

    removed_folders = {f for name in removed for f in folders(name)}
    return {
        c.entry.name
        for c in plan.copies
        if c.entry.name in removed_folders or any(f in removed for f in folders(c.entry.name))
    }


def _sorted(entries: Iterable[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: e.name)


def make_plan(
    source: Iterable[Entry],
    destination: Iterable[Entry],
    *,
    stamp: str,
    force: bool = False,
    retention: bool = False,
    verify_contents: bool = False,
    mtime_window: float = 1.0,
) -> Plan:
    """Merge the two listings into a :class:`Plan`.

    ``mtime_window`` is the coarser of the two sides' timestamp resolutions:
    a source newer by less than that is not "newer".
    """
    plan = Plan()
    src, dst = _sorted(source), _sorted(destination)
    i = j = 0
    while i < len(src) or j < len(dst):
        s = src[i] if i < len(src) else None
        d = dst[j] if j < len(dst) else None
        if d is None or (s is not None and s.name < d.name):
            _source_only(plan, s)
            i += 1
        elif s is None or d.name < s.name:
            _destination_only(plan, d, stamp, retention)
            j += 1
        else:
            _both(plan, s, d, stamp, force, retention, verify_contents, mtime_window)
            i += 1
            j += 1
    return plan


def _safe(name: str) -> str | None:
    try:
        check_name(name)
    except UnsafeName as exc:
        return str(exc)
    return None


def _source_only(plan: Plan, s: Entry) -> None:
    problem = _safe(s.name)
    if problem:
        plan.refused.append((s.name, problem))
    else:
        plan.copies.append(Copy(s, "missing"))


def _destination_only(plan: Plan, d: Entry, stamp: str, retention: bool) -> None:
    if _safe(d.name):
        # Never act on a name that could point outside the root.
        plan.ignored.append(d.name)
    elif TEMP_RE.match(basename(d.name)):
        plan.deletes.append(d.name)  # debris of a killed run, never user data
    elif is_retention_name(d.name):
        plan.kept += 1  # a kept version is never deleted nor renamed again
    elif retention:
        plan.renames.append((d.name, retention_name(d.name, stamp)))
    else:
        plan.deletes.append(d.name)


def _both(
    plan: Plan,
    s: Entry,
    d: Entry,
    stamp: str,
    force: bool,
    retention: bool,
    verify_contents: bool,
    window: float,
) -> None:
    problem = _safe(s.name)
    if problem:
        plan.refused.append((s.name, problem))
        return
    keep = retention_name(d.name, stamp) if retention else None
    if force:
        plan.copies.append(Copy(s, "force", keep))
    elif s.size != d.size:
        plan.copies.append(Copy(s, "size", keep))
    elif s.mtime > d.mtime + window:
        plan.copies.append(Copy(s, "newer", keep))
    elif verify_contents:
        plan.compares.append(Compare(s, d, keep))
    else:
        plan.unchanged += 1
