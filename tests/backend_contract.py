"""What every backend must do, as one test class (after rclone's fstests).

A backend's test module subclasses :class:`BackendContract` and provides a
``spec`` fixture: a :class:`BackendSpec` for a fresh, empty, writable root on
a real server. Every test here then runs against that backend.
"""

from __future__ import annotations

import time

import blake3
import pytest

from synctool.backends import AlreadyExists, BackendSpec, DeleteError, NotFound, open_backend
from synctool.backends.base import BackendError, Entry


def _content(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += blake3.blake3(f"{seed}:{counter}".encode()).digest(length=65536)
        counter += 1
    return bytes(out[:size])


def _chunks(data: bytes, step: int = 100_000):
    for i in range(0, len(data), step):
        yield data[i : i + step]


class BackendContract:
    @pytest.fixture
    def backend(self, spec: BackendSpec):
        b = open_backend(spec)
        b.prepare(create=True)
        yield b
        b.close()

    def listing(self, backend) -> dict[str, Entry]:
        return {e.name: e for e in backend.list()}

    def read_all(self, backend, name: str) -> bytes:
        return b"".join(backend.read(name))

    def test_empty_root_lists_nothing(self, backend):
        assert list(backend.list()) == []

    def test_write_then_list_and_read(self, backend):
        data = _content(1, 300_000)
        backend.write("a/b/c.bin", _chunks(data), len(data))
        backend.write("top.txt", iter([b"hello"]), 5)
        entries = self.listing(backend)
        assert set(entries) == {"a/b/c.bin", "top.txt"}
        assert entries["a/b/c.bin"].size == len(data)
        assert abs(entries["top.txt"].mtime - time.time()) < 300
        assert self.read_all(backend, "a/b/c.bin") == data
        assert self.read_all(backend, "top.txt") == b"hello"

    def test_zero_byte_file(self, backend):
        backend.write("empty", iter([]), 0)
        assert self.listing(backend)["empty"].size == 0
        assert self.read_all(backend, "empty") == b""

    def test_unicode_and_spaces(self, backend):
        name = "dossier été/ファイル name with  spaces.txt"
        backend.write(name, iter([b"x" * 10]), 10)
        assert name in self.listing(backend)
        assert self.read_all(backend, name) == b"x" * 10

    def test_overwrite_replaces_content(self, backend):
        backend.write("f", iter([b"old content"]), 11)
        backend.write("f", iter([b"new"]), 3)
        assert self.read_all(backend, "f") == b"new"
        assert self.listing(backend)["f"].size == 3

    def test_failed_write_leaves_nothing(self, backend):
        backend.write("keep", iter([b"old"]), 3)

        def broken():
            yield b"x" * 1000
            raise RuntimeError("source went away")

        with pytest.raises(RuntimeError):
            backend.write("keep", broken(), 2000)
        with pytest.raises(RuntimeError):
            backend.write("new/file", broken(), 2000)
        # the old file is intact, nothing half-written or temporary shows
        assert set(self.listing(backend)) == {"keep"}
        assert self.read_all(backend, "keep") == b"old"

    def test_keep_old_as(self, backend):
        backend.write("d/f", iter([b"v1"]), 2)
        backend.write("d/f", iter([b"v2!"]), 3, keep_old_as="d/20260101000000.old.f")
        assert self.read_all(backend, "d/f") == b"v2!"
        assert self.read_all(backend, "d/20260101000000.old.f") == b"v1"

    def test_rename(self, backend):
        backend.write("x/one", iter([b"1"]), 1)
        backend.rename("x/one", "x/20260101000000.old.one")
        assert set(self.listing(backend)) == {"x/20260101000000.old.one"}

    def test_delete(self, backend):
        for i in range(5):
            backend.write(f"d/{i}", iter([b"z"]), 1)
        backend.delete(["d/0", "d/1", "d/2"])
        assert set(self.listing(backend)) == {"d/3", "d/4"}
        backend.delete(["d/missing"])  # deleting what is gone is not an error

    def test_read_missing(self, backend):
        with pytest.raises(BackendError):
            self.read_all(backend, "nope")

    def test_unsafe_names_refused(self, backend):
        for bad in ("../escape", "/abs", "a//b", "a/./b", "nul\x00byte"):
            with pytest.raises(BackendError):
                backend.write(bad, iter([b"x"]), 1)
        assert list(backend.list()) == []

    def test_listing_comes_in_name_order(self, backend):
        """The full names' order, a folder counting as ``name/``: what S3 lists
        and what the plan's merge of two listings relies on."""
        names = ["a-b", "a/b", "a/c/d", "a/c/d0", "a/c-e", "a0", "a.txt", "B", "b", "a b/x", "é", "z/y/x/w"]
        for name in names:
            backend.write(name, iter([b"x"]), 1)
        assert [e.name for e in backend.list()] == sorted(names)

    def test_listing_resumes_after_a_name(self, backend):
        """``list(start_after=name)`` yields exactly the names after it: what a
        listing that failed midway goes on with."""
        names = sorted(["a-b", "a/b", "a/c/d", "a/c/d0", "a/c-e", "a0", "b b/x", "é", "z/y/x/w"])
        for name in names:
            backend.write(name, iter([b"x"]), 1)
        for i, name in enumerate(names):
            assert [e.name for e in backend.list(start_after=name)] == names[i + 1 :], name
        # A name that is not listed resumes there too: between "a/c/d" and "a/c/d0".
        assert [e.name for e in backend.list(start_after="a/c/d/")] == names[names.index("a/c/d0") :]
        assert [e.name for e in backend.list(start_after="")] == names

    # -- nothing is replaced that the caller did not name -------------------
    #: Whether a new file's write refuses an existing name by itself. S3 asks
    #: with If-None-Match, which rclone serve s3 ignores (a documented race).
    refuses_existing_new_file = True

    def test_rename_never_replaces(self, backend):
        backend.write("d/a", iter([b"a"]), 1)
        backend.write("d/20260101000000.old.a", iter([b"kept"]), 4)
        with pytest.raises(AlreadyExists) as raised:
            backend.rename("d/a", "d/20260101000000.old.a")
        assert raised.value.name == "d/20260101000000.old.a"
        assert self.read_all(backend, "d/a") == b"a"
        assert self.read_all(backend, "d/20260101000000.old.a") == b"kept"

    #: Whether a rename out of a folder removes the folder it leaves empty.
    #: WebDAV cannot remove a folder only if it is empty (see webdav.py).
    removes_emptied_folders = True

    def test_renames_out_of_a_folder_make_room_for_a_file_of_its_name(self, backend):
        aside = "20260101000000.old.a"
        backend.write("a/x", iter([b"x"]), 1)
        backend.write("a/sub/y", iter([b"y"]), 1)
        backend.rename("a/x", f"{aside}/x")
        backend.rename("a/sub/y", f"{aside}/sub/y")
        if self.removes_emptied_folders:
            backend.write("a", iter([b"file"]), 4, overwrite=False)
            assert self.read_all(backend, "a") == b"file"
        else:  # refused, never written over the folder, and saying so
            with pytest.raises(BackendError, match="a folder of that name is in the way"):
                backend.write("a", iter([b"file"]), 4, overwrite=False)
        assert self.read_all(backend, f"{aside}/x") == b"x" and self.read_all(backend, f"{aside}/sub/y") == b"y"

    def test_keep_old_as_never_replaces(self, backend):
        backend.write("f", iter([b"v1"]), 2)
        backend.write("20260101000000.old.f", iter([b"v0"]), 2)
        with pytest.raises(AlreadyExists) as raised:
            backend.write("f", iter([b"v2"]), 2, keep_old_as="20260101000000.old.f")
        assert raised.value.name == "20260101000000.old.f"
        assert self.read_all(backend, "20260101000000.old.f") == b"v0"
        assert self.read_all(backend, "f") == b"v1"
        assert set(self.listing(backend)) == {"f", "20260101000000.old.f"}

    def test_new_file_never_replaces(self, backend):
        backend.write("n", iter([b"theirs"]), 6)
        if not self.refuses_existing_new_file:
            pytest.skip("this server ignores If-None-Match (see synctool/backends/s3.py)")
        with pytest.raises(AlreadyExists) as raised:
            backend.write("n", iter([b"mine"]), 4, overwrite=False)
        assert raised.value.name == "n"
        assert self.read_all(backend, "n") == b"theirs"
        assert set(self.listing(backend)) == {"n"}
        backend.write("fresh", iter([b"x"]), 1, overwrite=False)  # a free name is written as usual
        assert self.read_all(backend, "fresh") == b"x"

    # -- read back before trusting ------------------------------------------
    def test_check_sees_the_stored_bytes(self, backend):
        data = _content(7, 200_000)
        seen = []
        backend.write("c/f", _chunks(data), len(data), check=lambda stored: seen.append(b"".join(stored)))
        assert seen == [data]
        assert self.read_all(backend, "c/f") == data

    def test_rejected_check_leaves_nothing_under_the_name(self, backend):
        backend.write("old", iter([b"before"]), 6)

        def reject(stored):
            b"".join(stored)
            raise BackendError("read back something else")

        with pytest.raises(BackendError, match="something else"):
            backend.write("new", iter([b"x"]), 1, overwrite=False, check=reject)
        with pytest.raises(BackendError, match="something else"):
            backend.write("old", iter([b"after"]), 5, check=reject)
        names = set(self.listing(backend))
        assert "new" not in names
        if backend.verifies_before_commit:
            # Checked under a temporary name: the old file was never touched.
            assert names == {"old"} and self.read_all(backend, "old") == b"before"
        else:
            # Checked once visible: what failed is gone, nothing half-trusted stays.
            assert names == set()

    def test_mtime_kept_where_supported(self, backend):
        backend.write("m", iter([b"m"]), 1, mtime=1_600_000_000.0)
        mtime = self.listing(backend)["m"].mtime
        # Backends that cannot store mtimes report the upload time instead,
        # which is never older than the source's.
        assert mtime >= 1_600_000_000.0 - backend.mtime_precision


def assert_not_found(exc: Exception) -> bool:
    return isinstance(exc, (NotFound, DeleteError))
