"""The external sorter (synctool/backends/sorter.py): listings larger than a run,
sorted through real temporary files."""

from __future__ import annotations

import random

import pytest

from synctool.backends import sorter
from synctool.backends.base import Entry
from synctool.backends.sorter import ENTRY_CODEC, WALK_CODEC, ExternalSorter, sort_bounded

# Names whose order trips a sort that is not by code point: '-', '.', ' ' and
# '/' around digits, letters beyond ASCII, and a name of undecodable bytes
# as os.listdir gives it (lone surrogates).
TRICKY = ["a-b", "a/b", "a.b", "a b", "a0", "B", "b", "é", "ü/x", "\U0001f600", "z\udcff", "z~"]


def entries(count: int, seed: int = 1) -> list[Entry]:
    rng = random.Random(seed)
    out = [Entry(f"d{rng.randrange(50)}/{rng.randrange(10**9):09}-{i}", rng.randrange(10**12), rng.random() * 2e9,
                 link=rng.random() < 0.01) for i in range(count)]  # fmt: skip
    out += [Entry(name, i, 1.5 + i, link=i % 2 == 0) for i, name in enumerate(TRICKY)]
    rng.shuffle(out)
    return out


def test_a_listing_larger_than_a_run_comes_back_whole_and_in_order():
    items = entries(20_000)
    run_size = 1_000
    held = []
    out = ExternalSorter(ENTRY_CODEC, run_size)
    for item in items:
        out.add(item)
        held.append(out.held)
    spilled = len(out.spilled)
    result = list(out)

    assert result == sorted(items, key=lambda e: e.name)  # sizes, mtimes and links too
    assert spilled >= 19  # on disk, not in memory
    assert max(held) < run_size


def test_more_runs_than_are_merged_at_once(monkeypatch):
    # Three times MAX_FAN_IN runs: merged into longer runs on the way, never all open at once.
    run_size = 20
    items = entries(run_size * sorter.MAX_FAN_IN * 3)
    out = ExternalSorter(ENTRY_CODEC, run_size)
    most_open = 0
    for item in items:
        out.add(item)
        most_open = max(most_open, len(out.spilled))
    assert most_open <= sorter.MAX_FAN_IN + 1
    assert [e.name for e in out] == sorted(e.name for e in items)


def test_a_small_listing_stays_in_memory():
    out = ExternalSorter(ENTRY_CODEC, 100).extend(entries(50))
    assert out.spilled == []
    assert [e.name for e in out] == sorted(e.name for e in entries(50))


def test_folders_and_their_handles_come_back():
    # A walk's items: entries and subfolders (prefix, handle), text handles
    # and others (pickled), with a folder sorting as its name + "/".
    items = [("a/", "/srv/a"), Entry("a-b", 1, 2.0), Entry("a0", 3, 4.0), ("a.d/", {"k": [1, 2]}),
             ("z\udcff/", "/srv/z\udcff"), Entry("a/x", 5, 6.0)] * 300  # fmt: skip
    result = list(sort_bounded(items, WALK_CODEC, run_size=7))
    assert result == sorted(items, key=WALK_CODEC.key)


@pytest.mark.parametrize("run_size", [1, 3, 1_000])
def test_an_empty_or_tiny_listing(run_size):
    assert list(sort_bounded([], ENTRY_CODEC, run_size)) == []
    assert list(sort_bounded([Entry("x", 1, 1.0)], ENTRY_CODEC, run_size)) == [Entry("x", 1, 1.0)]
