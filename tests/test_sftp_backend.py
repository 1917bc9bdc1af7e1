"""The SFTP backend against a real OpenSSH sshd and rclone's SFTP server."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import paramiko
import pytest

from synctool.backends import BackendSpec, NotFound, open_backend
from synctool.backends.base import BackendError, FatalBackendError
from synctool.backends.sftp import MAX_CHANNELS, SFTPBackend, fingerprint_matches, fingerprints
from tests.backend_contract import BackendContract
from tests.helpers import refused, roundtrip


@pytest.fixture(autouse=True)
def _clean_ssh_environment(no_ssh_environment):
    """No known_hosts and no agent of the person running the tests."""


class TestSFTPBackend(BackendContract):
    @pytest.fixture
    def spec(self, sftp_server, sftp_folder):
        return sftp_server.spec(sftp_folder)


def password_spec(server, folder: str, **options: str) -> BackendSpec:
    if server.password_user is None:
        pytest.skip("password login needs a local account with a known password: run as root")
    url = server.url(folder, user=server.password_user, served_as=server.password_served_as)
    return BackendSpec(url, {"ssh-fingerprint": server.fingerprint, "ssh-disable-agent": "true", **options})


# -- logging in -------------------------------------------------------------------
def test_key_login_with_duplicati_fingerprint(sftp_server, sftp_folder):
    spec = sftp_server.spec(sftp_folder, **{"ssh-fingerprint": sftp_server.fingerprint_md5})
    assert roundtrip(spec) == ["f.txt"]
    assert (sftp_server.local(sftp_folder) / "f.txt").read_bytes() == b"hello"


def test_password_login(sftp_server, sftp_folder):
    spec = password_spec(sftp_server, sftp_folder, **{"auth-password": sftp_server.password})
    assert roundtrip(spec) == ["f.txt"]
    assert (sftp_server.password_dir / sftp_folder / "f.txt").read_bytes() == b"hello"


def test_password_in_url(sftp_server, sftp_folder):
    spec = password_spec(sftp_server, sftp_folder)
    user = f"{sftp_server.password_user}:{quote(sftp_server.password, safe='')}"
    url = spec.url.replace(f"//{sftp_server.password_user}@", f"//{user}@")
    assert roundtrip(BackendSpec(url, spec.options)) == ["f.txt"]


def test_wrong_password_is_refused_without_showing_it(sftp_server, sftp_folder):
    spec = password_spec(sftp_server, sftp_folder, **{"auth-password": "not-the-password-42"})
    message = refused(spec)
    assert "authentication" in message and "failed" in message
    assert "not-the-password-42" not in message


def test_passphrase_protected_key(sftp_server, sftp_folder):
    keys = sftp_server.keys
    options = {"ssh-keyfile": str(keys.passphrase_key), "auth-password": keys.passphrase}
    assert roundtrip(sftp_server.spec(sftp_folder, **options)) == ["f.txt"]


def test_wrong_or_missing_passphrase(sshd_server, sftp_folder):
    keys = sshd_server.keys
    spec = sshd_server.spec(sftp_folder, **{"ssh-keyfile": str(keys.passphrase_key)})
    assert "auth-password" in refused(spec)
    spec = sshd_server.spec(sftp_folder, **{"ssh-keyfile": str(keys.passphrase_key), "auth-password": "wrong-pass"})
    message = refused(spec)
    assert "passphrase" in message and "wrong-pass" not in message


@pytest.mark.parametrize("form", ["plain", "sshkey-url"])
def test_inline_key(sftp_server, sftp_folder, form):
    text = sftp_server.keys.key.read_text()
    value = text if form == "plain" else "sshkey://" + quote(text, safe="")
    options = {"ssh-key": value, "ssh-fingerprint": sftp_server.fingerprint, "ssh-disable-agent": "true"}
    spec = BackendSpec(sftp_server.url(sftp_folder), options)
    assert roundtrip(spec) == ["f.txt"]


def test_missing_user_is_a_clear_error(sshd_server):
    with pytest.raises(FatalBackendError, match="auth-username"):
        open_backend(BackendSpec(f"ssh://{sshd_server.host}:{sshd_server.port}/x"))


def test_user_from_auth_username(sshd_server, sftp_folder):
    spec = sshd_server.spec(sftp_folder, **{"auth-username": sshd_server.user})
    url = spec.url.replace(f"//{sshd_server.user}@", "//")
    assert roundtrip(BackendSpec(url, spec.options)) == ["f.txt"]


def test_relative_path_is_below_the_login_folder(sftp_server, sftp_folder):
    spec = password_spec(
        sftp_server, sftp_folder, **{"auth-password": sftp_server.password, "ssh-relative-path": "true"}
    )
    # The URL's path is taken relative to the login folder, wherever that is.
    relative = BackendSpec(f"ssh://{sftp_server.password_user}@{sftp_server.host}:{sftp_server.port}/{sftp_folder}", spec.options)
    roundtrip(relative)
    assert (sftp_server.password_dir / sftp_folder / "f.txt").read_bytes() == b"hello"


# -- host keys --------------------------------------------------------------------
def test_wrong_pinned_fingerprint_is_refused_before_login(sftp_server, sftp_folder):
    log = sftp_server.serve_dir.parent / "sshd.log"
    before = log.read_text() if log.exists() else ""
    wrong = "SHA256:" + "A" * 43
    message = refused(sftp_server.spec(sftp_folder, **{"ssh-fingerprint": wrong}))
    assert "does not match" in message
    assert sftp_server.fingerprint in message and sftp_server.fingerprint_md5 in message
    assert not sftp_server.local(sftp_folder).exists()
    if log.exists():  # sshd logs every login attempt: there was none
        new = log.read_text()[len(before) :]
        assert "Accepted" not in new and "Failed" not in new


def test_unknown_host_is_refused_showing_both_fingerprints(sftp_server, sftp_folder):
    options = {k: v for k, v in sftp_server.key_options().items() if k != "ssh-fingerprint"}
    message = refused(BackendSpec(sftp_server.url(sftp_folder), options))
    assert "unknown" in message
    assert sftp_server.fingerprint in message and sftp_server.fingerprint_md5 in message
    assert not sftp_server.local(sftp_folder).exists()


def test_known_hosts_is_consulted(sshd_server, sftp_folder, no_ssh_environment):
    options = {k: v for k, v in sshd_server.key_options().items() if k != "ssh-fingerprint"}
    spec = BackendSpec(sshd_server.url(sftp_folder), options)
    known_hosts = no_ssh_environment / ".ssh" / "known_hosts"
    known_hosts.parent.mkdir()
    key = sshd_server.host_key
    entry = f"[{sshd_server.host}]:{sshd_server.port} {key.get_name()} {key.get_base64()}\n"
    known_hosts.write_text(entry)
    assert roundtrip(spec) == ["f.txt"]
    # The same host with another key: refused as a changed key.
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd_server.keys.key))
    known_hosts.write_text(entry.replace(key.get_base64(), other.get_base64()))
    assert "differs from the one in known_hosts" in refused(spec)


def test_accept_any_fingerprint_warns(sftp_server, sftp_folder, caplog, monkeypatch):
    # An in-process command-line run earlier in this process leaves the
    # "synctool" logger not propagating: caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("synctool"), "propagate", True)
    options = {**sftp_server.key_options(), "ssh-accept-any-fingerprints": "true"}
    del options["ssh-fingerprint"]
    with caplog.at_level(logging.WARNING, logger="synctool.backends.sftp"):
        assert roundtrip(BackendSpec(sftp_server.url(sftp_folder), options)) == ["f.txt"]
    assert "not checking the host key" in caplog.text


def test_fingerprint_forms():
    key = paramiko.ECDSAKey.generate()
    duplicati, openssh = fingerprints(key)
    md5 = duplicati.split()[-1]
    assert fingerprint_matches(duplicati, key)
    assert fingerprint_matches(f"MD5:{md5.upper()}", key)
    assert fingerprint_matches(openssh + "=", key)
    assert not fingerprint_matches(md5[:-2] + "00", key)
    assert not fingerprint_matches("SHA256:" + "x" * 43, key)


# -- errors that say what is wrong -----------------------------------------------------
def test_connection_refused_names_the_address(sshd_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: nothing answers
        spec = BackendSpec(f"ssh://u@127.0.0.1:{port}/x", {"ssh-fingerprint": sshd_server.fingerprint})
        assert f"connection refused by 127.0.0.1:{port}" in refused(spec)


def test_missing_source_folder(sftp_server, sftp_folder):
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        with pytest.raises(NotFound):
            b.prepare(create=False)
        with pytest.raises(NotFound, match=sftp_folder):
            list(b.list())
    assert not sftp_server.local(sftp_folder).exists()


def test_a_first_login_asks_its_questions_in_one_round_trip(sftp_server, sftp_folder, monkeypatch):
    """Across a network each question waited for alone is a round trip before
    the first copy: the server's limits, the root's realpath and whether it
    is a folder go out together, and prepare asks nothing more."""
    from synctool.backends import sftp_pipe

    sftp_server.put(sftp_folder, {"a": b"x", "sub/file": b"not a folder"})
    steps: list[str] = []
    send, reply = sftp_pipe.Pipe.send, sftp_pipe.Pipe.reply
    monkeypatch.setattr(sftp_pipe.Pipe, "send", lambda self, *a: steps.append("send") or send(self, *a))
    monkeypatch.setattr(sftp_pipe.Pipe, "reply", lambda self, n: steps.append("reply") or reply(self, n))
    asked = []
    stat = paramiko.SFTPClient.stat
    monkeypatch.setattr(paramiko.SFTPClient, "stat", lambda self, path: asked.append(path) or stat(self, path))
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=False)
        assert steps == ["send"] * 3 + ["reply"] * 3 and asked == []
        assert [e.name for e in b.list()] == ["a", "sub/file"]
    with open_backend(sftp_server.spec(sftp_folder + "/sub/file")) as b:
        with pytest.raises(FatalBackendError, match="exists but is not a folder"):
            b.prepare(create=False)
    with open_backend(sftp_server.spec(sftp_folder + "-new/below")) as b:
        with pytest.raises(NotFound):
            b.prepare(create=False)
        b.prepare(create=True)  # asks again, and creates it
        assert b.root_place() is not None
    assert sftp_server.local(sftp_folder + "-new/below").is_dir()


def test_bad_option_values():
    for key, value in (("ssh-keepalive", "often"), ("ssh-relative-path", "maybe")):
        with pytest.raises(FatalBackendError, match=key):
            SFTPBackend(BackendSpec("ssh://u@h/x", {key: value}))
    assert SFTPBackend(BackendSpec("ssh://u@h/x", {"ssh-keepalive": "1m30s"})).settings.keepalive == 90
    assert SFTPBackend(BackendSpec("ssh://u@h/x?ssh-keepalive=45")).settings.keepalive == 45


# -- listing, concurrency, connections ---------------------------------------------------
def test_symlinks_are_listed_as_links_and_never_followed(sshd_server, sftp_folder):
    root = sshd_server.local(sftp_folder)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep").write_bytes(b"d")
    (root / "a" / "empty").mkdir()
    (root / "link").symlink_to(root / "a" / "b" / "c" / "deep")
    (root / "loop").symlink_to(root)
    with open_backend(sshd_server.spec(sftp_folder)) as b:
        assert {e.name: e.link for e in b.list()} == {"a/b/c/deep": False, "link": True, "loop": True}


def test_delete_removes_emptied_folders(sftp_server, sftp_folder):
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=True)
        b.write("x/y/one", iter([b"1"]), 1)
        b.write("x/two", iter([b"2"]), 1)
        b.delete(["x/y/one"])
    root = sftp_server.local(sftp_folder)
    assert not (root / "x" / "y").exists() and (root / "x" / "two").exists()


def test_many_threads_share_one_connection(sftp_server, sftp_folder):
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=True)

        def job(i: int) -> bytes:
            data = bytes([i]) * (1000 + i * 5000)
            b.write(f"d{i % 3}/f{i}", iter([data]), len(data))
            return b"".join(b.read(f"d{i % 3}/f{i}")) == data

        with ThreadPoolExecutor(12) as pool:
            assert all(pool.map(job, range(40)))
        assert len(list(b.list())) == 40
        conn = b._conn
        assert conn._open_channels <= MAX_CHANNELS
    assert not any(p.name.startswith(".synctool-") for p in sftp_server.local(sftp_folder).rglob("*"))


def test_backend_pickles_without_its_connection(sshd_server, sftp_folder):
    with open_backend(sshd_server.spec(sftp_folder)) as b:
        b.prepare(create=True)
        copy = pickle.loads(pickle.dumps(b))
        assert copy._conn is None
        assert list(copy.list()) == []  # opens its own connection
        copy.close()


def test_connection_cut_mid_write(sftp_server, sftp_folder):
    """The server drops the connection in the middle of a write: nothing under
    the final name, no temporary file left, and the next call reconnects."""
    root = sftp_server.local(sftp_folder)
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=True)
        b.write("big.bin", iter([b"old"]), 3)
        cut = threading.Event()

        def chunks():
            yield b"a" * (1 << 20)
            sftp_server.cut()
            cut.set()
            for _ in range(64):
                yield b"b" * (1 << 20)

        with pytest.raises(BackendError) as info:
            b.write("big.bin", chunks(), 65 << 20)
        assert cut.is_set() and info.value.retryable
        with pytest.raises(BackendError):
            b.write("new/file.bin", _cut_after_first_chunk(sftp_server), 65 << 20)

        # the next call reconnects, and cleans up what the cut left
        assert sorted(e.name for e in b.list()) == ["big.bin"]
        assert b"".join(b.read("big.bin")) == b"old"
        b.write("big.bin", iter([b"new"]), 3)
        assert b"".join(b.read("big.bin")) == b"new"
    leftovers = [p.name for p in Path(root).rglob("*") if p.name.startswith(".synctool-")]
    assert leftovers == []
    assert not (root / "new" / "file.bin").exists()


def test_connection_cut_mid_read(sftp_server, sftp_folder):
    """The server drops the connection while a large file streams in: the
    reader gets a retryable BackendError, not a short file, and the next
    read reconnects and gets every byte."""
    data = os.urandom(24 << 20)
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=True)
        b.write("big.bin", iter([data]), len(data))
        got = 0
        with pytest.raises(BackendError) as info:
            for piece in b.read("big.bin"):
                if not got:
                    sftp_server.cut()
                got += len(piece)
        assert info.value.retryable and got < len(data)
        assert b"".join(b.read("big.bin")) == data


def _cut_after_first_chunk(server):
    yield b"c" * (1 << 20)
    server.cut()
    for _ in range(64):
        yield b"d" * (1 << 20)


class _CuttingRelay:
    """A loopback TCP relay to the real server that drops both sides once the
    server has sent ``limit`` bytes: a connection lost at an exact point of
    the handshake, the login or the opening of the first SFTP channel."""

    def __init__(self, port: int, limit: int):
        self.target, self.limit = port, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
        self._pump(server, client, self.limit)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while limit is None or sent < limit:
                data = source.recv(65536)
                if not data:
                    break
                if limit is not None:
                    data = data[: limit - sent]
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_connection_lost_while_connecting_is_a_retryable_error(sftp_server, sftp_folder):
    """Wherever the connection drops before the first channel is open, the
    caller gets a retryable BackendError: paramiko's raw EOFError or
    SSHException escaped the backend, and a run ended as if interrupted."""
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=True)  # through the server: rclone's listing cache sees it
    outcomes = []
    for limit in range(0, 20_000, 61):
        relay = _CuttingRelay(sftp_server.port, limit)
        url = sftp_server.url(sftp_folder).replace(f":{sftp_server.port}/", f":{relay.port}/")
        with open_backend(BackendSpec(url, sftp_server.key_options())) as b:
            try:
                assert list(b.list()) == []
                outcomes.append("ok")
                break
            except BackendError as exc:
                assert exc.retryable, exc
                outcomes.append("lost")
        relay.thread.join(10)
    assert outcomes[-1] == "ok" and outcomes.count("lost") > 20, outcomes


# -- closing ----------------------------------------------------------------------
def test_closing_leaves_no_connection_thread_running(sftp_server, sftp_folder):
    # paramiko's Transport.close() returns before its thread has ended, and
    # that thread logs on its way out: still running into the interpreter's
    # exit, it could die holding logging's lock and hang the exit for ever.
    backend = open_backend(sftp_server.spec(sftp_folder))
    backend.prepare(create=True)
    backend.write("f", iter([b"x"]), 1)
    assert any(isinstance(t, paramiko.Transport) for t in threading.enumerate())
    backend.close()
    assert [t for t in threading.enumerate() if isinstance(t, paramiko.Transport)] == []
