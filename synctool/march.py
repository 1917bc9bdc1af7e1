"""Walk two name-ordered listings side by side (rclone's fs/march).

Each listing arrives in the order of its full names (see
synctool/backends/walk.py); ``march`` pairs them as they come, holding one
entry of each side, and says which names are only at the source, only at
the destination, or at both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from synctool.backends.base import Entry
from synctool.errors import SyncError


class ListingOrderError(SyncError):
    """A listing came out of order: a backend broke its contract, and the run
    stops before anything is changed (exit 1)."""


def march(source: Iterable[Entry], destination: Iterable[Entry]) -> Iterator[tuple[Entry | None, Entry | None]]:
    """``(s, None)``, ``(None, d)`` or ``(s, d)`` for each name, in name order."""
    src, dst = _checked(source, "source"), _checked(destination, "destination")
    s, d = next(src, None), next(dst, None)
    while s is not None or d is not None:
        if d is None or (s is not None and s.name < d.name):
            yield s, None
            s = next(src, None)
        elif s is None or d.name < s.name:
            yield None, d
            d = next(dst, None)
        else:
            yield s, d
            s, d = next(src, None), next(dst, None)


def _checked(entries: Iterable[Entry], side: str) -> Iterator[Entry]:
    previous = None
    for entry in entries:
        if previous is not None and entry.name <= previous:
            raise ListingOrderError(
                f"the {side}'s listing is out of order ({entry.name!r} came after {previous!r}): "
                "nothing was changed; this is a fault of the backend, please report it"
            )
        previous = entry.name
        yield entry
