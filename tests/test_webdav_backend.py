"""The WebDAV backend against rclone serve webdav and wsgidav."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts.servers import free_port
from scripts.servers_webdav import wsgidav
from synctool.backends import AlreadyExists, BackendSpec, DeleteError, NotFound, open_backend
from synctool.backends.base import BackendError, FatalBackendError, is_journal
from tests.backend_contract import BackendContract
from tests.fixtures.webdav import DAV
from tests.helpers import read_tree, temp_debris
from tests.test_sftp_backend import refused, roundtrip


class TestWebDAVBackend(BackendContract):
    removes_emptied_folders = False

    @pytest.fixture
    def spec(self, webdav_server, webdav_folder):
        return webdav_server.spec(webdav_folder)


# -- logging in ----------------------------------------------------------------------
def test_password_in_the_url(webdav_server, webdav_folder):
    url = webdav_server.url(webdav_folder, user=webdav_server.user, password=webdav_server.password)
    assert roundtrip(BackendSpec(url)) == ["f.txt"]
    assert (webdav_server.local(webdav_folder) / "f.txt").read_bytes() == b"hello"


def test_user_in_the_url_password_as_option(webdav_server, webdav_folder):
    url = webdav_server.url(webdav_folder, user=webdav_server.user)
    assert roundtrip(BackendSpec(url, {"auth-password": webdav_server.password})) == ["f.txt"]


def test_wrong_password_is_refused_without_showing_it(webdav_server, webdav_folder):
    message = refused(webdav_server.spec(webdav_folder, **{"auth-password": "not-the-password-42"}))
    assert "refused the login as synctool" in message and "not-the-password-42" not in message
    assert not webdav_server.local(webdav_folder).exists()


def test_no_credentials_is_refused(webdav_server, webdav_folder):
    assert "without a user name" in refused(BackendSpec(webdav_server.url(webdav_folder)))


def test_digest_authentication(wsgidav_server, webdav_folder):
    spec = wsgidav_server.spec(webdav_folder, **{"force-digest-authentication": "true"})
    assert roundtrip(spec) == ["f.txt"]


def test_digest_never_falls_back_to_basic(rclone_webdav_server, webdav_folder):
    """rclone serve webdav takes Basic only: with Digest forced, the password is never sent."""
    message = refused(rclone_webdav_server.spec(webdav_folder, **{"force-digest-authentication": "true"}))
    assert "refused the login" in message and "force-digest-authentication" in message


def test_options_that_cannot_work_are_refused():
    with pytest.raises(FatalBackendError, match="integrated-authentication"):
        open_backend(BackendSpec("webdav://u:p@127.0.0.1:1/x", {"integrated-authentication": "true"}))
    with pytest.raises(FatalBackendError, match="needs a user name"):
        open_backend(BackendSpec("webdav://127.0.0.1:1/x", {"force-digest-authentication": "true"}))
    with pytest.raises(FatalBackendError, match="use-ssl"):
        open_backend(BackendSpec("webdav://127.0.0.1:1/x", {"use-ssl": "maybe"}))
    with pytest.raises(FatalBackendError, match="'..' segment"):
        open_backend(BackendSpec("webdav://127.0.0.1:1/a/../b"))
    details = open_backend(BackendSpec("webdav://u@127.0.0.1/x?use-ssl=true")).details()
    assert details["url"] == "https://127.0.0.1:443/x" and details["authentication"] == "basic"


# -- TLS --------------------------------------------------------------------------------
def test_webdavs_with_the_certificate_pinned(webdavs_server, webdav_folder):
    assert roundtrip(webdavs_server.spec(webdav_folder)) == ["f.txt"]
    pins = f"{'0' * 40};{':'.join(webdavs_server.sha1[i:i + 2] for i in range(0, 40, 2)).lower()}"
    assert roundtrip(webdavs_server.spec(webdav_folder, **{"accept-specified-ssl-hash": pins})) == ["f.txt"]


def test_webdavs_refuses_an_unknown_certificate_showing_its_hash(webdavs_server, webdav_folder):
    for options in ({"accept-specified-ssl-hash": ""}, {"accept-specified-ssl-hash": "AB" * 20}):
        message = refused(webdavs_server.spec(webdav_folder, **options))
        assert f"accept-specified-ssl-hash={webdavs_server.sha1}" in message
        assert webdavs_server.password not in message
    assert not webdavs_server.local(webdav_folder).exists()


def test_webdavs_accepting_any_certificate_warns(webdavs_server, webdav_folder, caplog):
    spec = webdavs_server.spec(webdav_folder, **{"accept-specified-ssl-hash": "", "accept-any-ssl-certificate": "true"})
    with caplog.at_level(logging.WARNING, logger="synctool.backends.webdav"):
        assert roundtrip(spec) == ["f.txt"]
    assert "not checking the certificate" in caplog.text


def test_use_ssl_turns_webdav_into_https(webdavs_server, webdav_folder):
    spec = webdavs_server.spec(webdav_folder, **{"use-ssl": "true"})
    assert roundtrip(BackendSpec(spec.url.replace("webdavs://", "webdav://"), spec.options)) == ["f.txt"]


def test_plain_http_to_a_tls_server_fails_clearly(webdavs_server, webdav_folder):
    spec = webdavs_server.spec(webdav_folder)
    with pytest.raises(BackendError, match="lost|refused|answered"):
        with open_backend(BackendSpec(spec.url.replace("webdavs://", "webdav://"), spec.options)) as b:
            b.prepare(create=True)


# -- mtimes, listings, odd names ----------------------------------------------------------
def test_the_source_mtime_is_kept(webdav_server, webdav_folder):
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)
        b.write("d/m", iter([b"m"]), 1, mtime=1_600_000_000.4)
        b.write("d/n", iter([b"n"]), 1, mtime=1_600_000_000.0, overwrite=False)
        assert {e.name: e.mtime for e in b.list()} == {"d/m": 1_600_000_001.0, "d/n": 1_600_000_000.0}
    assert (webdav_server.local(webdav_folder) / "d" / "m").stat().st_mtime == 1_600_000_001


def test_a_server_ignoring_x_oc_mtime_lists_the_upload_time(tmp_path, webdav_folder):
    with wsgidav(tmp_path / "plain", honor_mtime=False) as server:
        with open_backend(DAV(server).spec(webdav_folder)) as b:
            b.prepare(create=True)
            b.write("m", iter([b"m"]), 1, mtime=1_600_000_000.0)
            assert abs(next(iter(b.list())).mtime - time.time()) < 300


ODD_NAMES = ["100%", "a#b", "what?", "semi;colon", "plus+sign", "amp&er=sand", "quote'and\"double",
             "dossier été/ファイル", "%41%2F", "back\\slash", "[brackets] {braces}", "~tilde"]  # fmt: skip


def test_names_that_mean_something_in_urls(webdav_server, webdav_folder):
    # wsgidav decodes a MOVE's Destination before taking it apart, so it
    # would move "what?" onto "what": names with '?', '#' or ';' are refused there.
    misread = webdav_server.kind == "wsgidav"
    good = [n for n in ODD_NAMES if not (misread and any(c in n for c in "?#;"))]
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)
        b.write("what", iter([b"keep me"]), 7)
        for i, name in enumerate(ODD_NAMES):
            if name in good:
                b.write(f"{name}/{name}", iter([str(i).encode()]), len(str(i)))
            else:
                with pytest.raises(FatalBackendError, match="misreads"):
                    b.write(f"{name}/{name}", iter([b"x"]), 1)
        if misread:
            with pytest.raises(FatalBackendError, match="misreads"):
                b.write("what?", iter([b"replaced"]), 8)
            with pytest.raises(FatalBackendError, match="misreads"):
                b.rename("what", "what?")
        expected = sorted([*(f"{n}/{n}" for n in good), "what"])
        assert sorted(e.name for e in b.list()) == expected
        for i, name in enumerate(good):
            assert b"".join(b.read(f"{name}/{name}")) == str(ODD_NAMES.index(name)).encode()
    on_disk = read_tree(webdav_server.local(webdav_folder))
    assert sorted(on_disk) == expected and on_disk["what"] == b"keep me"


def test_extended_propfind_and_its_debug_file(webdav_server, webdav_folder, tmp_path):
    debug = tmp_path / "propfind.xml"
    webdav_server.put(webdav_folder, {"a": b"1", "b/c": b"22"})
    spec = webdav_server.spec(webdav_folder, **{"use-extended-propfind": "true", "debug-propfind-file": str(debug)})
    with open_backend(spec) as b:
        assert {e.name: e.size for e in b.list()} == {"a": 1, "b/c": 2}
    assert debug.read_bytes().count(b"multistatus") >= 4  # two folders, each an opening and a closing tag


def test_a_deep_wide_tree_is_listed_whole(webdav_server, webdav_folder):
    files = {f"d{i % 7}/e{i % 13}/f{i}": b"x" for i in range(300)}
    webdav_server.put(webdav_folder, files)
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        assert sorted(e.name for e in b.list()) == sorted(files)


def test_missing_source_folder(webdav_server, webdav_folder):
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        with pytest.raises(NotFound):
            b.prepare(create=False)
        with pytest.raises(NotFound, match="does not exist"):
            list(b.list())
    assert not webdav_server.local(webdav_folder).exists()


def test_free_space_where_the_server_tells(webdav_server, webdav_folder):
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)
        free = b.free_bytes()
    if webdav_server.kind == "wsgidav":  # RFC 4331 quota-available-bytes
        assert free is not None and abs(free - shutil.disk_usage(webdav_server.root).free) < 1 << 30
    else:  # rclone serve webdav over a local folder lists no quota
        assert free is None


# -- never removing a folder --------------------------------------------------------------
def test_a_folder_in_the_way_is_never_replaced_nor_deleted(webdav_server, webdav_folder):
    webdav_server.put(webdav_folder, {"f/inside": b"precious", "g": b"g", "h": b"h"})
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        with pytest.raises(FatalBackendError, match="folder of that name is in the way"):
            b.write("f", iter([b"file"]), 4)
        with pytest.raises(FatalBackendError, match="folder of that name is in the way"):
            b.write("f", iter([b"file"]), 4, overwrite=False)
        with pytest.raises(DeleteError) as info:
            b.delete(["f", "g"])
        assert set(info.value.failures) == {"f"}
        with pytest.raises(AlreadyExists):
            b.rename("h", "f")
    assert read_tree(webdav_server.local(webdav_folder)) == {"f/inside": b"precious", "h": b"h"}


def test_rename_and_keep_old_as_into_new_folders(webdav_server, webdav_folder):
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)
        b.write("a", iter([b"1"]), 1)
        b.rename("a", "x/y/a")
        b.write("x/y/a", iter([b"2"]), 1, keep_old_as="old/20260101000000.old.a")
    assert read_tree(webdav_server.local(webdav_folder)) == {"x/y/a": b"2", "old/20260101000000.old.a": b"1"}


# -- connections ------------------------------------------------------------------------
def test_many_threads_share_one_client(webdav_server, webdav_folder):
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)

        def job(i: int) -> bool:
            data = bytes([i]) * (1000 + i * 5000)
            b.write(f"d{i % 3}/f{i}", iter([data]), len(data), overwrite=False)
            return b"".join(b.read(f"d{i % 3}/f{i}")) == data

        with ThreadPoolExecutor(12) as pool:
            assert all(pool.map(job, range(40)))
        assert len(list(b.list())) == 40
        client = b._client
        assert all(job(i) for i in range(40, 44)) and b._client is client
    assert temp_debris(webdav_server.local(webdav_folder)) == []


def test_a_forked_child_makes_its_own_client(webdav_server, webdav_folder):
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)
        b.write("before", iter([b"b"]), 1)
        parent = b._client
        pid = os.fork()
        if pid == 0:  # the child: a client of its own, the parent's left alone
            code = 1
            try:
                b.write("child", iter([b"c"]), 1)
                code = 0 if b._client is not parent else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert b._client is parent
        assert sorted(e.name for e in b.list()) == ["before", "child"]


def test_connection_refused_names_the_address():
    port = free_port()
    with pytest.raises(FatalBackendError, match=f"connection refused by 127.0.0.1:{port}"):
        with open_backend(BackendSpec(f"webdav://u:p@127.0.0.1:{port}/x")) as b:
            b.prepare(create=True)


def test_server_restarted_mid_write(webdav_server, webdav_folder):
    """The server dies in the middle of a write: a retryable error, nothing
    under the final name, no temporary file once the backend closes, and the
    next call reconnects."""
    root = webdav_server.local(webdav_folder)
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)
        b.write("big.bin", iter([b"old"]), 3)

        def chunks():
            yield b"a" * (1 << 20)
            webdav_server.restart()
            for _ in range(64):
                yield b"b" * (1 << 20)

        with pytest.raises(BackendError) as info:
            b.write("big.bin", chunks(), 65 << 20)
        assert info.value.retryable
        assert sorted(e.name for e in b.list() if not (b.is_temporary(e.name) or is_journal(e.name))) == ["big.bin"]
        assert b"".join(b.read("big.bin")) == b"old"
        b.write("big.bin", iter([b"new"]), 3)
        assert b"".join(b.read("big.bin")) == b"new"
    assert temp_debris(root) == [] and read_tree(root) == {"big.bin": b"new"}


def test_server_restarted_mid_read(webdav_server, webdav_folder):
    """A read cut short is a retryable error, never a short file."""
    data = os.urandom(24 << 20)
    with open_backend(webdav_server.spec(webdav_folder)) as b:
        b.prepare(create=True)
        b.write("big.bin", iter([data]), len(data))
        got = 0
        with pytest.raises(BackendError) as info:
            for chunk in b.read("big.bin"):
                got += len(chunk)
                if got >= 1 << 20 and webdav_server.proc.poll() is None:
                    webdav_server.restart()
        assert info.value.retryable and got < len(data)
        assert b"".join(b.read("big.bin")) == data


def test_a_missing_httpx_names_the_extra():
    code = "import sys; sys.modules['httpx'] = None\n" \
           "from synctool.backends.registry import backend_class\n" \
           "try:\n    backend_class('webdav')\nexcept Exception as exc:\n    print(exc)\n"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "pip install 'synctool[webdav]'" in out and len(out.strip().splitlines()) == 1
