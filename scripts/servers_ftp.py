"""Real FTP servers on loopback: ``rclone serve ftp`` and pyftpdlib (plain, FTPS).

    with rclone_ftp(Path("/dev/shm/ftp")) as ftp:
        synctool ... ftp.url("mirror") --dst-options <ftp.synctool_options()>

    with pyftpdlib_ftp(Path("/dev/shm/ftp"), tls=certificate(Path("/dev/shm/cert"))) as ftp:
        ...                                   # plain FTP and explicit FTPS (AUTH TLS)

Each server listens on 127.0.0.1 only, on a free port, with a user and a
password made for the run, and hands out passive data ports from a range of
its own on loopback. pyftpdlib runs in a process of its own (``python -m
scripts.servers_ftp``), so that it can be killed and started again like any
server. No pytest here: the benchmark uses these too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import ftplib
import hashlib
import io
import ipaddress
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from scripts.servers import LOOPBACK, _log_tail, real_executable, start_on_free_port, stop_tree, wait_until_ready

#: Passive data ports are taken from here, below Linux's ephemeral ports
#: (32768 and up), so that no outgoing connection holds one by chance.
PASSIVE_LOW, PASSIVE_HIGH, PASSIVE_COUNT = 10_000, 32_000, 200
PASSWORD_ENV = "SYNCTOOL_FTP_TEST_PASSWORD"  # not on the command line: ps shows that


def passive_range() -> tuple[int, int]:
    """A block of ports for one server's data connections: servers started at
    the same time (one per test process) are unlikely to share one, and each
    server tries another port of its block when one is taken."""
    start = random.randrange(PASSIVE_LOW, PASSIVE_HIGH - PASSIVE_COUNT)
    return start, start + PASSIVE_COUNT - 1


# -- a certificate for FTPS ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Certificate:
    ca: Path  # the authority's certificate (PEM): trust this one
    cert: Path  # the server's certificate, signed by ``ca``
    key: Path  # the server's private key
    sha1: str  # the server certificate's SHA-1, upper-case hex (Duplicati's accept-specified-ssl-hash)


def certificate(folder: Path, host: str = LOOPBACK, client_auth: bool = False) -> Certificate:
    """A throw-away authority and a server certificate it signed for ``host``;
    with ``client_auth`` it may also prove a client (mutual TLS, as Dask's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "synctool test authority")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]
                                             + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = Certificate(folder / "ca.pem", folder / "server.pem", folder / "server.key", "")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))  # fmt: skip
    paths.key.chmod(0o600)
    sha1 = hashlib.sha1(server.public_bytes(serialization.Encoding.DER)).hexdigest().upper()  # noqa: S324 - a fingerprint
    return dataclasses.replace(paths, sha1=sha1)


# -- a running server ------------------------------------------------------------------
@dataclasses.dataclass
class FTPServer:
    """A running FTP server; its files are the folder ``root`` of this machine,
    shown to the client as its "/" (where it logs in)."""

    kind: str  # "rclone" or "pyftpdlib"
    host: str
    port: int
    user: str
    password: str
    root: Path
    log: Path
    proc: subprocess.Popen
    command: list[str]
    env: dict[str, str]
    passive_ports: tuple[int, int]
    scheme: str = "ftp"  # "ftps": explicit TLS, from the start (the URL alone asks for it)
    tls: Certificate | None = None
    implicit: bool = False  # TLS from the first byte (no AUTH TLS)

    def url(self, folder: str = "", *, with_password: bool = False) -> str:
        """synctool's URL for ``folder`` below the login folder."""
        login = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if with_password else "")
        return f"{self.scheme}://{login}@{self.host}:{self.port}/{quote(folder)}"

    def synctool_options(self, **extra: str) -> dict[str, str]:
        options = {"auth-password": self.password}
        if self.implicit:
            options["ftp-encryption-mode"] = "Implicit"
        if self.tls is not None:
            options["accept-specified-ssl-hash"] = self.tls.sha1
        return {**options, **extra}

    def rclone_env(self, name: str = "benchftp") -> dict[str, str]:
        """Environment variables that define rclone remote ``name:`` for this server
        (the password obscured, as rclone keeps it; not on the command line)."""
        obscured = subprocess.run(
            [real_executable("rclone"), "obscure", "-"], input=self.password, capture_output=True, text=True,
            check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        prefix = f"RCLONE_CONFIG_{name.upper()}_"
        return {prefix + "TYPE": "ftp", prefix + "HOST": self.host, prefix + "PORT": str(self.port),
                prefix + "USER": self.user, prefix + "PASS": obscured}  # fmt: skip

    def put(self, folder: str, files: dict[str, bytes], mtime: float | None = None) -> None:
        """Put files below ``folder`` through a plain FTP session (not synctool's
        code), so that a server with a cache of its own (rclone) sees them."""
        with self._session() as ftp:
            for name, data in files.items():
                path = f"{folder}/{name}" if folder else name
                parts = path.split("/")
                for depth in range(1, len(parts)):
                    with contextlib.suppress(ftplib.error_perm, ftplib.error_temp):
                        ftp.mkd("/".join(parts[:depth]))
                ftp.storbinary(f"STOR {path}", io.BytesIO(data))
                if mtime is not None:
                    ftp.voidcmd(f"MFMT {time.strftime('%Y%m%d%H%M%S', time.gmtime(mtime))} {path}")

    @contextlib.contextmanager
    def _session(self) -> Iterator[ftplib.FTP]:
        if self.tls is None:
            ftp = ftplib.FTP()
        else:
            ftp = (_ImplicitFTP if self.implicit else ftplib.FTP_TLS)(context=ssl.create_default_context(cafile=self.tls.ca))
        ftp.connect(self.host, self.port, timeout=30)
        try:
            ftp.login(self.user, self.password)
            if self.tls is not None:
                ftp.prot_p()
            yield ftp
        finally:
            ftp.close()

    def ready(self, port: int) -> bool:
        return _answers(port, self.implicit)

    def kill(self) -> None:
        """Stop the server at once: every connection drops mid-way."""
        stop_tree(self.proc)

    def start(self) -> None:
        """Start the server again after :meth:`kill`: same port, user and folder."""
        if self.proc.poll() is None:
            raise RuntimeError(f"the {self.kind} FTP server is still running")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        if not wait_until_ready(self.proc, self.port, self.ready):
            stop_tree(self.proc)
            raise RuntimeError(f"the {self.kind} FTP server did not start again:\n{_log_tail(self.log)}")

    def restart(self) -> None:
        """Drop every connection: both servers serve them all from one process."""
        self.kill()
        self.start()


class _ImplicitFTP(ftplib.FTP_TLS):
    """ftplib for implicit FTPS, plainly: TLS before the greeting."""

    def connect(self, host: str = "", port: int = 0, timeout: float = -999, source_address=None) -> str:
        self.host, self.port = host, port
        self.sock = self.context.wrap_socket(socket.create_connection((host, port), timeout), server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def _answers(port: int, implicit: bool) -> bool:
    """Whether an FTP server greets on ``port`` (an implicit-TLS one once the handshake is done)."""
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=2) as sock:
        if implicit:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with context.wrap_socket(sock) as tls:
                return tls.recv(4).startswith(b"220")
        return sock.recv(4).startswith(b"220")
    return False


def _start(kind: str, root: Path, log: Path, command, env: dict[str, str], user: str, password: str,
           passive: tuple[int, int], **extra) -> FTPServer:  # fmt: skip
    implicit = extra.get("implicit", False)
    proc, port = start_on_free_port(command, lambda p: _answers(p, implicit), log, f"the {kind} FTP server", env)
    return FTPServer(kind, LOOPBACK, port, user, password, root, log, proc, command(port), env, passive, **extra)


@contextlib.contextmanager
def rclone_ftp(workdir: Path, root: Path | None = None) -> Iterator[FTPServer]:
    """Serve ``workdir``/files (or ``root``) with ``rclone serve ftp`` on a free loopback port."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(root) if root is not None else workdir / "files"
    root.mkdir(parents=True, exist_ok=True)
    user, password = "synctool", secrets.token_urlsafe(18)
    # Its own config and cache: nothing of the user's rclone set-up leaks in.
    env = {**os.environ, "RCLONE_CONFIG": str(workdir / "rclone.conf"), "RCLONE_CACHE_DIR": str(workdir / "cache"),
           "RCLONE_PASS": password}  # fmt: skip
    passive = passive_range()
    rclone = real_executable("rclone")

    def command(port: int) -> list[str]:
        return [rclone, "serve", "ftp", str(root), "--addr", f"{LOOPBACK}:{port}", "--user", user,
                "--passive-port", f"{passive[0]}-{passive[1]}"]  # fmt: skip

    server = _start("rclone", root, workdir / "rclone-ftp.log", command, env, user, password, passive)
    try:
        yield server
    finally:
        stop_tree(server.proc)


@contextlib.contextmanager
def pyftpdlib_ftp(
    workdir: Path,
    *,
    tls: Certificate | None = None,
    implicit: bool = False,
    no_mlsd: bool = False,
    login_folder: str = "",
    root: Path | None = None,
) -> Iterator[FTPServer]:
    """Serve ``workdir``/files with pyftpdlib on a free loopback port.

    With ``tls`` it also takes AUTH TLS (explicit FTPS; plain FTP still
    works), or with ``implicit`` speaks TLS from the first byte. ``no_mlsd``
    leaves out MLST and MLSD, as old servers do: listings come from LIST.
    With ``login_folder`` (below the root) a login starts there, as on
    servers that show their whole tree and start a user in a home folder.
    ``root`` serves another folder than ``workdir``/files (its log stays in ``workdir``).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(root) if root is not None else workdir / "files"
    root.mkdir(parents=True, exist_ok=True)
    user, password = "synctool", secrets.token_urlsafe(18)
    env = {**os.environ, PASSWORD_ENV: password}
    passive = passive_range()
    flags = ["--no-mlsd"] * no_mlsd + ["--implicit"] * implicit
    if login_folder:
        (root / login_folder).mkdir(parents=True, exist_ok=True)
        flags += ["--login-folder", login_folder]
    if tls is not None:
        flags += ["--cert", str(tls.cert), "--key", str(tls.key)]

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "scripts.servers_ftp", str(root), "--port", str(port), "--user", user,
                "--passive", f"{passive[0]}-{passive[1]}", *flags]  # fmt: skip

    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")]))
    server = _start("pyftpdlib", root, workdir / "pyftpdlib.log", command, env, user, password, passive,
                    tls=tls, implicit=implicit, scheme="ftps" if tls is not None and not implicit else "ftp")  # fmt: skip
    try:
        yield server
    finally:
        stop_tree(server.proc)


# -- pyftpdlib's process ---------------------------------------------------------------
def serve_pyftpdlib(argv: list[str] | None = None) -> None:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer as Server

    ap = argparse.ArgumentParser(description="pyftpdlib on loopback, for synctool's tests and benchmark")
    ap.add_argument("root")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--passive", required=True, help="LOW-HIGH")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--implicit", action="store_true")
    ap.add_argument("--no-mlsd", action="store_true")
    ap.add_argument("--login-folder", default="")
    args = ap.parse_args(argv)

    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, os.environ[PASSWORD_ENV], args.root, perm="elradfmwMT")
    handler: type = FTPHandler
    if args.cert:
        from pyftpdlib.handlers import TLS_FTPHandler

        handler = _implicit_tls_handler(TLS_FTPHandler, FTPHandler) if args.implicit else TLS_FTPHandler
        handler.certfile, handler.keyfile = args.cert, args.key
    low, high = (int(p) for p in args.passive.split("-"))
    attributes = {"authorizer": authorizer, "passive_ports": range(low, high + 1), "banner": "synctool test server"}
    if args.no_mlsd:
        attributes["proto_cmds"] = {k: v for k, v in handler.proto_cmds.items() if k not in ("MLSD", "MLST")}
    if args.login_folder:
        def on_login(self, username, folder="/" + args.login_folder.strip("/")):
            self.fs.cwd = folder

        attributes["on_login"] = on_login
    # AVBL (free bytes), as FileZilla Server and others answer it.
    attributes["proto_cmds"] = {**attributes.get("proto_cmds", handler.proto_cmds),
                                "AVBL": {"perm": "l", "auth": True, "arg": None, "help": "Syntax: AVBL [<SP> path]"}}  # fmt: skip
    attributes["ftp_AVBL"] = lambda self, path: self.respond(f"213 {shutil.disk_usage(path).free}")
    handler = type("Handler", (handler,), attributes)
    server = Server((LOOPBACK, args.port), handler)
    server.serve_forever()


def _implicit_tls_handler(base: type, plain: type) -> type:
    """pyftpdlib's TLS handler, speaking TLS from the first byte: the banner
    is sent once the handshake is done, and AUTH is refused as redundant."""

    class ImplicitTLSHandler(base):
        def handle(self):
            self.secure_connection(self.ssl_context)

        def handle_ssl_established(self):
            plain.handle(self)  # the 220 banner

    return ImplicitTLSHandler


if __name__ == "__main__":
    serve_pyftpdlib()
