"""The FTP backend against real servers: rclone serve ftp and pyftpdlib (plain,
explicit and implicit FTPS, and without MLSD)."""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from scripts.servers import free_port
from synctool.backends import BackendSpec, NotFound, open_backend
from synctool.backends.base import BackendError, FatalBackendError, UnsafeName
from synctool.backends.ftp import MAX_CONNECTIONS
from tests.backend_contract import BackendContract
from tests.fixtures.ftp import HOME, spec
from tests.helpers import OLD, refused, roundtrip

CONTRACT_SERVERS = {
    "rclone": "rclone_ftp_server",
    "pyftpdlib-explicit-ftps": "pyftpdlib_server",
    "pyftpdlib-implicit-ftps": "implicit_ftps_server",
    "pyftpdlib-list-only": "list_only_ftp_server",
}


class TestFTPBackend(BackendContract):
    @pytest.fixture(params=sorted(CONTRACT_SERVERS))
    def spec(self, request, ftp_folder):
        return spec(request.getfixturevalue(CONTRACT_SERVERS[request.param]), ftp_folder)


def url_with_password(server, folder: str, password: str | None = None) -> str:
    return server.url(folder).replace(f"{server.user}@", f"{server.user}:{quote(password or server.password, safe='')}@")


# -- logging in ------------------------------------------------------------------------
def test_password_in_the_url(ftp_server, ftp_folder):
    options = {k: v for k, v in ftp_server.synctool_options().items() if k != "auth-password"}
    assert roundtrip(BackendSpec(url_with_password(ftp_server, ftp_folder), options)) == ["f.txt"]
    assert (ftp_server.root / ftp_folder / "f.txt").read_bytes() == b"hello"


def test_user_from_auth_username_and_the_url_user_wins(ftp_server, ftp_folder):
    options = ftp_server.synctool_options(**{"auth-username": ftp_server.user})
    url = ftp_server.url(ftp_folder).replace(f"{ftp_server.user}@", "")
    assert roundtrip(BackendSpec(url, options)) == ["f.txt"]
    # As in Duplicati, a user named in the URL comes before auth-username.
    spec = BackendSpec(ftp_server.url(ftp_folder), {**options, "auth-username": "nobody-of-that-name"})
    assert roundtrip(spec, "g.txt") == ["f.txt", "g.txt"]


def test_wrong_password_is_refused_without_showing_it(ftp_server, ftp_folder):
    message = refused(spec(ftp_server, ftp_folder, **{"auth-password": "not-the-password-42"}))
    assert "login as synctool" in message and "failed" in message
    assert "not-the-password-42" not in message
    assert not (ftp_server.root / ftp_folder).exists()


def test_connection_refused_names_the_address():
    port = free_port()
    with pytest.raises(BackendError) as info:
        with open_backend(BackendSpec(f"ftp://u@127.0.0.1:{port}/x", {"auth-password": "secret-that-stays"})) as b:
            b.prepare(create=True)
    message = str(info.value)
    assert f"connection refused by 127.0.0.1:{port}" in message and "secret-that-stays" not in message


def test_a_missing_host_or_a_bad_option_value_is_refused_before_connecting():
    with pytest.raises(FatalBackendError, match="needs a host"):
        open_backend(BackendSpec("ftp:///folder"))
    for key, value in (("ftp-encryption-mode", "Sometimes"), ("ftp-data-connection-type", "Carrier"),
                       ("ftp-use-cwd-names", "maybe"), ("short-timeout", "soon")):  # fmt: skip
        with pytest.raises(FatalBackendError, match=key):
            open_backend(BackendSpec("ftp://h/x", {key: value}))
    with pytest.raises(FatalBackendError, match="no longer offered"):
        open_backend(BackendSpec("ftp://h/x", {"ftp-ssl-protocols": "Ssl3"}))
    with pytest.raises(FatalBackendError, match="knows no option"):
        open_backend(BackendSpec("aftp://h/x?ftp-encryption-mode=Explicit"))  # aftp:// names it aftp-...


def test_duplicati_option_names_and_their_defaults():
    details = open_backend(BackendSpec("ftp://u@h/x")).details()
    assert (details["port"], details["encryption"], details["data connection"]) == ("21", "None", "AutoPassive")
    assert "below the login folder" in details["path"]
    assert open_backend(BackendSpec("ftps://h/x")).details()["encryption"] == "Explicit"
    assert open_backend(BackendSpec("ftp://h/x", {"use-ssl": "true"})).details()["encryption"] == "Explicit"
    implicit = open_backend(BackendSpec("ftp://h/x", {"ftp-encryption-mode": "implicit"})).details()
    assert (implicit["encryption"], implicit["port"]) == ("Implicit", "990")
    legacy = open_backend(BackendSpec("ftp://h/x", {"ftp-passive": "true", "ftp-regular": "true"})).details()
    assert legacy["data connection"] == "AutoActive"  # ftp-regular wins, as in Duplicati
    alternative = open_backend(BackendSpec("aftp://h/x", {"aftp-data-connection-type": "EPRT"})).details()
    assert (alternative["data connection"], alternative["path"]) == ("EPRT", "/x")  # aftp: absolute by default
    assert open_backend(BackendSpec("ftp://h/x", {"ftp-absolute-path": "true"})).details()["path"] == "/x"
    assert open_backend(BackendSpec("aftp://h/x", {"aftp-relative-path": "true"})).details()["path"].startswith("x ")


@pytest.mark.parametrize(
    "scheme, options, where",
    [
        ("ftp", {}, "login"),
        ("ftp", {"ftp-absolute-path": "true"}, "root"),
        ("aftp", {}, "root"),
        ("aftp", {"aftp-relative-path": "true"}, "login"),
        ("ftp", {"ftp-use-cwd-names": "true"}, "login"),
        ("aftp", {"aftp-use-cwd-names": "true"}, "root"),
    ],
)
def test_the_path_is_below_the_login_folder_or_the_root(home_ftp_server, ftp_folder, scheme, options, where):
    server = home_ftp_server
    url = server.url(f"{ftp_folder}/sub").replace("ftp://", f"{scheme}://", 1)
    assert roundtrip(BackendSpec(url, server.synctool_options(**options)), "d/f.txt") == ["d/f.txt"]
    base = server.root / HOME if where == "login" else server.root
    assert (base / ftp_folder / "sub" / "d" / "f.txt").read_bytes() == b"hello"
    other = server.root if where == "login" else server.root / HOME
    assert not (other / ftp_folder).exists()


# -- TLS ---------------------------------------------------------------------------------------
def test_a_certificate_the_system_trusts_needs_no_pin(pyftpdlib_server, ftp_folder, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(pyftpdlib_server.tls.ca))  # as a system's trusted authorities
    options = {k: v for k, v in pyftpdlib_server.synctool_options().items() if k != "accept-specified-ssl-hash"}
    assert roundtrip(BackendSpec(pyftpdlib_server.url(ftp_folder), options)) == ["f.txt"]


@pytest.mark.parametrize("server", ["pyftpdlib_server", "implicit_ftps_server"])
def test_an_untrusted_certificate_is_refused_before_the_login(request, server, ftp_folder):
    server = request.getfixturevalue(server)
    before = server.log.read_text()
    options = {k: v for k, v in server.synctool_options().items() if k != "accept-specified-ssl-hash"}
    message = refused(BackendSpec(server.url(ftp_folder), options))
    assert "not trusted" in message and server.tls.sha1 in message and "accept-specified-ssl-hash" in message
    wrong = refused(BackendSpec(server.url(ftp_folder), {**options, "accept-specified-ssl-hash": "AB" * 20}))
    assert server.tls.sha1 in wrong
    new = server.log.read_text()[len(before):]
    assert "USER" not in new and "logged in" not in new  # no credential was sent
    assert not (server.root / ftp_folder).exists()


def test_accept_any_certificate_warns(pyftpdlib_server, ftp_folder, caplog):
    options = {k: v for k, v in pyftpdlib_server.synctool_options().items() if k != "accept-specified-ssl-hash"}
    options["accept-any-ssl-certificate"] = "true"
    with caplog.at_level(logging.WARNING, logger="synctool.backends.ftp"):
        assert roundtrip(BackendSpec(pyftpdlib_server.url(ftp_folder), options)) == ["f.txt"]
    assert "not checking the TLS certificate" in caplog.text


def test_a_plain_server_refuses_explicit_tls(rclone_ftp_server, ftp_folder):
    """ftps:// against a server without TLS fails before the password is sent; Auto falls back, warning."""
    plain = rclone_ftp_server
    message = refused(BackendSpec(plain.url(ftp_folder).replace("ftp://", "ftps://"), plain.synctool_options()))
    assert "refused TLS" in message
    auto = BackendSpec(plain.url(ftp_folder), plain.synctool_options(**{"ftp-encryption-mode": "Auto"}))
    assert roundtrip(auto) == ["f.txt"]


def test_tls_versions_from_ftp_ssl_protocols(pyftpdlib_server, ftp_folder):
    assert roundtrip(spec(pyftpdlib_server, ftp_folder, **{"ftp-ssl-protocols": "Tls12"})) == ["f.txt"]
    assert roundtrip(spec(pyftpdlib_server, ftp_folder, **{"ftp-ssl-protocols": "Tls12,Tls13"}), "g") == ["f.txt", "g"]


# -- data connections, listings, paths ------------------------------------------------------
@pytest.mark.parametrize("kind", ["AutoPassive", "PASV", "PASVEX", "PASVUSE", "EPSV", "AutoActive", "PORT", "EPRT"])
def test_every_data_connection_type(pyftpdlib_server, ftp_folder, kind):
    """Over TLS, which active connections take as well (the server connects, the client still leads TLS)."""
    assert roundtrip(spec(pyftpdlib_server, ftp_folder, **{"ftp-data-connection-type": kind})) == ["f.txt"]


def test_active_mode_on_rclone(rclone_ftp_server, ftp_folder):
    assert roundtrip(spec(rclone_ftp_server, ftp_folder, **{"ftp-regular": "true"})) == ["f.txt"]


def test_cwd_names_mirror_as_absolute_paths_do(ftp_server, ftp_folder):
    options = {"ftp-use-cwd-names": "true"}
    with open_backend(spec(ftp_server, ftp_folder, **options)) as b:
        b.prepare(create=True)
        b.write("a/b/c.bin", iter([b"c" * 5000]), 5000, mtime=OLD)
        b.write("top", iter([b"t"]), 1)
        b.rename("top", "a/moved")
        b.write("a/b/c.bin", iter([b"new"]), 3, keep_old_as="a/b/20260101000000.old.c.bin")
        assert {e.name: e.size for e in b.list()} == {"a/b/c.bin": 3, "a/b/20260101000000.old.c.bin": 5000, "a/moved": 1}
        b.delete(["a/moved", "a/b/c.bin", "a/b/20260101000000.old.c.bin"])
        assert list(b.list()) == []
    assert list((ftp_server.root / ftp_folder).iterdir()) == []  # emptied folders are removed, never the root


def test_list_only_server_keeps_exact_times(list_only_ftp_server, ftp_folder):
    """Without MLSD, LIST shows minutes (or only the day): MDTM gives the second."""
    with open_backend(spec(list_only_ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        b.write("old", iter([b"o"]), 1, mtime=OLD + 0.4)
        b.write("recent", iter([b"r"]), 1, mtime=time.time() - 3600.4)
        b.write(".hidden", iter([b"h"]), 1, mtime=OLD)
        entries = {e.name: e.mtime for e in b.list()}
        assert b.keeps_mtime and b.mtime_precision == 1.0
    assert entries["old"] == OLD + 1 and entries[".hidden"] == OLD
    assert entries["recent"] == float(math.ceil(time.time() - 3600.4)) or abs(entries["recent"] - time.time() + 3600) < 5


def test_the_upload_time_stands_where_the_server_takes_no_mfmt(rclone_ftp_server, ftp_folder):
    with open_backend(spec(rclone_ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        b.write("f", iter([b"f"]), 1, mtime=OLD)
        [entry] = b.list()
        assert not b.keeps_mtime
    assert abs(entry.mtime - time.time()) < 60


def test_missing_source_folder(ftp_server, ftp_folder):
    with open_backend(spec(ftp_server, ftp_folder)) as b:
        with pytest.raises(NotFound):
            b.prepare(create=False)
        with pytest.raises(NotFound):
            list(b.list())
    assert not (ftp_server.root / ftp_folder).exists()


def test_a_file_where_the_root_should_be(ftp_server, ftp_folder):
    ftp_server.put("", {ftp_folder: b"a file"})
    assert "not a folder" in refused(spec(ftp_server, ftp_folder))


def test_a_name_with_a_line_break_is_refused_not_sent(ftp_server, ftp_folder):
    with open_backend(spec(ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        with pytest.raises(UnsafeName, match="line break"):
            b.write("two\nlines", iter([b"x"]), 1)
        assert list(b.list()) == []


def test_the_dialog_is_logged_with_the_password_masked(ftp_server, ftp_folder, caplog):
    with caplog.at_level(logging.INFO, logger="synctool.backends.ftp"):
        roundtrip(spec(ftp_server, ftp_folder, **{"ftp-log-to-console": "true"}))
    assert "> STOR" in caplog.text and "< 226" in caplog.text and "> PASS ***" in caplog.text
    assert ftp_server.password not in caplog.text


# -- connections ------------------------------------------------------------------------------
def test_many_threads_share_a_few_connections(ftp_server, ftp_folder):
    with open_backend(spec(ftp_server, ftp_folder)) as b:
        b.prepare(create=True)

        def job(i: int) -> bool:
            data = bytes([i]) * (1000 + i * 5000)
            b.write(f"d{i % 3}/f{i}", iter([data]), len(data))
            return b"".join(b.read(f"d{i % 3}/f{i}")) == data

        with ThreadPoolExecutor(12) as pool:
            assert all(pool.map(job, range(40)))
        assert len(list(b.list())) == 40
        assert b._pool.count <= MAX_CONNECTIONS
    assert not list((ftp_server.root / ftp_folder).rglob(".synctool-*"))


def test_backend_pickles_without_its_connections(ftp_server, ftp_folder):
    with open_backend(spec(ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        copy = pickle.loads(pickle.dumps(b))
        assert copy._pool is None
        assert list(copy.list()) == []  # opens its own
        copy.close()


def test_a_restarted_server_is_reconnected_to(ftp_server, ftp_folder):
    """Idle connections the server dropped are noticed before use, not failed on."""
    with open_backend(spec(ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        b.write("f", iter([b"before"]), 6)
        ftp_server.restart()
        assert b"".join(b.read("f")) == b"before"
        b.write("f", iter([b"after"]), 5)
        assert b"".join(b.read("f")) == b"after"


def test_connection_cut_mid_write(ftp_server, ftp_folder):
    """The server goes away in the middle of a write: a retryable error,
    nothing under the final name, and the temporary file removed once the
    next call has reconnected."""
    root = ftp_server.root / ftp_folder
    with open_backend(spec(ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        b.write("big.bin", iter([b"old"]), 3)

        def chunks():
            yield b"a" * (1 << 20)
            ftp_server.restart()
            for _ in range(64):
                yield b"b" * (1 << 20)

        with pytest.raises(BackendError) as info:
            b.write("big.bin", chunks(), 65 << 20)
        assert info.value.retryable
        assert sorted(e.name for e in b.list()) in (["big.bin"], sorted(["big.bin", *_temps(root)]))
        assert b"".join(b.read("big.bin")) == b"old"
        b.write("big.bin", iter([b"new"]), 3)
        assert b"".join(b.read("big.bin")) == b"new"
    assert _temps(root) == []


def test_connection_cut_mid_read(ftp_server, ftp_folder):
    """A read cut short raises a retryable error, never a short file."""
    data = os.urandom(24 << 20)
    with open_backend(spec(ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        b.write("big.bin", iter([data]), len(data))
        got = 0
        with pytest.raises(BackendError) as info:
            for piece in b.read("big.bin"):
                if not got:
                    ftp_server.restart()
                got += len(piece)
        assert info.value.retryable and got < len(data)
        assert b"".join(b.read("big.bin")) == data


def test_a_source_that_fails_mid_write_is_raised_as_itself(ftp_server, ftp_folder):
    class Vanished(Exception):
        pass

    def chunks():
        yield b"x" * 300_000
        raise Vanished()

    with open_backend(spec(ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        with pytest.raises(Vanished):
            b.write("f", chunks(), 600_000)
        b.write("g", iter([b"the connection serves on"]), 24)
        assert [e.name for e in b.list()] == ["g"]


def _temps(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".synctool-*.tmp"))


def test_free_space_where_the_server_tells(pyftpdlib_server, rclone_ftp_server, ftp_folder):
    """pyftpdlib here answers AVBL, as FileZilla Server does; rclone does not."""
    with open_backend(spec(pyftpdlib_server, ftp_folder)) as b:
        b.prepare(create=True)
        free = b.free_bytes()
    assert free is not None and abs(free - shutil.disk_usage(pyftpdlib_server.root).free) < 64 << 20
    with open_backend(spec(rclone_ftp_server, ftp_folder)) as b:
        b.prepare(create=True)
        assert b.free_bytes() is None
        assert b.free_bytes() is None  # not asked again
