"""The local folder backend against the shared backend contract."""

import os

import pytest

from synctool.backends import BackendSpec, NotFound, open_backend
from tests.backend_contract import BackendContract


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def spec(self, tmp_path):
        return BackendSpec(str(tmp_path / "root"))


def test_file_url_and_plain_path_are_the_same(tmp_path):
    a = open_backend(BackendSpec(f"file://{tmp_path}"))
    b = open_backend(BackendSpec(str(tmp_path)))
    assert a.root == b.root == str(tmp_path)


def test_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_backend(BackendSpec("rel/dir")).root == str(tmp_path / "rel" / "dir")


def test_missing_source_is_not_created(tmp_path):
    b = open_backend(BackendSpec(str(tmp_path / "missing")))
    with pytest.raises(NotFound):
        b.prepare(create=False)
    assert not (tmp_path / "missing").exists()


def test_symlinks_are_listed_as_links_and_never_followed(tmp_path):
    (tmp_path / "real").write_text("r")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.symlink(tmp_path, tmp_path / "loop")
    entries = {e.name: e.link for e in open_backend(BackendSpec(str(tmp_path))).list()}
    assert entries == {"real": False, "link": True, "loop": True}


def test_temp_file_is_private_until_complete(tmp_path):
    b = open_backend(BackendSpec(str(tmp_path)))
    seen = []

    def chunks():
        yield b"abc"
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".synctool-")]
        seen.extend(oct(p.stat().st_mode & 0o777) for p in temps)
        yield b"def"

    b.write("f", chunks(), 6)
    assert seen == ["0o600"]
    assert (tmp_path / "f").read_bytes() == b"abcdef"
