"""FTP and FTPS servers: ``ftp://[user[:password]@]host[:port]/path``, ``ftps://`` and ``aftp://``.

URLs and options are those of Duplicati's two FTP backends: ``ftp://`` (its FTP
backend) takes ``ftp-...`` options, ``aftp://`` (its AlternativeFTP backend)
the same options named ``aftp-...``; ``ftps://`` is ``ftp://`` with
``use-ssl``, as Duplicati reads a scheme that ends in ``s``. As in Duplicati,
the URL's path is below the login folder for ``ftp://`` (unless
``ftp-absolute-path``) and from the server's root for ``aftp://`` (unless
``aftp-relative-path``).

Connections. The standard library's ftplib: its ``FTP_TLS`` for plain FTP and
explicit FTPS (AUTH TLS before the login, then PROT P: data connections are
encrypted too, resuming the control connection's TLS session as strict
servers require), and a small subclass for implicit FTPS (TLS from the first
byte). An FTP connection carries one command at a time, so each thread leases
a logged-in control connection of its own from a small pool of this process
for each operation. A connection that fails mid-way is closed and the
operation raises a retryable :class:`BackendError`; the next lease logs in
anew. Data connections are passive by default: EPSV, else PASV.

Writes, all or nothing. STOR to a temporary name in the target folder
(``Backend.temp_name``), streamed from the source; SIZE checks that the server
holds every byte sent; the read-back ``check`` runs on the temporary file;
MFMT gives it the source's mtime; RNFR/RNTO moves it into place. After the
upload, commands that need no answer before the next go out together. Nothing shows under the final name
until it is complete, and a write that fails deletes its temporary file (or
the next connection does, or the next run, which lists it).

The race that remains. RNTO replaces an existing target on most servers
(refuses it on some), and FTP has no way to ask for either. So where nothing
may be replaced (a new file, ``keep_old_as``, ``rename``) the target is looked
up first (MLST, or the folder's listing where the server has no MLST) and
renamed onto only if absent: a file that someone else creates under that name
between the look and the rename (a few milliseconds) is replaced. Where a
server refuses to rename onto an existing file, replacing one deletes it
first: for a moment, no file has that name.

Times. MLSD lists modification times in UTC to the second. Where the server
takes MFMT (pyftpdlib, ProFTPD, FileZilla Server, ...), a write stores the
source's mtime (rounded up to the second, so a copy never looks older than its
source) and listings compare as a local folder's do (``keeps_mtime``). Where it
does not (rclone serve ftp, vsftpd), a file keeps its upload time, which is
never older than its source, so an unchanged file is not copied again. A file
dated in the future at the source, though, looks newer than its copy at every
run and nothing on the server records that the copy holds it: it is copied
again at each run until its date has passed (with ``--retention``, each run
keeps the copy it replaces). Servers without MLSD are listed with LIST (the
common Unix format, which shows minutes, or only the day for older files),
each file's time to the second then asked with MDTM (in batches: the
commands of a batch go out together).

Free space: AVBL, where the server has it. A full disk is recognized where
the server says so (452, 552, or "no space" in its answer) and not retried.

FTP shows no symbolic links: a server that follows them lists their targets.

Options of Duplicati's with no effect here: ``ignore-revocation-failure`` (no
revocation check is made), ``{ftp,aftp}-log-privateinfo-to-console`` (user
names are logged, passwords never are). The certificates trusted are the
system's (or those of SSL_CERT_FILE / SSL_CERT_DIR).
"""

from __future__ import annotations

import calendar
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import math
import os
import posixpath
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ClassVar

import ftplib

from synctool import secrets as secret_store
from synctool.backends.base import (
    AlreadyExists,
    Backend,
    BackendError,
    BackendSpec,
    DeleteError,
    Entry,
    FatalBackendError,
    NotFound,
    Place,
    UnsafeName,
    check_name,
)
from synctool.backends.optiontable import Option, table
from synctool.backends.walk import ordered_walk

log = logging.getLogger("synctool.backends.ftp")

DEFAULT_PORT, IMPLICIT_PORT = 21, 990
CHUNK = 1 << 20  # bytes per chunk read from a data connection
MAX_CONNECTIONS = 8  # per process: the jobs of a worker, or the listing threads
LIST_THREADS = 4  # folders listed at once
CONNECTION_WAIT = 600.0  # longest wait for a free connection before giving up
MDTM_BATCH = 32  # MDTM commands sent before their answers are read (LIST-only servers)
IDLE_CHECK = 10.0  # a connection idle longer is probed (NOOP) before use: servers drop idle ones
ENCRYPTION_MODES = ("None", "Implicit", "Explicit", "Auto")
DATA_CONNECTION_TYPES = ("AutoPassive", "PASV", "PASVEX", "EPSV", "AutoActive", "PORT", "EPRT", "PASVUSE")
TLS_VERSIONS = {"tls": ssl.TLSVersion.TLSv1, "tls11": ssl.TLSVersion.TLSv1_1,
                "tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}  # fmt: skip
MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun",
                                      "jul", "aug", "sep", "oct", "nov", "dec"), 1)}  # fmt: skip
# A line of a Unix-style LIST: type, permissions, links, owner and group (or
# just one of them), size, date (with the time, or the year for old files), name.
LIST_LINE = re.compile(
    r"^(?P<type>[-dlcbps])\S*\s+\d+\s+(?:\S+\s+)+?(?P<size>\d+)\s+(?P<month>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+"
    r"(?:(?P<hour>\d{1,2}):(?P<minute>\d{2})|(?P<year>\d{4}))\s(?P<name>.+)$"
)


def _options(prefix: str) -> dict[str, Option]:
    """The options of Duplicati's FTP backend (``prefix`` "ftp") or AlternativeFTP backend ("aftp")."""
    own = [
        Option(f"{prefix}-encryption-mode", "choice", "None",
               "None, Explicit (AUTH TLS), Implicit (TLS from the start; port 990 unless the URL says) "
               "or Auto (Explicit where the server offers it, else plain)", choices=ENCRYPTION_MODES),
        Option(f"{prefix}-data-connection-type", "choice", "AutoPassive",
               "AutoPassive (EPSV, else PASV), PASV, PASVEX (PASV to the control connection's address), "
               "PASVUSE (PASV to the address given, even a private one), EPSV, AutoActive (EPRT, else PORT), "
               "PORT or EPRT", choices=DATA_CONNECTION_TYPES),
        Option(f"{prefix}-ssl-protocols", "text", "None",
               "TLS versions allowed, comma-separated: Tls, Tls11, Tls12, Tls13 (None or Default: the system's)"),
        Option(f"{prefix}-upload-delay", "duration", 0.0, "wait this long after an upload before checking its size"),
        Option(f"{prefix}-log-to-console", "bool", False, "log the FTP dialog (passwords masked)"),
        Option(f"{prefix}-log-privateinfo-to-console", "bool", False,
               "accepted for Duplicati's sake: passwords are never logged"),
        Option(f"{prefix}-use-cwd-names", "bool", False,
               "enter the folder with CWD and send names relative to it (servers without absolute paths)"),
    ]
    if prefix == "ftp":
        own += [
            Option("ftp-absolute-path", "bool", False, "the URL's path is from the server's root, not the login folder"),
            Option("ftp-log-diagnostics", "bool", False, "log the FTP dialog at the Profiling level"),
            Option("ftp-passive", "bool", False, "deprecated: ftp-data-connection-type=AutoPassive"),
            Option("ftp-regular", "bool", False, "deprecated: ftp-data-connection-type=AutoActive (wins over ftp-passive)"),
            Option("use-ssl", "bool", False, "deprecated: ftp-encryption-mode=Explicit (as the ftps:// scheme)"),
        ]  # fmt: skip
    else:
        own.append(Option("aftp-relative-path", "bool", False, "the URL's path is below the login folder"))
    return table(
        Option("auth-username", "text", "", "user name, where the URL has none (else: anonymous)"),
        Option("auth-password", "text", "", "password, where the URL has none", secret=True),
        *own,
        Option("disable-upload-verify", "bool", False, "do not check the size of each upload before it takes its name"),
        Option("ignore-pureftpd-limit-issue", "bool", False, "no warning about Pure-FTPd's listing limit"),
        Option("accept-any-ssl-certificate", "bool", False, "do not check the server's certificate (unsafe)"),
        Option("accept-specified-ssl-hash", "text", "",
               "trust a certificate by its SHA-1, in hex (several: comma-separated)"),
        Option("ignore-revocation-failure", "bool", False, "accepted for Duplicati's sake: no revocation check is made"),
        Option("short-timeout", "duration", 30.0, "longest wait for an answer to a command"),
        Option("list-timeout", "duration", 600.0, "longest wait for a folder's listing to move on"),
        Option("read-write-timeout", "duration", 30.0, "longest wait for file content to move on"),
    )


# -- settings ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything needed to connect, taken from the URL and the options."""

    host: str
    port: int
    user: str
    password: str
    encryption: str  # one of ENCRYPTION_MODES
    data_connection: str  # one of DATA_CONNECTION_TYPES
    tls_versions: tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]  # (minimum, maximum)
    accept_any: bool
    pins: tuple[str, ...]  # upper-case SHA-1 hex of trusted certificates
    relative: bool  # the path is below the login folder
    cwd_names: bool
    verify_upload: bool
    upload_delay: float
    short_timeout: float
    list_timeout: float
    rw_timeout: float
    dialog_level: int | None  # log the dialog at this level; None: not at all
    warn_pureftpd: bool
    path: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.encryption != "None"


def _tls_versions(text: str) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
    """Duplicati's SslProtocols flags (``Tls12,Tls13``) as a (minimum, maximum) pair."""
    chosen = []
    for word in re.split(r"[,|;\s]+", text.strip().lower()):
        if word in ("", "none", "default"):
            continue
        if word in ("ssl2", "ssl3"):
            raise FatalBackendError(f"{word}: SSL 2 and 3 are broken and no longer offered; choose Tls12 or Tls13")
        if word not in TLS_VERSIONS:
            raise FatalBackendError(f"unknown TLS version {word!r}: choose from Tls, Tls11, Tls12, Tls13 or None")
        chosen.append(TLS_VERSIONS[word])
    return (min(chosen), max(chosen)) if chosen else (None, None)


def _credentials(backend: "FTPBackend") -> tuple[str, str]:
    """User and password as Duplicati picks them: the URL's user wins, with the
    URL's password or else auth-password; without a user in the URL, the
    auth-username and auth-password options."""
    loc, values = backend.location, backend.values
    if loc.user:
        return loc.user, loc.password or values["auth-password"]
    if values["auth-username"].strip():
        return values["auth-username"], values["auth-password"]
    return "", ""  # anonymous (ftplib sends "anonymous")


# -- one control connection ----------------------------------------------------------------
def _unroutable(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_unspecified or address.is_link_local


def _certificate_hash(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True) or b""
    return hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - Duplicati's certificate hash, not security


class _CertificateRefused(Exception):
    """The certificate is not among the pinned ones; ``presented`` is its hash."""

    def __init__(self, presented: str):
        super().__init__(presented)
        self.presented = presented


class _Client(ftplib.FTP_TLS):
    """One control connection, logged in: ftplib's FTP_TLS, which serves plain
    FTP as well until asked for TLS, opening data connections the way
    the ``data-connection-type`` option says."""

    def __init__(self, s: Settings, context: ssl.SSLContext, pins: tuple[str, ...]):
        super().__init__(context=context, timeout=s.short_timeout)
        self.settings = s
        self.pins = pins
        self.certificate: str | None = None  # hash of the control connection's certificate, when pinned
        self.mode = s.data_connection
        self.set_pasv(self.mode not in ("AutoActive", "PORT", "EPRT"))
        self.broken = False  # its state is unknown: closed, never lent again
        self.at_root = False  # use-cwd-names: the working folder is the root
        self.used = time.monotonic()
        self.pid = os.getpid()

    # -- the control connection -------------------------------------------------------
    def connect(self, host: str = "", port: int = 0, timeout: float = -999, source_address=None) -> str:
        welcome = super().connect(host, port, timeout, source_address)
        # One short command at a time, each waiting for its answer: Nagle's
        # algorithm would hold a command back for a delayed ACK.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return welcome

    def secure(self) -> None:
        """AUTH TLS, and check the certificate before any credential is sent."""
        self.auth()
        self.check_certificate(self.sock)

    def check_certificate(self, sock: ssl.SSLSocket) -> None:
        if not self.pins:
            return
        presented = _certificate_hash(sock)
        if self.certificate is None and presented not in self.pins:
            raise _CertificateRefused(presented)
        if self.certificate is not None and presented != self.certificate:
            # Only a data connection gets here: someone else answered it.
            raise ftplib.error_proto("the data connection presented another certificate than the control connection")
        self.certificate = presented

    def login(self, user: str = "", passwd: str = "", acct: str = "", secure: bool = False) -> str:
        """ftplib's plain login: FTP_TLS's sends AUTH TLS first, which is ours to decide."""
        return ftplib.FTP.login(self, user, passwd, acct)

    def putline(self, line: str) -> None:
        if self.settings.dialog_level is not None:
            shown = "PASS ***" if line[:5].upper() == "PASS " else line
            log.log(self.settings.dialog_level, "%s > %s", self.settings.address, shown)
        super().putline(line)

    def getline(self) -> str:
        line = super().getline()
        if self.settings.dialog_level is not None:
            log.log(self.settings.dialog_level, "%s < %s", self.settings.address, line)
        return line

    # -- data connections -------------------------------------------------------------
    def open_data(self, command: str, timeout: float) -> socket.socket:
        """Open a data connection and send ``command``; once the server has
        answered that the transfer starts, the connection (in TLS once PROT P)."""
        if self.passiveserver:
            conn = socket.create_connection(self._passive_address(), self.timeout)
            try:
                self._start_transfer(command)
            except BaseException:
                conn.close()
                raise
        else:
            with self._listen() as listener:
                self._start_transfer(command)
                conn, peer = listener.accept()
            if peer[0] != self.sock.getpeername()[0]:
                conn.close()
                raise ftplib.error_proto(f"a data connection came from {peer[0]}, not from the server")
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(timeout)
        if not self._prot_p:
            return conn
        try:
            # Resuming the control connection's TLS session proves that the
            # data connection comes from the same client: servers such as
            # vsftpd and FileZilla Server insist on it.
            secured = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
            self.check_certificate(secured)
            return secured
        except BaseException:
            conn.close()
            raise

    def _start_transfer(self, command: str) -> None:
        reply = self.sendcmd(command)
        if reply[0] == "2":  # some servers confirm the data connection first
            reply = self.getresp()
        if reply[0] != "1":
            raise ftplib.error_reply(reply)

    def _passive_address(self) -> tuple[str, int]:
        peer = self.sock.getpeername()
        if self.mode in ("AutoPassive", "EPSV"):
            try:
                return ftplib.parse229(self.sendcmd("EPSV"), peer)
            except ftplib.error_perm:
                if self.mode == "EPSV":
                    raise
                self.mode = "PASV"  # this server has no EPSV: PASV from now on
        host, port = ftplib.parse227(self.sendcmd("PASV"))
        if self.mode == "PASVEX" or (self.mode == "PASV" and _unroutable(host) and not _unroutable(peer[0])):
            # A server behind NAT names its private address: the control
            # connection's reaches it.
            host = peer[0]
        return host, port

    def _listen(self) -> socket.socket:
        """Listen on the control connection's own address, and tell the server (EPRT or PORT)."""
        local = self.sock.getsockname()[0]
        listener = socket.create_server((local, 0), family=self.af, backlog=1)
        listener.settimeout(self.timeout)
        port = listener.getsockname()[1]
        try:
            if self.mode in ("AutoActive", "EPRT"):
                try:
                    self.sendeprt(local, port)
                    return listener
                except ftplib.error_perm:
                    if self.mode == "EPRT":
                        raise
                    self.mode = "PORT"
            self.sendport(local, port)
        except BaseException:
            listener.close()
            raise
        return listener

    def pipeline(self, commands: Sequence[str]) -> list[str | ftplib.Error]:
        """Send ``commands`` together, then read their answers in order: one
        wait on the server for all. A negative answer is returned, not raised."""
        for command in commands:
            self.putcmd(command)
        answers: list[str | ftplib.Error] = []
        for _ in commands:
            try:
                answers.append(self.getresp())
            except (ftplib.error_perm, ftplib.error_temp) as exc:
                answers.append(exc)
        return answers

    def rename(self, fromname: str, toname: str) -> str:
        """RNFR and RNTO, sent together."""
        start, done = self.pipeline([f"RNFR {fromname}", f"RNTO {toname}"])
        for answer in (start, done):
            if isinstance(answer, ftplib.Error):
                raise answer
        if not start.startswith("3"):
            raise ftplib.error_reply(start)
        return done

    def finish_transfer(self) -> str:
        """The server's answer once a transfer's data connection is closed: 226."""
        return self.voidresp()

    # -- helpers -----------------------------------------------------------------------
    def usable(self) -> bool:
        """Whether an idle connection still answers.

        Servers drop idle connections, and a restarted one drops them all. A
        connection with something to read while nothing was asked (its end,
        a "421 timeout") is probed, as is one idle for a while.
        """
        if self.pid != os.getpid() or self.broken:
            return False
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable and time.monotonic() - self.used < IDLE_CHECK:
            return True
        try:
            self.voidcmd("NOOP")
            return True
        except (OSError, EOFError, ftplib.Error):
            return False

    def close_quietly(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.sock is not None and self.pid == os.getpid():
                self.sock.sendall(b"QUIT\r\n")
        with contextlib.suppress(OSError, ValueError):
            self.close()


class _ImplicitClient(_Client):
    """Implicit FTPS: TLS from the first byte, before the server's greeting."""

    def connect(self, host: str = "", port: int = 0, timeout: float = -999, source_address=None) -> str:
        self.host, self.port, self.timeout = host, port, timeout
        sock = socket.create_connection((host, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self.af = self.sock.family
        self.check_certificate(self.sock)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def _contexts(s: Settings) -> list[tuple[ssl.SSLContext, tuple[str, ...]]]:
    """The TLS set-ups to try in turn, each with the certificate hashes it requires.

    As in Duplicati, a pinned certificate is trusted whatever signed it, and
    without a match the usual checks decide.
    """
    def context(verify: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        low, high = s.tls_versions
        if low is not None:
            ctx.minimum_version, ctx.maximum_version = low, high
        return ctx

    if s.accept_any:
        return [(context(False), ())]
    if s.pins:
        return [(context(False), s.pins), (context(True), ())]
    return [(context(True), ())]


def _connect(s: Settings) -> _Client:
    """A logged-in control connection with TLS as the options say."""
    attempts = _contexts(s)
    presented = None
    for context, pins in attempts:
        try:
            return _login(s, context, pins)
        except _CertificateRefused as refused:
            presented = refused.presented
        except ssl.SSLCertVerificationError as exc:
            shown = f"the server presents a certificate with SHA-1 {presented}" if presented else "it presents"
            raise FatalBackendError(
                f"the TLS certificate of {s.address} is not trusted ({exc.verify_message}): {shown}; to trust "
                "that one certificate, set accept-specified-ssl-hash to its SHA-1"
                + ("" if presented else _presented_hint(s))
            ) from None
    raise AssertionError("the last TLS set-up checks no hash")  # pragma: no cover


def _presented_hint(s: Settings) -> str:
    """`` (it has SHA-1 ...)``: the certificate's hash, from a connection that
    only looks at it (nothing is sent but AUTH TLS)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = (_ImplicitClient if s.encryption == "Implicit" else _Client)(s, context, ())
    try:
        client.connect(s.host, s.port, s.short_timeout)
        if s.encryption != "Implicit":
            client.auth()
        return f" (it has SHA-1 {_certificate_hash(client.sock)})"
    except (OSError, EOFError, ftplib.Error):
        return ""
    finally:
        client.close_quietly()


def _login(s: Settings, context: ssl.SSLContext, pins: tuple[str, ...]) -> _Client:
    client = (_ImplicitClient if s.encryption == "Implicit" else _Client)(s, context, pins)
    try:
        try:
            client.connect(s.host, s.port, s.short_timeout)
        except socket.gaierror as exc:
            raise BackendError(f"cannot resolve host {s.host}: {exc.strerror}") from None
        except ConnectionRefusedError:
            raise BackendError(f"connection refused by {s.address} (is an FTP server listening there?)") from None
        except TimeoutError:
            raise BackendError(f"timed out connecting to {s.address}") from None
        if s.encryption in ("Explicit", "Auto"):
            try:
                client.secure()
            except ftplib.error_perm as exc:
                if s.encryption == "Explicit":
                    raise FatalBackendError(f"{s.address} refused TLS (AUTH TLS: {exc}): is it an FTPS server?") from None
                log.warning("%s offers no TLS (%s): the login and the files go unencrypted", s.address, exc)
        try:
            client.login(s.user, s.password)
        except ftplib.error_perm as exc:
            raise FatalBackendError(
                f"login as {s.user or 'anonymous'} on {s.address} failed ({exc}): check the user name and "
                "the password (auth-username, auth-password or the URL)"
            ) from None
        if isinstance(client.sock, ssl.SSLSocket):
            client.prot_p()
        return client
    except BaseException:
        client.close_quietly()
        raise


# -- what the server can do -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Features:
    mlsd: bool
    mfmt: bool
    mdtm: bool
    utf8: bool

    @property
    def exact_times(self) -> bool:
        """Whether listings show times to the second: MLSD's, or LIST's corrected by MDTM."""
        return self.mlsd or self.mdtm

    @classmethod
    def ask(cls, client: _Client) -> "Features":
        """From FEAT (RFC 2389); a server that has no FEAT has none of them."""
        try:
            reply = client.sendcmd("FEAT")
        except ftplib.error_perm:
            return cls(False, False, False, False)
        words = {line.strip().split(" ")[0].upper() for line in reply.splitlines()[1:-1]}
        return cls("MLST" in words, "MFMT" in words, "MDTM" in words, "UTF8" in words)


def _facts(text: str) -> dict[str, str]:
    """``type=file;size=5;modify=...;`` as a dict, names lower-cased (servers differ in case)."""
    out = {}
    for fact in text.split(";"):
        name, sep, value = fact.partition("=")
        if sep:
            out[name.strip().lower()] = value
    return out


def _mlst_kind(path: str, answer: str | ftplib.Error) -> str | None:
    """What MLST's answer says is at ``path``; None for nothing (550)."""
    if isinstance(answer, ftplib.error_perm):
        return None
    if isinstance(answer, ftplib.Error):
        raise answer
    for line in answer.splitlines()[1:]:
        if line.startswith(" "):
            kind = _mlsx_kind(_facts(line.strip().split(" ", 1)[0]))
            return "dir" if kind in ("cdir", "pdir") else kind
    raise ftplib.error_proto(f"MLST {path}: no facts in the answer")


def _mlsx_kind(facts: dict[str, str]) -> str:
    kind = facts.get("type", "").lower()
    if kind == "file":
        return "file"
    if kind in ("dir", "cdir", "pdir"):
        return kind
    if "link" in kind:  # OS.unix=slink:..., OS.unix=symlink
        return "link"
    return "other"


def _ftp_time(text: str) -> float | None:
    """``YYYYMMDDHHMMSS[.sss]`` (MLSD's modify, MDTM's answer), UTC, as seconds since the epoch."""
    match = re.fullmatch(r"(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\.\d+)?", text.strip())
    if not match:
        return None
    parts = [int(p) for p in match.groups()[:6]]
    try:
        return calendar.timegm((*parts, 0, 0, 0)) + float(match.group(7) or 0)
    except (ValueError, OverflowError):
        return None


def _mfmt_time(mtime: float) -> str | None:
    # Rounded up: MFMT takes whole seconds, and a copy must never look older than its source.
    try:
        return time.strftime("%Y%m%d%H%M%S", time.gmtime(math.ceil(mtime)))
    except (OverflowError, OSError, ValueError):
        return None


def _list_entry(line: str, now: float) -> tuple[str, str, int, float] | None:
    """(name, kind, size, mtime) of a Unix-style LIST line; None for "total N"."""
    if line.startswith("total "):
        return None
    match = LIST_LINE.match(line)
    if not match:
        raise FatalBackendError(f"cannot read the server's listing line {line!r}: the listing is not trusted")
    kind = {"-": "file", "d": "dir", "l": "link"}.get(match["type"], "other")
    name = match["name"]
    if kind == "link":
        name = name.split(" -> ", 1)[0]
    month, day = MONTHS.get(match["month"].lower()), int(match["day"])
    if month is None:
        raise FatalBackendError(f"cannot read the server's listing line {line!r}: the listing is not trusted")
    if match["year"]:
        mtime = calendar.timegm((int(match["year"]), month, day, 0, 0, 0, 0, 0, 0))
    else:
        # Unix ls leaves the year out for the last six months: this year's
        # date, unless that lies ahead, when it is last year's.
        year = time.gmtime(now).tm_year
        mtime = calendar.timegm((year, month, day, int(match["hour"]), int(match["minute"]), 0, 0, 0, 0))
        if mtime > now + 86400:
            mtime = calendar.timegm((year - 1, month, day, int(match["hour"]), int(match["minute"]), 0, 0, 0, 0))
    return name, kind, int(match["size"]), float(mtime)


# -- a pool of connections ------------------------------------------------------------
class _Pool:
    """The logged-in connections of this process, each lent to one thread at a time."""

    def __init__(self, opener: Callable[[], _Client]):
        self.opener = opener
        self.idle: list[_Client] = []
        self.count = 0
        self.cond = threading.Condition()
        self.closed = False
        self.pid = os.getpid()

    def take(self) -> _Client:
        while True:
            with self.cond:
                while not self.idle and self.count >= MAX_CONNECTIONS:
                    if not self.cond.wait(CONNECTION_WAIT):
                        raise BackendError("no free FTP connection")
                client = self.idle.pop() if self.idle else None
                if client is None:
                    self.count += 1
            if client is None:
                try:
                    return self.opener()
                except BaseException:
                    self._forget()
                    raise
            if client.usable():
                return client
            client.close_quietly()
            self._forget()

    def give_back(self, client: _Client) -> None:
        client.used = time.monotonic()
        with self.cond:
            keep = not client.broken and not self.closed
            if keep:
                self.idle.append(client)
            else:
                self.count -= 1
            self.cond.notify()
        if not keep:
            client.close_quietly()

    def _forget(self) -> None:
        with self.cond:
            self.count -= 1
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            idle, self.idle = self.idle, []
            self.count -= len(idle)
            self.cond.notify_all()
        for client in idle:
            client.close_quietly()


class _SourceFailed(Exception):
    """The caller's chunk iterator raised: re-raised as itself, never translated."""


def _answer_to_cut_transfer(client: _Client) -> ftplib.Error | None:
    """Read the server's answer to a transfer whose data connection closed
    early: the error it names, or None. Without an answer the connection is
    out of step, and marked broken."""
    try:
        client.getresp()
    except (ftplib.error_perm, ftplib.error_temp) as exc:
        return exc
    except (OSError, EOFError, ftplib.Error):
        client.broken = True
    return None


def _raise_why_cut(client: _Client, conn: socket.socket) -> None:
    """A server that gives up on an upload (a full disk) drops the data
    connection and says why on the control connection: raise that."""
    conn.close()
    reason = _answer_to_cut_transfer(client)
    if reason is not None:
        raise reason


def _reply_code(exc: BaseException) -> str:
    return str(exc)[:3]


def _refused(exc: ftplib.Error, what: str) -> BackendError:
    """A BackendError for a negative answer of the server's."""
    reply = str(exc).strip().replace("\n", " ")
    if _reply_code(exc) in ("452", "552") or "no space" in reply.lower() or "disk full" in reply.lower():
        return FatalBackendError(f"{what} failed: no space left on the server ({reply})")
    if isinstance(exc, ftplib.error_perm):
        return FatalBackendError(f"{what}: the server refused ({reply})")
    return BackendError(f"{what}: {reply}")


# -- the backend --------------------------------------------------------------------
class FTPBackend(Backend):
    schemes = ("ftp", "ftps")
    #: The options' prefix: Duplicati's FTP backend's, or its AlternativeFTP's.
    prefix: ClassVar[str] = "ftp"
    options = _options("ftp")
    concurrency = 4
    mtime_precision = 1.0  # MLSD and MFMT carry whole seconds
    #: Known once connected: whether the server takes MFMT and lists with MLSD.
    keeps_mtime = False
    max_segment_bytes = 255  # NAME_MAX of the file systems behind common servers

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        self.settings = self._settings()
        secret_store.register(self.settings.password)
        self._lock = threading.Lock()
        self._pool: _Pool | None = None
        self._features: Features | None = None
        self._root: str | None = self._absolute_root()
        self._listing: str | None = None  # "MLSD", "LIST -a", "LIST"; None: not known yet
        self._avbl = True  # until the server says it has no AVBL
        self._mfmt_warned = False
        self._folders: set[str] = set()  # folders known to exist, as commands name them
        self._making_folders = threading.Lock()
        # Temporary files a dropped connection kept us from deleting: deleted
        # as soon as a new connection is up.
        self._orphans: set[str] = set()

    def _settings(self) -> Settings:
        v, p, loc = self.values, self.prefix, self.location
        if not loc.host:
            raise FatalBackendError(f"an {loc.scheme}:// URL needs a host: {loc.scheme}://[user@]host[:port]/path")
        encryption, data = v[f"{p}-encryption-mode"], v[f"{p}-data-connection-type"]
        if p == "ftp":
            # Duplicati's deprecated options win over the new ones, as there.
            if v["ftp-passive"]:
                data = "AutoPassive"
            if v["ftp-regular"]:
                data = "AutoActive"
            if (v["use-ssl"] or loc.scheme == "ftps") and encryption != "Implicit":
                encryption = "Explicit"
            relative, diagnostics = not v["ftp-absolute-path"], v["ftp-log-diagnostics"]
        else:
            relative, diagnostics = v["aftp-relative-path"], False
        user, password = _credentials(self)
        pins = tuple(h.strip().replace(":", "").upper() for h in re.split(r"[,;]", v["accept-specified-ssl-hash"]) if h.strip())
        dialog = logging.INFO if v[f"{p}-log-to-console"] else 5 if diagnostics else None  # 5: Profiling
        return Settings(
            host=loc.host,
            port=loc.port or (IMPLICIT_PORT if encryption == "Implicit" else DEFAULT_PORT),
            user=user,
            password=password,
            encryption=encryption,
            data_connection=data,
            tls_versions=_tls_versions(v[f"{p}-ssl-protocols"]),
            accept_any=v["accept-any-ssl-certificate"],
            pins=pins,
            relative=relative,
            cwd_names=v[f"{p}-use-cwd-names"],
            verify_upload=not v["disable-upload-verify"],
            upload_delay=v[f"{p}-upload-delay"],
            short_timeout=v["short-timeout"],
            list_timeout=v["list-timeout"],
            rw_timeout=v["read-write-timeout"],
            dialog_level=dialog,
            warn_pureftpd=not v["ignore-pureftpd-limit-issue"],
            path=loc.path,
        )

    def __getstate__(self):
        # A connection never crosses a process boundary.
        state = self.__dict__.copy()
        state.update(_lock=None, _making_folders=None, _pool=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._making_folders = threading.Lock()

    # -- where things are ------------------------------------------------------------
    def _absolute_root(self) -> str | None:
        """The root folder when the URL alone says it; None when it is below the login folder."""
        if self.settings.relative:
            return None
        return "/" + posixpath.normpath("/" + self.settings.path).strip("/")

    def _resolve_root(self, client: _Client) -> str:
        login = client.pwd() or "/"
        return posixpath.normpath(posixpath.join(login, self.settings.path.lstrip("/")))

    def display_url(self) -> str:
        s = self.settings
        return f"{self.location.scheme}://{s.user + '@' if s.user else ''}{s.address}{s.path}"

    def root_place(self) -> Place | None:
        if self._root is None:
            return None  # below the login folder: known once connected
        s = self.settings
        return Place(("ftp", s.host.lower(), s.port), self._root.strip("/"), f"{self.location.scheme}://{s.address}{self._root}")

    def details(self) -> dict[str, str]:
        s = self.settings
        below = s.path.strip("/")
        where = self._absolute_root() or (f"{below} (below the login folder)" if below else "the login folder")
        return {"scheme": self.location.scheme, "host": s.host, "port": str(s.port), "user": s.user or "anonymous",
                "path": where, "encryption": s.encryption, "data connection": s.data_connection}  # fmt: skip

    def _path(self, name: str) -> str:
        """What a command names the file ``name`` by: below the root, or relative to it with use-cwd-names."""
        check_name(name)
        if "\r" in name or "\n" in name:
            raise UnsafeName(f"refusing {name!r}: an FTP command cannot carry a line break")
        if self.settings.cwd_names:
            return name
        assert self._root is not None, "connect first"
        return posixpath.join(self._root, name)

    def _top(self) -> str:
        """The root as commands name it."""
        if self.settings.cwd_names:
            return ""
        assert self._root is not None, "connect first"
        return self._root

    # -- connections ---------------------------------------------------------------------
    def _connections(self) -> _Pool:
        with self._lock:
            if self._pool is None or self._pool.pid != os.getpid():
                # A pool inherited through fork belongs to the parent: forget it.
                self._pool = _Pool(self._open)
            return self._pool

    def _open(self) -> _Client:
        s = self.settings
        try:
            client = _connect(s)
        except (OSError, EOFError, ftplib.Error) as exc:
            raise BackendError(f"connecting to {s.address} failed ({str(exc).strip() or type(exc).__name__})") from exc
        try:
            with self._lock:
                if self._features is None:  # the first connection of this process
                    if s.accept_any:
                        log.warning("not checking the TLS certificate of %s (accept-any-ssl-certificate)", s.address)
                    self._features = Features.ask(client)
                    self.keeps_mtime = self._features.mfmt and self._features.exact_times
                    if not self._features.exact_times:
                        self.mtime_precision = 60.0  # LIST shows minutes
                    if s.warn_pureftpd and "pure-ftpd" in (client.welcome or "").lower():
                        log.warning("%s is Pure-FTPd, which cuts listings short past a limit (LimitRecursion); "
                                    "a cut listing fails the run (ignore-pureftpd-limit-issue hides this)", s.address)  # fmt: skip
                if self._root is None:
                    self._root = self._resolve_root(client)
            if self._features.utf8:
                with contextlib.suppress(ftplib.error_perm):
                    client.sendcmd("OPTS UTF8 ON")
            client.voidcmd("TYPE I")  # every transfer is binary, listings included
            self._remove_orphans(client)
        except (OSError, EOFError, ftplib.Error) as exc:
            client.close_quietly()
            raise BackendError(f"setting up the connection to {s.address} failed ({exc})") from exc
        except BaseException:
            client.close_quietly()
            raise
        return client

    def _remove_orphans(self, client: _Client) -> None:
        for temp in list(self._orphans):
            with contextlib.suppress(ftplib.error_perm, ftplib.error_temp):
                client.delete(temp)
            self._orphans.discard(temp)

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[_Client]:
        """Lease a connection; turn FTP and network errors into BackendErrors about ``what``."""
        pool = self._connections()
        client = pool.take()
        try:
            if self.settings.cwd_names and not client.at_root:
                self._enter_root(client, create=False)
            yield client
        except (ftplib.error_perm, ftplib.error_temp) as exc:
            if _reply_code(exc) == "421":  # the server is closing the connection
                client.broken = True
            raise _refused(exc, what) from None
        except (OSError, EOFError, ftplib.Error, UnicodeError) as exc:
            client.broken = True
            raise BackendError(f"{what}: connection to {self.settings.address} lost ({str(exc) or type(exc).__name__})") from exc
        except (BackendError, _SourceFailed):
            raise  # the operation left the connection in a known state
        except BaseException:
            client.broken = True  # interrupted mid-command
            raise
        finally:
            pool.give_back(client)

    def _enter_root(self, client: _Client, create: bool) -> bool:
        """use-cwd-names: make the root the working folder, one CWD per
        segment (creating missing ones with ``create``). False when it is missing."""
        s = self.settings
        with contextlib.suppress(ftplib.error_perm):
            client.cwd(self._root if not s.relative else (s.path.strip("/") or "."))
            client.at_root = True
            return True
        if not create:
            return False
        if not s.relative:
            client.cwd("/")
        # Not from the login folder itself: a relative root is below it, where the login put us.
        for segment in (p for p in s.path.split("/") if p):
            try:
                client.cwd(segment)
            except ftplib.error_perm:
                client.mkd(segment)
                client.cwd(segment)
        client.at_root = True
        return True

    # -- looking things up ---------------------------------------------------------------
    def _kind(self, client: _Client, path: str) -> str | None:
        """What is at ``path``: "file", "dir", "link", "other", or None when nothing is."""
        return self._kinds(client, [path])[path]

    def _kinds(self, client: _Client, paths: Sequence[str]) -> dict[str, str | None]:
        """:meth:`_kind` of several paths; with MLST, asked all at once."""
        assert self._features is not None
        if not self._features.mlsd:
            return {path: self._listed_kind(client, path) for path in paths}
        answers = client.pipeline([f"MLST {path}".rstrip() for path in paths])
        return {path: _mlst_kind(path, answer) for path, answer in zip(paths, answers)}

    def _listed_kind(self, client: _Client, path: str) -> str | None:
        folder, base = posixpath.split(path)
        try:
            entries = self._folder_entries(client, folder)
        except ftplib.error_perm:
            return None
        return next((kind for name, kind, _, _ in entries if name == base), None)

    def _folder_entries(self, client: _Client, folder: str) -> list[tuple[str, str, int, float]]:
        """(name, kind, size, mtime) of everything in ``folder``: by MLSD, else LIST."""
        assert self._features is not None
        if self._listing is None:
            self._listing = "MLSD" if self._features.mlsd else "LIST -a"
        if self._listing == "MLSD":
            entries = []
            for line in self._listing_lines(client, "MLSD", folder):
                facts, _, name = line.partition(" ")
                facts_of = _facts(facts)
                mtime = _ftp_time(facts_of.get("modify", "")) or 0.0
                entries.append((name, _mlsx_kind(facts_of), int(facts_of.get("size", "0") or 0), mtime))
            return entries
        if self._listing == "LIST -a":
            # Without -a many servers (vsftpd) leave dot files out: names
            # that must be mirrored, and our own temporary files. Servers
            # that take no options (pyftpdlib) fail it: plain LIST there.
            try:
                lines = self._listing_lines(client, "LIST -a", folder)
            except ftplib.error_perm:
                lines = self._listing_lines(client, "LIST", folder)
                self._listing = "LIST"
        else:
            lines = self._listing_lines(client, "LIST", folder)
        now = time.time()
        entries = [e for e in (_list_entry(line, now) for line in lines) if e is not None]
        entries = [e for e in entries if e[0] not in (".", "..") or e[1] != "dir"]
        if not self._features.mdtm:
            return entries
        # LIST shows minutes, or only the day for older files: MDTM has the second.
        exact = self._mdtm_times(client, folder, [name for name, kind, _, _ in entries if kind == "file"])
        return [(name, kind, size, exact.get(name, mtime)) for name, kind, size, mtime in entries]

    def _mdtm_times(self, client: _Client, folder: str, names: list[str]) -> dict[str, float]:
        """The MDTM time of each file of ``folder``, asked in batches: the
        commands of a batch go out together, then their answers are read."""
        usable = [n for n in names if _usable_folder_name(n)]
        out: dict[str, float] = {}
        for start in range(0, len(usable), MDTM_BATCH):
            batch = usable[start : start + MDTM_BATCH]
            for name in batch:
                client.putcmd(f"MDTM {posixpath.join(folder, name)}")
            for name in batch:
                try:
                    stamp = _ftp_time(client.getresp()[4:])
                except (ftplib.error_perm, ftplib.error_temp):
                    continue  # gone since the listing: its listed time stays
                if stamp is not None:
                    out[name] = stamp
        return out

    def _listing_lines(self, client: _Client, command: str, folder: str) -> list[str]:
        conn = client.open_data(f"{command} {folder}".rstrip(), self.settings.list_timeout)
        data = bytearray()
        with conn:
            while chunk := conn.recv(CHUNK):
                data += chunk
        reply = client.finish_transfer()
        if "truncated" in reply.lower():
            raise FatalBackendError(
                f"the server cut the listing of {folder or 'the root'} short ({reply.strip()}): with Pure-FTPd, "
                "raise its LimitRecursion; nothing is mirrored from an incomplete listing"
            )
        lines = (line.rstrip(b"\r") for line in bytes(data).split(b"\n"))
        return [line.decode("utf-8", "surrogateescape") for line in lines if line]

    # -- Backend ---------------------------------------------------------------------------
    def prepare(self, create: bool) -> None:
        s = self.settings
        with self._session(f"opening {s.path or 'the login folder'}") as client:
            root = self._root
            if root == "/":
                return  # the server's root is there
            if s.cwd_names:
                if not (client.at_root or self._enter_root(client, create)):
                    raise NotFound(f"folder {root} does not exist on {s.address}")
                return
            kind = self._kind(client, root)
            if kind not in (None, "dir"):
                raise FatalBackendError(f"{root} on {s.address} exists but is not a folder")
            if kind is None and not create:
                raise NotFound(f"folder {root} does not exist on {s.address}")
            if kind is None:
                self._makedirs(client, root, "/")

    def list(self, start_after: str | None = None) -> Iterator[Entry]:
        yield from ordered_walk(
            lambda prefix, folder: self._scan(prefix, folder, not prefix), None, LIST_THREADS, start_after
        )

    def _scan(self, prefix: str, folder: str | None, is_root: bool) -> list[Entry | tuple[str, str]]:
        """One folder (None: the root): its files, and its subfolders as (name prefix, path)."""
        with self._session(f"listing {folder or 'the root'}") as client:
            folder = self._top() if folder is None else folder
            try:
                entries = self._folder_entries(client, folder)
            except ftplib.error_perm:
                if self._kind(client, folder) is not None:
                    raise
                if is_root:
                    raise NotFound(f"folder {self._root} does not exist on {self.settings.address}") from None
                raise BackendError(f"folder {folder} vanished while it was being listed") from None
        items: list[Entry | tuple[str, str]] = []
        for name, kind, size, mtime in entries:
            if kind == "file":
                items.append(Entry(prefix + name, size, mtime))
            elif kind == "link":
                items.append(Entry(prefix + name, 0, mtime, link=True))
            elif kind == "dir":
                if name in (".", "..") or not _usable_folder_name(name):
                    log.warning("skipping folder with an unusable name %r", prefix + name)
                else:
                    items.append((f"{prefix}{name}/", posixpath.join(folder, name) if folder else name))
            elif kind != "cdir" and kind != "pdir":
                log.warning("skipping %s: not a regular file", prefix + name)
        return items

    def read(self, name: str) -> Iterator[bytes]:
        with self._session(f"reading {name}") as client:
            path = self._path(name)
            stream = self._retrieve(client, path)
            try:
                try:
                    first = next(stream, None)
                except (ftplib.error_perm, ftplib.error_temp):
                    if self._kind(client, path) is None:
                        raise NotFound(f"reading {name}: no such file") from None
                    raise
                if first is not None:
                    yield first
                    yield from stream
            finally:
                stream.close()

    def _retrieve(self, client: _Client, path: str) -> Iterator[bytes]:
        """The content of ``path``, in chunks of up to CHUNK bytes.

        The end of the data connection alone does not mean the end of the
        file (a dropped connection ends it too): only the server's 226 does.
        A reader that stops early leaves the connection in an unknown state:
        it is closed.
        """
        conn = client.open_data(f"RETR {path}", self.settings.rw_timeout)
        complete = False
        try:
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while True:
                filled = 0
                while filled < CHUNK and (got := conn.recv_into(view[filled:])):
                    filled += got
                if filled:
                    yield bytes(view[:filled])
                if filled < CHUNK:
                    break
            complete = True
        finally:
            if not complete:
                client.broken = True
            conn.close()
        client.finish_transfer()

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        size: int,
        mtime: float | None = None,
        keep_old_as: str | None = None,
        *,
        overwrite: bool = True,
        check: Callable[[Iterator[bytes]], None] | None = None,
    ) -> None:
        try:
            with self._session(f"writing {name}") as client:
                final = self._path(name)
                old = self._path(keep_old_as) if keep_old_as is not None else None
                temp = posixpath.join(posixpath.dirname(final), self.temp_name(""))
                try:
                    self._write(client, temp, final, chunks, mtime, old, overwrite, check)
                except BaseException:
                    self._delete_temp(client, temp)
                    raise
        except _SourceFailed as failed:
            raise failed.__cause__ from None

    def _write(
        self,
        client: _Client,
        temp: str,
        final: str,
        chunks: Iterable[bytes],
        mtime: float | None,
        old: str | None,
        overwrite: bool,
        check: Callable[[Iterator[bytes]], None] | None,
    ) -> None:
        folder = posixpath.dirname(temp)
        if folder not in self._folders:
            # Asked before the upload, not found out by a failed STOR: some
            # servers (rclone) take the data first and refuse after, when
            # the source has been read and cannot be sent again. One thread
            # at a time: rclone serve ftp, making one folder for two
            # connections at once, can lose a file stored in it from its
            # listings (and its DELE) for minutes.
            with self._making_folders:
                if folder not in self._folders:
                    self._makedirs(client, folder, self._top())
                    self._folders.add(folder)
        try:
            sent = self._store(client, temp, chunks)
        except BaseException:
            self._folders.discard(folder)  # it may be gone: the retry looks again
            raise
        # What is left goes out in as few round trips as the server allows:
        # the size and time of the temporary file with the look-ups of the
        # names to take (when no read-back comes between), then the renames.
        looks = [final] if not overwrite or old is not None else []
        looks += [old] if old is not None else []
        stamp = _mfmt_time(mtime) if mtime is not None and self._features and self._features.mfmt else None
        first = [f"SIZE {temp}"] if self.settings.verify_upload else []
        first += [f"MFMT {stamp} {temp}"] if stamp is not None else []
        if self.settings.upload_delay:
            time.sleep(self.settings.upload_delay)
        early = check is None and self._features is not None and self._features.mlsd
        answers = client.pipeline(first + ([f"MLST {p}" for p in looks] if early else []))
        if self.settings.verify_upload:
            self._verify_size(sent, answers.pop(0))
        if stamp is not None:
            self._check_mtime_set(answers.pop(0))
        if check is not None:
            check(self._retrieve(client, temp))
        kinds = {p: _mlst_kind(p, a) for p, a in zip(looks, answers)} if early else self._kinds(client, looks)
        if old is not None:
            self._refuse_taken(old, kinds[old])
            if kinds[final] is not None:
                self._refuse_taken_by_folder(final, kinds[final])
                client.rename(final, old)
            client.rename(temp, final)
        elif not overwrite:
            self._refuse_taken(final, kinds[final])
            client.rename(temp, final)
        else:
            self._move(client, temp, final)

    def _store(self, client: _Client, path: str, chunks: Iterable[bytes]) -> int:
        """STOR ``chunks`` as ``path``; the number of bytes sent."""
        conn = client.open_data(f"STOR {path}", self.settings.rw_timeout)
        sent = 0
        it = iter(chunks)
        with conn:
            while True:
                try:
                    chunk = next(it)
                except StopIteration:
                    break
                except BaseException as exc:
                    # The source failed: end the transfer. The server keeps
                    # what came, under the temporary name the caller deletes.
                    conn.close()
                    _answer_to_cut_transfer(client)
                    raise _SourceFailed() from exc
                try:
                    conn.sendall(chunk)
                except OSError:
                    _raise_why_cut(client, conn)
                    raise
                sent += len(chunk)
            if isinstance(conn, ssl.SSLSocket):
                try:
                    conn.unwrap()  # close_notify: the server knows that the upload was not cut
                except OSError:
                    _raise_why_cut(client, conn)
                    raise
        client.finish_transfer()
        return sent

    @staticmethod
    def _verify_size(sent: int, answer: str | ftplib.Error) -> None:
        """Duplicati's upload check: the server holds as many bytes as were sent."""
        if isinstance(answer, ftplib.Error):
            if _reply_code(answer) in ("500", "502", "504"):
                return  # no SIZE here: the read-back check, if asked for, still compares
            raise answer
        stored = int(answer[3:].strip()) if answer.startswith("213") else None
        if stored is not None and stored != sent:
            raise BackendError(f"the server holds {stored} bytes of the {sent} sent")

    def _check_mtime_set(self, answer: str | ftplib.Error) -> None:
        if isinstance(answer, ftplib.error_perm) and not self._mfmt_warned:
            # The content is right; only the time is the upload's.
            self._mfmt_warned = True
            log.warning("%s refused to set a file's time (MFMT: %s): files keep their upload time",
                        self.settings.address, str(answer).strip())  # fmt: skip
        elif isinstance(answer, ftplib.error_temp):
            raise answer

    def _refuse_taken(self, path: str, kind: str | None) -> None:
        """Raise unless nothing is at ``path``, whose look-up found ``kind``."""
        if kind is None:
            return
        self._refuse_taken_by_folder(path, kind)
        shown = self._name_of(path)
        raise AlreadyExists(f"{shown} exists already, and was not replaced", shown)

    def _refuse_taken_by_folder(self, path: str, kind: str | None) -> None:
        if kind == "dir":
            raise FatalBackendError(f"writing {self._name_of(path)} failed: a folder of that name is in the way")

    def _name_of(self, path: str) -> str:
        return path if self.settings.cwd_names else path[len(self._top().rstrip("/")) + 1 :]

    def _move(self, client: _Client, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, replacing ``dst``."""
        try:
            client.rename(src, dst)
        except ftplib.error_perm:
            # Some servers refuse to rename onto an existing file: delete it
            # first. The old file is complete until then, the new one from
            # then on.
            kind = self._kind(client, dst)
            if kind == "dir":
                raise FatalBackendError(f"writing {self._name_of(dst)} failed: a folder of that name is in the way") from None
            if kind is None or self._kind(client, src) is None:
                raise
            client.delete(dst)
            client.rename(src, dst)

    def _delete_temp(self, client: _Client, temp: str) -> None:
        if client.broken:
            self._orphans.add(temp)  # the next connection deletes it
            return
        try:
            client.delete(temp)
        except ftplib.error_perm:
            pass  # never made, or gone
        except (OSError, EOFError, ftplib.Error):
            client.broken = True
            self._orphans.add(temp)

    def _makedirs(self, client: _Client, folder: str, top: str) -> None:
        """mkdir -p below ``top`` (which exists)."""
        missing = []
        while folder not in ("", "/", top):
            kind = self._kind(client, folder)
            if kind == "dir":
                break
            if kind is not None:
                raise FatalBackendError(f"{self._name_of(folder)} is in the way of a folder of that name")
            missing.append(folder)
            folder = posixpath.dirname(folder)
        for path in reversed(missing):
            try:
                client.mkd(path)
            except ftplib.error_perm:
                # Another thread may have made it meanwhile.
                if self._kind(client, path) != "dir":
                    raise

    def rename(self, old: str, new: str) -> None:
        with self._session(f"renaming {old} to {new}") as client:
            src, dst = self._path(old), self._path(new)
            moves = posixpath.dirname(src) != posixpath.dirname(dst)  # to another folder
            if self._kind(client, dst) is not None:
                raise AlreadyExists(f"{new} exists already: {old} was not renamed over it", new)
            if moves:
                self._makedirs(client, posixpath.dirname(dst), self._top())
            try:
                client.rename(src, dst)
            except ftplib.error_perm:
                if self._kind(client, src) is None:
                    raise NotFound(f"renaming {old}: no such file") from None
                raise
            if moves:
                self._prune(client, {posixpath.dirname(src)})  # the folder the file left

    def delete(self, names: Sequence[str]) -> None:
        failures: dict[str, str] = {}
        folders: set[str] = set()
        with self._session("deleting files") as client:
            for name in names:
                try:
                    path = self._path(name)
                    client.delete(path)
                    folders.add(posixpath.dirname(path))
                except UnsafeName as exc:
                    failures[name] = str(exc)
                except (ftplib.error_perm, ftplib.error_temp) as exc:
                    if self._kind(client, path) is not None:
                        failures[name] = str(exc).strip()
            self._prune(client, folders)
        if failures:
            raise DeleteError(failures)

    def _prune(self, client: _Client, folders: set[str]) -> None:
        """Remove folders the deletes (or renames) left empty, deepest first, never the root."""
        top = self._top().rstrip("/")
        for folder in sorted(folders, key=len, reverse=True):
            while folder and folder != top and (not top or folder.startswith(top + "/")):
                try:
                    client.rmd(folder)
                except ftplib.error_perm:
                    break
                folder = posixpath.dirname(folder)

    def free_bytes(self) -> int | None:
        """AVBL (draft-peterson-streamlined-ftp-command-extensions), where the server has it."""
        if not self._avbl:
            return None
        try:
            with self._session("asking for free space") as client:
                reply = client.sendcmd(f"AVBL {self._top()}".rstrip())
        except FatalBackendError:
            self._avbl = False
            return None
        except BackendError:
            return None
        match = re.match(r"213 (\d+)", reply)
        return int(match.group(1)) if match else None

    def close(self) -> None:
        if self._orphans and self._pool is not None and self._pool.pid == os.getpid():
            # Last chance for the temporary files of writes whose connection
            # dropped: no call may come after this one to reconnect.
            try:
                with self._session("removing temporary files") as client:
                    self._remove_orphans(client)
            except Exception as exc:  # noqa: BLE001 - closing must not fail; the next run removes them
                log.warning("could not remove %d temporary file(s) after a dropped connection: %s", len(self._orphans), exc)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and pool.pid == os.getpid():
            pool.close()


def _usable_folder_name(name: str) -> bool:
    """A folder name that can be listed without leaving the root: one segment, no NUL, no line break."""
    if any(c in name for c in "/\x00\r\n"):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class AlternativeFTPBackend(FTPBackend):
    """Duplicati's AlternativeFTP (``aftp://``): the same backend, its options named ``aftp-...``."""

    schemes = ("aftp",)
    prefix = "aftp"
    options = _options("aftp")
