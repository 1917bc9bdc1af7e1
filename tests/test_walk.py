"""The ordered walk that folder-by-folder backends list through (synctool/backends/walk.py)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synctool.backends.base import Entry
from synctool.backends import walk
from synctool.backends.walk import AHEAD_PER_THREAD, ordered_walk

# Names whose order trips a naive walk: '-', '.', ' ' sort before '/', '0' after it.
SEGMENT = st.text(alphabet="a-. 0/é", min_size=1, max_size=4).filter(lambda s: "/" not in s)


def tree_of(paths: list[tuple[str, ...]]) -> dict:
    """Nested dicts: a folder maps names to folders or to None (a file)."""
    root: dict = {}
    for path in paths:
        node = root
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if child is None:  # a file already has this name: skip the path
                break
            node = child
        else:
            node.setdefault(path[-1], None)
    return root


def scanner(calls: list[str] | None = None):
    def scan(prefix: str, folder: dict):
        if calls is not None:
            calls.append(prefix)
        return [Entry(prefix + name, 1, 0.0) if child is None else (prefix + name + "/", child)
                for name, child in folder.items()]  # fmt: skip

    return scan


def names_in(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for name, child in tree.items():
        out += [prefix + name] if child is None else names_in(child, prefix + name + "/")
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(SEGMENT, min_size=1, max_size=4).map(tuple), max_size=40), st.sampled_from([1, 3]))
def test_the_walk_yields_every_file_in_full_name_order(paths, threads):
    tree = tree_of(paths)
    walked = [e.name for e in ordered_walk(scanner(), tree, threads)]
    assert walked == sorted(names_in(tree))


def test_folders_listed_ahead_are_bounded():
    # A wide tree: 500 folders of one file each.
    tree = {f"d{i:03}": {"f": None} for i in range(500)}
    calls: list[str] = []
    seen = 0
    for _ in ordered_walk(scanner(calls), tree, threads=2):
        seen += 1
        assert len(calls) <= seen + 1 + 2 * AHEAD_PER_THREAD
    assert seen == 500


def test_a_failing_folder_fails_the_walk():
    def scan(prefix, folder):
        if prefix == "b/":
            raise OSError("cannot list b")
        return scanner()(prefix, folder)

    with pytest.raises(OSError, match="cannot list b"):
        list(ordered_walk(scan, {"a": {"x": None}, "b": {"y": None}}, threads=2))


def test_a_walk_stopped_early_leaves_no_thread_behind():
    before = threading.active_count()
    walk = ordered_walk(scanner(), {f"d{i}": {"f": None} for i in range(100)}, threads=4)
    next(walk)
    walk.close()
    assert threading.active_count() == before


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(SEGMENT, min_size=1, max_size=4).map(tuple), min_size=1, max_size=40),
    st.integers(min_value=0),
    st.sampled_from([1, 3]),
)
def test_a_walk_resumed_after_a_name_yields_exactly_the_later_names(paths, pick, threads):
    tree = tree_of(paths)
    names = sorted(names_in(tree))
    after = names[pick % len(names)]
    walked = [e.name for e in ordered_walk(scanner(), tree, threads, start_after=after)]
    assert walked == names[names.index(after) + 1 :]


def test_a_resumed_walk_lists_no_folder_that_holds_only_earlier_names():
    tree = {f"d{i}": {"sub": {"f": None}, "g": None} for i in range(10)}
    calls: list[str] = []
    walked = [e.name for e in ordered_walk(scanner(calls), tree, start_after="d6/sub/f")]
    assert walked == ["d7/g", "d7/sub/f", "d8/g", "d8/sub/f", "d9/g", "d9/sub/f"]
    # The root, then the folder the walk stopped in and its parent, then the later ones.
    assert calls == ["", "d6/", "d6/sub/", "d7/", "d7/sub/", "d8/", "d8/sub/", "d9/", "d9/sub/"]


def test_a_folder_larger_than_a_run_is_walked_in_order():
    big = {f"f{i:05}{'-x' if i % 3 else ''}": None for i in range(5_000)}
    big |= {f"f{i:05}": {"in": None} for i in range(0, 5_000, 7)}  # folders among the files
    tree = {"big": big, "big-": {"x": None}, "big0": None}
    for threads in (1, 3):
        walked = [e.name for e in ordered_walk(scanner(), tree, threads, run_size=300)]
        assert walked == sorted(names_in(tree))


def test_listings_read_ahead_hold_a_bounded_number_of_entries(monkeypatch):
    # 40 folders of 2,000 files each, read ahead on 4 threads: more than the
    # window allows in memory, so the listings that wait go to disk.
    monkeypatch.setattr(walk, "AHEAD_WINDOW", 1_000)
    tree = {f"d{i:02}": {f"f{j:04}": None for j in range(2_000)} for i in range(40)}
    held: list[int] = []
    real_list_ahead = walk._Ahead._list_ahead

    def list_ahead(self, prefix, folder):
        sorter = real_list_ahead(self, prefix, folder)
        held.append(sorter.held)
        return sorter

    monkeypatch.setattr(walk._Ahead, "_list_ahead", list_ahead)
    walked = [e.name for e in ordered_walk(scanner(), tree, threads=4)]
    assert walked == sorted(names_in(tree))
    assert held and max(held) <= 1_000 // (4 * AHEAD_PER_THREAD)


def test_every_subfolder_of_a_wide_folder_is_listed_ahead():
    # More subfolders than are listed ahead at once: the later ones are
    # started as the walk reaches them, not listed one by one on its thread.
    tree = {f"d{i:03}": {"f": None} for i in range(300)}
    on_walk_thread: list[str] = []

    def scan(prefix, folder):
        if threading.current_thread() is walker:
            on_walk_thread.append(prefix)
        return scanner()(prefix, folder)

    walker = threading.current_thread()
    walked = [e.name for e in ordered_walk(scan, tree, threads=2)]
    assert walked == sorted(names_in(tree))
    assert on_walk_thread == [""]
