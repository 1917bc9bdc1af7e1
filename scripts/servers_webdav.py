"""Real WebDAV servers on loopback, as plain context managers: rclone's and wsgidav.

    with rclone_webdav(Path("/dev/shm/dav")) as dav:
        synctool ... dav.url("mirror") --dst-options <dav.synctool_options()>
        rclone sync ... benchdav:mirror   (with env=dav.rclone_env("benchdav"))

Both log in one user by password (a throw-away one made for the run), serve
a folder of this machine, listen on 127.0.0.1 only, on a free port, and speak
https with ``tls=True`` (a self-signed certificate made for the run, whose
hash :meth:`WebDAVServer.synctool_options` pins). wsgidav serves below
``/dav`` rather than at the top, so that names below a path prefix are
exercised too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from scripts.servers import LOOPBACK, real_executable, start_on_free_port, stop_tree, wait_until_ready


@dataclasses.dataclass
class WebDAVServer:
    """A running server and how to reach it; its files are also files of this machine."""

    kind: str  # "rclone" or "wsgidav"
    host: str
    port: int
    user: str
    password: str
    root: Path  # the served folder
    prefix: str  # the URL path the folder is served at: "" or "/dav"
    tls: bool
    certificate: bytes | None  # DER, with tls
    log: Path
    proc: subprocess.Popen
    command: list[str]
    env: dict[str, str] | None = None

    @property
    def sha1(self) -> str:
        """The certificate's SHA-1 in hex capitals, as Duplicati's accept-specified-ssl-hash takes it."""
        assert self.certificate is not None
        return hashlib.sha1(self.certificate).hexdigest().upper()  # noqa: S324 - a name, not security

    def url(self, folder: str = "", user: str | None = None, password: str | None = None) -> str:
        """synctool's URL for ``folder`` below the served folder; credentials in it only when given."""
        login = ""
        if user is not None:
            login = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "") + "@"
        scheme = "webdavs" if self.tls else "webdav"
        return f"{scheme}://{login}{self.host}:{self.port}{self.prefix}/{quote(folder)}"

    def http_url(self, path: str = "") -> str:
        """The plain http(s) URL of ``path`` below the served folder."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{self.prefix}/{quote(path)}"

    def synctool_options(self) -> dict[str, str]:
        options = {"auth-username": self.user, "auth-password": self.password}
        if self.tls:
            options["accept-specified-ssl-hash"] = self.sha1
        return options

    def rclone_env(self, name: str = "benchdav") -> dict[str, str]:
        """Environment variables that define rclone remote ``name:`` for this server
        (rclone's --webdav-url, --webdav-user and --webdav-pass, the password obscured)."""
        rclone = real_executable("rclone")
        obscured = subprocess.run([rclone, "obscure", "-"], input=self.password, capture_output=True,
                                  text=True, check=True, timeout=30).stdout.strip()  # fmt: skip
        prefix = f"RCLONE_CONFIG_{name.upper()}_"
        return {prefix + "TYPE": "webdav", prefix + "URL": self.http_url(), prefix + "USER": self.user,
                prefix + "PASS": obscured}  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: requests in flight break mid-way."""
        self.proc.kill()
        self.proc.wait()

    def start(self) -> None:
        """Start the server again after :meth:`kill`: same port, user and folder."""
        if self.proc.poll() is None:
            raise RuntimeError(f"{self.kind} WebDAV server is still running")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        if not wait_until_ready(self.proc, self.port, lambda port: answers(port, self.tls)):
            stop_tree(self.proc)
            raise RuntimeError(f"{self.kind} WebDAV server did not start again on port {self.port}")

    def restart(self) -> None:
        """Drop every connection: the server serves them all from one process."""
        self.kill()
        self.start()


def answers(port: int, tls: bool) -> bool:
    """Any HTTP answer (401 included) means the server is up."""
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(LOOPBACK, port, timeout=1, context=context)
    else:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=1)
    try:
        conn.request("OPTIONS", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def self_signed(folder: Path) -> tuple[Path, Path, bytes]:
    """A certificate for 127.0.0.1 and its key, made for one run: (cert.pem, key.pem, DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "synctool test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    key_path.chmod(0o600)
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


def _credentials() -> tuple[str, str]:
    return "synctool", secrets.token_urlsafe(18)


@contextlib.contextmanager
def rclone_webdav(workdir: Path, *, tls: bool = False, rclone: str | None = None) -> Iterator[WebDAVServer]:
    """Serve ``workdir``/files with ``rclone serve webdav`` on a free loopback port."""
    workdir = Path(workdir)
    root = workdir / "files"
    root.mkdir(parents=True, exist_ok=True)
    rclone = rclone or real_executable("rclone")
    user, password = _credentials()
    cert = self_signed(workdir / "tls") if tls else None
    # Its own config and cache, so nothing of the user's rclone set-up leaks in.
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null", "RCLONE_CACHE_DIR": str(workdir / "cache"),
           # The password goes in the environment, not the process list.
           "RCLONE_PASS": password}  # fmt: skip
    log = workdir / "rclone-webdav.log"

    def command(port: int) -> list[str]:
        tls_args = ["--cert", str(cert[0]), "--key", str(cert[1])] if cert else []
        return [rclone, "serve", "webdav", str(root), "--addr", f"{LOOPBACK}:{port}", "--user", user, *tls_args]

    proc, port = start_on_free_port(command, lambda p: answers(p, tls), log, "rclone serve webdav", env)
    server = WebDAVServer("rclone", LOOPBACK, port, user, password, root, "", tls, cert[2] if cert else None,
                          log, proc, command(port), env)  # fmt: skip
    try:
        yield server
    finally:
        stop_tree(server.proc)


@contextlib.contextmanager
def wsgidav(workdir: Path, *, tls: bool = False, honor_mtime: bool = True) -> Iterator[WebDAVServer]:
    """Serve ``workdir``/files with wsgidav (on cheroot) below /dav, on a free loopback port.

    ``honor_mtime``: apply the X-OC-Mtime header (wsgidav's honor_mtime_header,
    off by default in wsgidav itself).
    """
    workdir = Path(workdir)
    root = workdir / "files"
    root.mkdir(parents=True, exist_ok=True)
    user, password = _credentials()
    cert = self_signed(workdir / "tls") if tls else None
    log = workdir / "wsgidav.log"
    config = workdir / "wsgidav.json"

    def command(port: int) -> list[str]:
        settings = {
            "host": LOOPBACK,
            "port": port,
            "provider_mapping": {"/dav": str(root)},
            "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
            # Its own defaults: it asks for Digest, and takes Basic as well.
            "http_authenticator": {"accept_basic": True, "accept_digest": True, "default_to_digest": True},
            "honor_mtime_header": honor_mtime,
            "dir_browser": {"enable": False},
            "server_args": {"numthreads": 32},
            "verbose": 1,
        }
        if cert:
            settings.update(ssl_certificate=str(cert[0]), ssl_private_key=str(cert[1]))
        config.write_text(json.dumps(settings))
        config.chmod(0o600)  # it holds the password
        return [sys.executable, "-m", "wsgidav.server.server_cli", "--config", str(config)]

    proc, port = start_on_free_port(command, lambda p: answers(p, tls), log, "wsgidav")
    server = WebDAVServer("wsgidav", LOOPBACK, port, user, password, root, "/dav", tls, cert[2] if cert else None,
                          log, proc, command(port))  # fmt: skip
    try:
        yield server
    finally:
        stop_tree(server.proc)
