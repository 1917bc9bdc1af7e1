"""The ordered walk that folder-by-folder backends list through (synctool/backends/walk.py)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synctool.backends.base import Entry
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
