"""Property tests: for random trees and random prior destinations, a sync mirrors exactly.

Each example writes a random source tree and a random prior destination on
real folders, runs ``synctool.sync`` with real worker processes, and checks:

* the destination holds exactly the source's names and bytes (with
  ``retention`` leaving aside the ``<14 digits>.old.<name>`` versions);
* with ``retention`` every file that was at the destination before still
  exists, as itself or under its retention name in the same folder.
"""

from __future__ import annotations

import pathlib
import random
import re
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import synctool
from synctool.errors import ExitCode
from synctool.plan import is_retention_name
from tests.helpers import FAST, make_tree, read_tree

T0 = 1_600_000_000.0  # every source file's mtime
OLDER, NEWER = T0 - 1000, T0 + 1000

# Names: unicode (no surrogates or control characters), spaces, nesting; never
# '/', '.' or '..', nor the two kinds of names the plan treats specially. A few
# short names recur often, so names clash across the two sides (a file on one
# side where the other has a folder) and overwrite each other.
_component = st.sampled_from(["a", "b", "c d", "é"]) | st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
    min_size=1,
    max_size=10,
).filter(lambda s: s not in (".", "..") and not s.startswith(".synctool-") and not re.match(r"\d{14}\.old\.", s))
_name = st.lists(_component, min_size=1, max_size=3).map("/".join)
# Content as (size, seed): cheap to draw and to shrink, expanded when written.
_content = st.tuples(st.integers(0, 20 * 1024), st.integers(0, 2**32))


def _bytes(content: tuple[int, int]) -> bytes:
    size, seed = content
    return random.Random(seed).randbytes(size)


def _under(name: str, folder: str) -> bool:
    return name.startswith(folder + "/")


def _without_folder_clashes(names):
    """Drop every name that another name uses as a folder (a tree can't hold both)."""
    names = list(names)
    return [n for n in names if not any(_under(m, n) for m in names)]


@st.composite
def scenarios(draw):
    src_names = _without_folder_clashes(draw(st.lists(_name, max_size=12, unique=True)))
    src = {n: _bytes(draw(_content)) for n in src_names}
    verify = draw(st.booleans())
    retention = draw(st.booleans())
    dst: dict[str, tuple[bytes, float]] = {}
    for name, data in src.items():
        kind = draw(st.sampled_from(["absent", "same", "same size, other bytes", "other size"]))
        if kind == "same":
            dst[name] = (data, draw(st.sampled_from([OLDER, T0, NEWER])))
        elif kind == "same size, other bytes" and data:
            other = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            # Size and mtime alone can only see the change when the source is newer.
            dst[name] = (other, draw(st.sampled_from([OLDER, T0, NEWER])) if verify else OLDER)
        elif kind == "other size":
            dst[name] = (data + _bytes(draw(_content)) + b"!", draw(st.sampled_from([OLDER, T0, NEWER])))
    for name in draw(st.lists(_name, max_size=6)):
        if name in src or name in dst:
            continue
        if retention and any(_under(name, s) for s in src):
            # A destination folder where the source has a file can't be emptied
            # when its files must be kept (renamed in place): not a mirror case.
            continue
        dst[name] = (_bytes(draw(_content)), draw(st.sampled_from([OLDER, T0, NEWER])))
    keep = set(_without_folder_clashes(dst))
    dst = {n: v for n, v in dst.items() if n in keep}
    return src, dst, verify, retention


def _retention_versions(root: pathlib.Path, name: str) -> list[bytes]:
    """Contents of the retention versions of ``name`` (same folder, any stamp)."""
    folder, _, base = name.rpartition("/")
    where = root.joinpath(*folder.split("/")) if folder else root
    if not where.is_dir():
        return []
    pattern = re.compile(r"^\d{14}\.old\." + re.escape(base) + "$")
    return [p.read_bytes() for p in where.iterdir() if pattern.match(p.name) and p.is_file()]


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenarios())
def test_destination_mirrors_source(tmp_path, scenario):
    src_files, prior, verify, retention = scenario
    work = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        src, dst = work / "src", work / "dst"
        src.mkdir()
        make_tree(src, src_files, mtime=T0)
        dst.mkdir()
        for name, (data, mtime) in prior.items():
            make_tree(dst, {name: data}, mtime=mtime)

        report = synctool.sync(str(src), str(dst), retention=retention, verify_contents=verify, **FAST)

        assert report.exit_code == ExitCode.SUCCESS, report.to_dict()
        after = read_tree(dst)
        mirrored = {n: d for n, d in after.items() if not (retention and is_retention_name(n))}
        assert mirrored == src_files
        if retention:
            for name, (data, _) in prior.items():
                assert after.get(name) == data or data in _retention_versions(dst, name), name
        else:
            assert not any(is_retention_name(n) for n in after)
    finally:
        shutil.rmtree(work)


def test_retention_names_at_the_destination_are_always_kept(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a": b"new a", "d/b": b"new b"}, mtime=T0)
    kept = {
        "20200101000000.old.a": b"an old a",
        "d/20200101000000.old.b": b"an old b",
        "gone/20190101120000.old.c": b"folder only at the destination",
    }
    make_tree(dst, {**kept, "a": b"older a", "extra": b"x"}, mtime=OLDER)

    for retention in (False, True):
        report = synctool.sync(str(src), str(dst), retention=retention, **FAST)
        assert report.exit_code == ExitCode.SUCCESS, report.to_dict()
        assert report.kept >= len(kept)
        after = read_tree(dst)
        for name, data in kept.items():
            assert after[name] == data  # never deleted, never renamed again
        assert after["a"] == b"new a" and after["d/b"] == b"new b"
        assert "extra" not in after
    # The second run (retention) had nothing new to keep: no version of a version.
    assert not any(re.search(r"\d{14}\.old\.\d{14}\.old\.", n) for n in read_tree(dst))


def test_temporary_debris_at_the_destination_is_always_deleted(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a": b"a", "d/b": b"b"}, mtime=T0)
    debris = [".synctool-0123abcd.tmp", "d/.synctool-ff.tmp", "deep/er/.synctool-1.tmp"]
    not_debris = ".synctool-notes.txt"  # only the exact temp pattern is debris
    make_tree(dst, {**{n: b"half a write" for n in debris}, not_debris: b"mine"}, mtime=OLDER)

    report = synctool.sync(str(src), str(dst), retention=True, **FAST)

    assert report.exit_code == ExitCode.SUCCESS, report.to_dict()
    after = read_tree(dst)
    for name in debris:
        assert name not in after
        assert not _retention_versions(dst, name)  # deleted, not kept as a version
    assert not (dst / "deep").exists()  # the folder it left empty goes too
    # An ordinary destination-only file is kept as a version under --retention.
    assert _retention_versions(dst, not_debris) == [b"mine"]
    assert {n: d for n, d in after.items() if not is_retention_name(n)} == {"a": b"a", "d/b": b"b"}


def test_a_file_and_a_folder_of_the_same_name_trade_places(tmp_path):
    """Found by the property above: the destination's file ``a`` where the source has
    a folder ``a/``, and its folder ``b/`` where the source has a file ``b``."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a/a": b"a file in a folder", "b": b"a file"}, mtime=T0)
    make_tree(dst, {"a": b"a file", "b/c/d": b"a file in folders", "e": b"x"}, mtime=OLDER)

    report = synctool.sync(str(src), str(dst), **FAST)

    assert report.exit_code == ExitCode.SUCCESS, report.to_dict()
    assert read_tree(dst) == read_tree(src)
    assert (report.copied, report.deleted) == (2, 3)


def test_with_retention_a_file_in_the_way_is_kept_and_the_folder_written(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, {"a/a": b"new"}, mtime=T0)
    make_tree(dst, {"a": b"old file a"}, mtime=OLDER)

    report = synctool.sync(str(src), str(dst), retention=True, **FAST)

    assert report.exit_code == ExitCode.SUCCESS, report.to_dict()
    assert read_tree(dst)["a/a"] == b"new"
    assert _retention_versions(dst, "a") == [b"old file a"]
