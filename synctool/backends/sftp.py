"""SFTP servers over SSH: ``ssh://[user[:password]@]host[:port]/path``.

One SSH connection (a paramiko ``Transport``) per backend instance, opened
lazily in the process that uses it and reused for every job. SFTP requests on
one channel must not interleave between threads (paramiko's ``SFTPClient``
reads whichever response comes next), so each thread leases a channel of its
own from a small pool over that one connection. A dropped connection is
noticed on the failing call, which raises a retryable :class:`BackendError`;
the next call opens a new connection.

Option names follow Duplicati's SSH backend, so existing scripts keep working.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import errno
import hashlib
import io
import logging
import math
import os
import posixpath
import re
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote

# paramiko imports invoke only to run the "Match exec" lines of ssh_config
# files, which synctool never reads, and invoke loads yaml, asyncio and
# unittest.mock on the way: a tenth of a second at every start of every
# process. It is hidden while paramiko loads, and only then: whoever imports
# invoke later gets it as usual.
_HIDE_INVOKE = "invoke" not in sys.modules
if _HIDE_INVOKE:
    sys.modules["invoke"] = None  # type: ignore[assignment]
try:
    import paramiko
finally:
    if _HIDE_INVOKE:
        del sys.modules["invoke"]
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_HANDLE,
    CMD_LSTAT,
    CMD_NAME,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_RENAME,
    CMD_SETSTAT,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
)

from synctool import secrets as secret_store
from synctool.backends import sftp_pipe
from synctool.backends.base import (
    AlreadyExists,
    Backend,
    BackendError,
    BackendSpec,
    DeleteError,
    Entry,
    FatalBackendError,
    Location,
    NotFound,
    Place,
    check_name,
)
from synctool.backends.local import default_file_mode
from synctool.backends.walk import ordered_walk
from synctool.backends.optiontable import NO_EFFECT, TIMEOUT_OPTIONS, Option, table

log = logging.getLogger("synctool.backends.sftp")


class _AsDebug(logging.Filter):
    """Lower every record to DEBUG.

    paramiko's connection thread logs each failure it meets, then hands the
    same failure to the call waiting on it, which raises it: the user reads it
    once, in our own message. The thread's copy (at ERROR, traceback and all)
    is for -v only: printed as well, it is noise, and after a Ctrl-C that
    closed the socket under the thread, a traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


# Where each connection and its SFTP sessions log: paramiko names the
# session logger after the connection's.
PARAMIKO_LOG = "synctool.backends.sftp.paramiko"
for _name in (PARAMIKO_LOG, f"{PARAMIKO_LOG}.sftp"):
    logging.getLogger(_name).addFilter(_AsDebug())

# File content moves in pipelined requests sized to the server (sftp_pipe.py).
WINDOW = 8 << 20  # SSH channel window: room for the read requests in flight
# Largest SSH packet the server may send us. Fewer, larger packets cost less
# CPU: paramiko decrypts and dispatches each one in Python. (What we send is
# bounded by the server's own choice, 32 KiB on OpenSSH.)
MAX_PACKET = 256 << 10
# Ciphers tried first. AES-GCM carries its own integrity check, so no HMAC
# is computed per packet on either side: the fastest both paramiko and
# OpenSSH offer. The rest of paramiko's list follows for other servers.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
MAX_CHANNELS = 8  # OpenSSH allows 10 sessions per connection by default
# Folders listed at once. Each folder costs a few round trips, which across a
# network is most of a listing's time: as many at once as a connection has channels.
LIST_THREADS = MAX_CHANNELS
READDIR_AHEAD = 2  # READDIRs of one folder in flight (see _folder_items)
CONNECT_TIMEOUT = 30.0
IO_TIMEOUT = 120.0  # a reply that takes longer means the server is stuck
CHANNEL_WAIT = 600.0  # longest wait for a free channel before giving up
TRANSPORT_EXIT_WAIT = 5.0  # longest wait for a closed connection's thread to end
DEFAULT_PORT = 22


# -- settings ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything needed to connect, taken from the URL and the options."""

    host: str
    port: int
    user: str
    password: str | None
    keyfile: str | None
    key_text: str | None
    fingerprint: str | None
    accept_any: bool
    disable_agent: bool
    keepalive: float
    relative: bool
    path: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_settings(location: Location, values: dict[str, Any]) -> Settings:
    """The settings of an ssh:// URL, with the values read from :attr:`SFTPBackend.options`."""
    _register_secrets(values)
    if not location.host:
        raise FatalBackendError("an ssh:// URL needs a host: ssh://user@host[:port]/path")
    user = values["auth-username"] or location.user
    if not user:
        raise FatalBackendError(
            f"no user name for ssh://{location.host}: give one in the URL (ssh://user@{location.host}/...) "
            "or with the auth-username option"
        )
    return Settings(
        host=location.host,
        port=location.port or DEFAULT_PORT,
        user=user,
        password=values["auth-password"] or location.password,
        keyfile=values["ssh-keyfile"] or None,
        key_text=_inline_key(values["ssh-key"]),
        fingerprint=values["ssh-fingerprint"] or None,
        accept_any=values["ssh-accept-any-fingerprints"],
        disable_agent=values["ssh-disable-agent"],
        keepalive=values["ssh-keepalive"],
        relative=values["ssh-relative-path"],
        path=location.path,
    )


def _register_secrets(values: dict[str, Any]) -> None:
    # The values of the table's secret keys are masked as given (see
    # Backend.__init__); this is the form an inline key takes on its way
    # to paramiko.
    secret_store.register(_inline_key(values["ssh-key"]))


def _inline_key(value: str | None) -> str | None:
    """The private key text of ``ssh-key``; Duplicati writes it as ``sshkey://`` + URL-encoded."""
    if not value:
        return None
    if value.startswith("sshkey://"):
        return unquote(value[len("sshkey://") :])
    return value


# -- host keys ----------------------------------------------------------------
def fingerprints(key: paramiko.PKey) -> tuple[str, str]:
    """The host key's fingerprint in Duplicati's form and in OpenSSH's form."""
    md5 = hashlib.md5(key.asbytes()).hexdigest()  # noqa: S324 - a fingerprint, not security
    duplicati = f"{key.get_name()} {key.get_bits()} " + ":".join(md5[i : i + 2] for i in range(0, 32, 2))
    sha = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return duplicati, f"SHA256:{sha}"


def fingerprint_matches(pin: str, key: paramiko.PKey) -> bool:
    """Does ``pin`` (``ssh-ed25519 256 aa:bb:..``, ``MD5:aa:bb:..`` or ``SHA256:...``) name ``key``?"""
    duplicati, openssh = fingerprints(key)
    for token in pin.replace(",", " ").split():
        if token.upper().startswith("SHA256:"):
            if token[7:].rstrip("=") == openssh[7:]:
                return True
        else:
            hexdigits = re.sub(r"^MD5:", "", token, flags=re.IGNORECASE).replace(":", "").lower()
            if len(hexdigits) == 32 and hexdigits == duplicati.split()[-1].replace(":", ""):
                return True
    return False


def _known_hosts() -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for path in (os.path.expanduser("~/.ssh/known_hosts"), "/etc/ssh/ssh_known_hosts"):
        try:
            keys.load(path)
        except FileNotFoundError:
            pass
        except (OSError, paramiko.SSHException) as exc:
            log.warning("cannot read %s: %s", path, exc)
    return keys


def _known_host_name(s: Settings) -> str:
    return s.host if s.port == DEFAULT_PORT else f"[{s.host}]:{s.port}"


def _algorithm_key_type(algorithm: str) -> str:
    """The key type an algorithm name signs with: rsa-sha2-512 is an ssh-rsa key."""
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


def check_host_key(s: Settings, key: paramiko.PKey, known: paramiko.HostKeys) -> None:
    """Refuse a server whose key is neither pinned nor in known_hosts."""
    if s.accept_any:
        return
    duplicati, openssh = fingerprints(key)
    shown = f'{duplicati} (OpenSSH: {openssh}); to trust it, set ssh-fingerprint="{openssh}"'
    if s.fingerprint:
        if fingerprint_matches(s.fingerprint, key):
            return
        raise FatalBackendError(
            f"host key of {s.address} does not match ssh-fingerprint: the server presents {shown}"
        )
    entry = known.lookup(_known_host_name(s))
    if entry is not None and key.get_name() in entry:
        if entry[key.get_name()] == key:
            return
        raise FatalBackendError(
            f"host key of {s.address} differs from the one in known_hosts (was it replaced, "
            f"or is someone in the middle?): the server presents {shown}"
        )
    raise FatalBackendError(
        f"host key of {s.address} is unknown (not in known_hosts and no ssh-fingerprint given): "
        f"the server presents {shown}, or add it to ~/.ssh/known_hosts"
    )


# -- private keys ------------------------------------------------------------
_KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def _parse_key(text: str, passphrase: str | None, origin: str) -> paramiko.PKey:
    """Load an OpenSSH or PEM private key of any supported type."""
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    hint = "wrong passphrase (auth-password), or " if passphrase else ""
    raise FatalBackendError(f"cannot use the private key {origin}: {hint}not an ed25519, ECDSA or RSA key")


def load_private_key(s: Settings) -> tuple[paramiko.PKey | None, bool]:
    """The configured key, and whether auth-password was spent on its passphrase.

    auth-password is the passphrase of an encrypted key; it is then never
    sent to the server as a login password.
    """
    if s.key_text:
        text, origin = s.key_text, "given in ssh-key"
    elif s.keyfile:
        origin = os.path.expanduser(s.keyfile)
        try:
            with open(origin, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise FatalBackendError(f"cannot read ssh-keyfile {origin}: {exc.strerror}") from None
    else:
        return None, False
    try:
        return _parse_key(text, None, origin), False
    except paramiko.PasswordRequiredException:
        if not s.password:
            raise FatalBackendError(
                f"the private key {origin} is encrypted: give its passphrase with auth-password"
            ) from None
        return _parse_key(text, s.password, origin), True


# -- one connection, many channels ------------------------------------------------
class _Lease:
    """One SFTP channel, lent to one thread for one operation."""

    def __init__(self, sftp: paramiko.SFTPClient, limits: sftp_pipe.Limits):
        self.sftp = sftp
        self.limits = limits  # the server's, for requests sent through a Pipe
        self.usable = True  # set False when the channel's state is unknown


@contextlib.contextmanager
def _piped(lease: _Lease) -> Iterator[sftp_pipe.Pipe]:
    """A request pipe on the leased channel. A pipe left with replies unread
    (its channel failed) retires the channel."""
    pipe = sftp_pipe.Pipe(lease.sftp)
    try:
        yield pipe
    finally:
        if not pipe.idle:
            lease.usable = False


class Connection:
    """An authenticated SSH transport and a pool of SFTP channels over it."""

    def __init__(self, settings: Settings, transport: paramiko.Transport):
        self.settings = settings
        self.transport = transport
        self.pid = os.getpid()
        self.posix_rename: bool | None = None  # unknown until first tried
        # OpenSSH's plain SFTP rename refuses an existing target in one step
        # (it links, then unlinks); other servers' may replace it, so there
        # a look at the target comes first.
        self.rename_refuses_existing = "OpenSSH" in (transport.remote_version or "")
        self.limits = sftp_pipe.Limits()  # what one request may carry; asked once connected
        self._idle: list[paramiko.SFTPClient] = []
        self._open_channels = 0
        self._cond = threading.Condition()
        self._closed = False

    @classmethod
    def open(cls, s: Settings) -> "Connection":
        known = _known_hosts()
        sock = _dial(s)
        transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
        transport.set_log_channel(PARAMIKO_LOG)
        try:
            _prefer_key_types(transport, _expected_key_types(s, known))
            _prefer_fast_ciphers(transport)
            transport.start_client(timeout=CONNECT_TIMEOUT)
            # Nothing but the key exchange has happened yet: check the key
            # before sending any credential.
            check_host_key(s, transport.get_remote_server_key(), known)
            if s.accept_any:
                log.warning("not checking the host key of %s (ssh-accept-any-fingerprints)", s.address)
            _authenticate(transport, s)
            if s.keepalive:
                transport.set_keepalive(max(1, int(s.keepalive)))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # A connection dropped mid-handshake surfaces as EOFError or a
            # socket error; left raw, it would end the run as a crash.
            _end(transport)
            raise BackendError(f"SSH session with {s.address} failed: {str(exc) or 'connection closed'}") from exc
        except BaseException:
            _end(transport)
            raise
        return cls(s, transport)

    def alive(self) -> bool:
        return not self._closed and self.transport.is_active()

    @contextlib.contextmanager
    def lease(self) -> Iterator[_Lease]:
        lease = _Lease(self._take(), self.limits)
        try:
            yield lease
        except Exception as exc:
            lease.usable = lease.usable and _channel_survives(lease.sftp, exc)
            raise
        except GeneratorExit:
            # A reader stopped early. Its pipe has read what was owed (or
            # marked the lease), so the channel serves on.
            raise
        except BaseException:
            lease.usable = False  # interrupted mid-request: the channel's state is unknown
            raise
        finally:
            self._give_back(lease)

    def _take(self) -> paramiko.SFTPClient:
        while True:
            with self._cond:
                while not self._idle and self._open_channels >= MAX_CHANNELS:
                    if not self._cond.wait(CHANNEL_WAIT):
                        raise BackendError(f"no free SFTP channel to {self.settings.address}")
                idle = self._idle.pop() if self._idle else None
                if idle is None:
                    self._open_channels += 1
            if idle is None:
                break
            if _settled(idle):
                return idle
            self._retire(idle)
        try:
            return _open_sftp_channel(self.transport)
        except BaseException:
            with self._cond:
                self._open_channels -= 1
                self._cond.notify()
            raise

    def _give_back(self, lease: _Lease) -> None:
        if not (lease.usable and not self._closed):
            self._retire(lease.sftp)
            return
        with self._cond:
            self._idle.append(lease.sftp)
            self._cond.notify()

    def _retire(self, sftp: paramiko.SFTPClient) -> None:
        with self._cond:
            self._open_channels -= 1
            self._cond.notify()
        _quietly(sftp.close)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for sftp in idle:
            _quietly(sftp.close)
        _quietly(lambda: _end(self.transport))


def _settled(sftp: paramiko.SFTPClient) -> bool:
    """Read the answers an idle channel still owes (a listing's CLOSE, sent
    without waiting for it), so that the next request reads its own;
    False when the channel failed meanwhile. Usually they came long ago."""
    try:
        while sftp._expecting:
            sftp._read_response()
    except Exception:
        return False
    return True


def _open_sftp_channel(transport: paramiko.Transport) -> paramiko.SFTPClient:
    """A new SFTP session on ``transport``; a server that does not answer in
    IO_TIMEOUT fails it rather than hanging the caller."""
    channel = transport.open_session(window_size=WINDOW, max_packet_size=MAX_PACKET, timeout=IO_TIMEOUT)
    sftp_pipe.prepare_channel(channel)  # before the server can send anything
    channel.settimeout(IO_TIMEOUT)
    # paramiko waits for the subsystem's answer without a time limit:
    # closing the channel is what ends that wait.
    watchdog = threading.Timer(IO_TIMEOUT, channel.close)
    watchdog.daemon = True
    watchdog.start()
    try:
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)
    except BaseException:
        channel.close()
        raise
    finally:
        watchdog.cancel()


def _dial(s: Settings) -> socket.socket:
    try:
        sock = socket.create_connection((s.host, s.port), timeout=CONNECT_TIMEOUT)
    except socket.gaierror as exc:
        raise BackendError(f"cannot resolve host {s.host}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise BackendError(f"connection refused by {s.address} (is an SSH server listening there?)") from None
    except TimeoutError:
        raise BackendError(f"timed out connecting to {s.address}") from None
    except OSError as exc:
        raise BackendError(f"cannot connect to {s.address}: {exc.strerror or exc}") from None
    # Requests are small and each waits for its answer: Nagle's algorithm
    # would hold one back until the server acknowledged the last, which costs
    # a delayed ACK (40 ms) per exchange while logging in.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _PromptAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())


class _PromptAckSocket(socket.socket):
    """A socket that acknowledges what it receives at once while logging in.

    sshd leaves Nagle's algorithm on for SFTP sessions. Right after the login
    it sends a notice that needs no answer (hostkeys-00@openssh.com); the
    kernel delays our ACK of it by 40 ms, and until that ACK arrives Nagle
    holds back the server's answer to our channel open: every connection
    paid 40 ms before its first request. Set ``prompt_acks`` to False once
    the first channel is open: later on our own requests carry the ACKs.
    """

    prompt_acks = hasattr(socket, "TCP_QUICKACK")  # Linux only

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if self.prompt_acks:
            # Sends the ACK that is pending now, and leaves delayed-ACK mode.
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def _expected_key_types(s: Settings, known: paramiko.HostKeys) -> set[str]:
    """Key types the pin (Duplicati's form names one) or known_hosts holds for the host."""
    if s.fingerprint:
        return {t for t in s.fingerprint.replace(",", " ").split() if t.startswith(("ssh-", "ecdsa-"))}
    entry = known.lookup(_known_host_name(s))
    return set(entry.keys()) if entry else set()


def _prefer_key_types(transport: paramiko.Transport, wanted: set[str]) -> None:
    """Ask for the host key type we can check first, as OpenSSH does: a
    server with several keys then shows the one that was pinned."""
    if not wanted:
        return
    options = transport.get_security_options()
    first = [a for a in options.key_types if _algorithm_key_type(a) in wanted]
    options.key_types = first + [a for a in options.key_types if a not in first]


def _prefer_fast_ciphers(transport: paramiko.Transport) -> None:
    options = transport.get_security_options()
    first = tuple(c for c in FAST_CIPHERS if c in options.ciphers)
    options.ciphers = first + tuple(c for c in options.ciphers if c not in first)


def _authenticate(transport: paramiko.Transport, s: Settings) -> None:
    """Try the key, then the password, then the agent's keys."""
    key, passphrase_used = load_private_key(s)
    tried = []
    if key is not None:
        tried.append("the private key")
        if _try_auth(lambda: transport.auth_publickey(s.user, key), transport):
            return
    if s.password and not passphrase_used:
        tried.append("the password")
        if _try_auth(lambda: transport.auth_password(s.user, s.password), transport):
            return
    if not s.disable_agent:
        agent = paramiko.Agent()
        try:
            for agent_key in agent.get_keys():
                if "the SSH agent" not in tried:
                    tried.append("the SSH agent")
                if _try_auth(lambda k=agent_key: transport.auth_publickey(s.user, k), transport):
                    return
        finally:
            agent.close()
    what = ", ".join(tried) if tried else "no key, password or SSH agent was available"
    raise FatalBackendError(
        f"authentication as {s.user} on {s.address} failed (tried: {what}): check the user name, "
        "and auth-password, ssh-keyfile or ssh-key"
    )


def _try_auth(attempt, transport: paramiko.Transport) -> bool:
    try:
        attempt()
    except paramiko.AuthenticationException:
        if not transport.is_active():
            # paramiko says "authentication failed" when the connection is
            # gone: that is no verdict on the credentials, and worth a retry.
            raise paramiko.SSHException(
                "the connection closed during login (dropped, or the server's limit of failed attempts)"
            ) from None
        return False
    return transport.is_authenticated()


def _channel_survives(sftp: paramiko.SFTPClient, exc: Exception) -> bool:
    """After an error, may the channel be used again?

    A status the server sent (no such file, permission denied) leaves it
    fine; a timeout, a closed channel or a dead transport does not. An
    EOFError that reaches us is paramiko's "the channel accepts no more"
    (the status EOF at the end of a file or folder is handled inside it).
    """
    if isinstance(exc, (TimeoutError, EOFError, paramiko.SSHException)):
        return False
    channel = sftp.get_channel()
    return channel is not None and not channel.closed and channel.get_transport().is_active()


def _end(transport: paramiko.Transport) -> None:
    """Close ``transport`` and wait for its thread.

    Transport.close() does not wait for it, and it still logs on its way
    out: left running into the interpreter's exit, it can die holding the
    logging module's lock, and the exit then waits on that lock for ever.
    """
    transport.close()
    if transport is not threading.current_thread() and transport.ident is not None:
        transport.join(TRANSPORT_EXIT_WAIT)


def _quietly(action) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - cleanup of something already broken
        pass


class _SourceFailed(Exception):
    """The caller's chunk iterator raised: re-raised as itself, never translated."""


def _pull(chunks: Iterable[bytes]) -> Iterator[bytes]:
    it = iter(chunks)
    while True:
        try:
            chunk = next(it)
        except StopIteration:
            return
        except BaseException as exc:
            raise _SourceFailed() from exc
        yield chunk


# -- the backend -------------------------------------------------------------
class SFTPBackend(Backend):
    schemes = ("ssh", "sftp")
    description = "SFTP over SSH: ssh://[user[:password]@]host[:port]/path (sftp:// alike)"
    options = table(
        Option("auth-username", "text", None, "User name (instead of user@ in the URL)."),
        Option("auth-password", "text", None, "Password, or the passphrase of the private key.", secret=True),
        Option("ssh-keyfile", "text", None, "Path of a private key file."),
        Option("ssh-key", "text", None, "A private key inline (also sshkey:// and the key URL-encoded, as Duplicati writes it).",
               secret=True),  # fmt: skip
        Option("ssh-fingerprint", "text", None, "Pinned host key: 'ssh-ed25519 256 aa:bb:..' or 'SHA256:...'."),
        Option("ssh-accept-any-fingerprints", "bool", False, "Do not check the host key (unsafe)."),
        Option("ssh-disable-agent", "bool", False, "Do not try the keys of the SSH agent."),
        Option("ssh-keepalive", "duration", 0.0, "Send a keepalive this often (e.g. 30s); 0 sends none."),
        Option("ssh-relative-path", "bool", False, "The path is relative to the login folder."),
        Option("ssh-operation-timeout", "text", None, f"{NO_EFFECT} deprecated in Duplicati too; synctool's own "
               "time limits apply, and a stalled request fails and is retried (--retry)."),  # fmt: skip
        *TIMEOUT_OPTIONS,
    )
    concurrency = 4
    mtime_precision = 1.0  # SFTP v3 carries whole seconds
    max_segment_bytes = 255  # NAME_MAX of the file systems behind common servers

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        self.settings = parse_settings(self.location, self.values)
        self.file_mode = default_file_mode()  # of a finished copy; 0600 until then
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._root: str | None = None
        self._real_root: str | None = None  # the root with its links resolved by the server
        self._first_look: sftp_pipe.FirstLook | None = None  # what the first login found, for prepare
        # Temporary files a dropped connection kept us from removing: removed
        # as soon as a new connection is up.
        self._orphans: set[str] = set()

    def __getstate__(self):
        # A connection never crosses a process boundary.
        state = self.__dict__.copy()
        state.update(_lock=None, _conn=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def display_url(self) -> str:
        s = self.settings
        return f"ssh://{s.user}@{s.address}{s.path}"

    # -- connection ----------------------------------------------------------
    def connect_ahead(self) -> None:
        self._connection()

    def _connection(self) -> Connection:
        with self._lock:
            conn = self._conn
            if conn is not None and conn.pid == os.getpid():
                if conn.alive():
                    return conn
                log.info("connection to %s was lost; reconnecting", self.settings.address)
                conn.close()
            # A connection inherited through fork belongs to the parent: just forget it.
            self._conn = None
            conn = Connection.open(self.settings)
            try:
                self._after_connect(conn)
                if isinstance(conn.transport.sock, _PromptAckSocket):
                    conn.transport.sock.prompt_acks = False
            except (OSError, EOFError, paramiko.SSHException) as exc:
                # Kept only once it works: a connection whose first channel
                # failed has no root, and must not be handed out again.
                alive = conn.alive()
                conn.close()
                if alive:
                    raise _status_error(exc, f"opening {self.settings.path or 'the login folder'}") from exc
                raise BackendError(f"connection to {self.settings.address} lost while opening it ({str(exc) or type(exc).__name__})") from exc
            self._conn = conn
            return conn

    def _after_connect(self, conn: Connection) -> None:
        with conn.lease() as lease:
            root = self._root or self._absolute_root()
            if root is not None and self._real_root is None:
                # The first login, to a root the URL names: its questions go together.
                with _piped(lease) as pipe:
                    look = sftp_pipe.first_look(pipe, root)
                conn.limits, self._first_look = look.limits, look
                self._root, self._real_root = root, look.real or _realpath(lease.sftp, root)
            else:
                with _piped(lease) as pipe:
                    conn.limits = sftp_pipe.server_limits(pipe)
                if self._root is None:
                    self._root = self._resolve_root(lease.sftp)
                    self._real_root = _realpath(lease.sftp, self._root)
            self._remove_orphans(lease.sftp)

    def _remove_orphans(self, sftp: paramiko.SFTPClient) -> None:
        for temp in list(self._orphans):
            with contextlib.suppress(OSError):
                sftp.remove(temp)
            self._orphans.discard(temp)

    def _resolve_root(self, sftp: paramiko.SFTPClient) -> str:
        """Absolute root folder. As in Duplicati, the path is absolute unless
        ssh-relative-path is set; an empty path means the login folder."""
        absolute = self._absolute_root()
        if absolute is not None:
            return absolute
        path = self.settings.path
        if self.settings.relative or path in ("", "/"):
            path = posixpath.join(sftp.normalize("."), path.lstrip("/"))
        # '..' after a symbolic link is the parent of the link's target: the
        # server reads the path up to its last '..' (normpath would drop the
        # link with it, as text); one that does not exist there has no link.
        segments = path.split("/")
        if ".." not in segments:
            return posixpath.normpath(path)
        last = len(segments) - segments[::-1].index("..")
        head = "/".join(segments[:last])
        with contextlib.suppress(OSError):
            head = sftp.normalize(head)
        return posixpath.normpath("/".join([head, *segments[last:]]))

    def _absolute_root(self) -> str | None:
        """The root folder when the URL alone says it; None when it is below
        the login folder or has a '..' segment (which the server reads)."""
        path = self.settings.path
        if self.settings.relative or path in ("", "/") or ".." in path.split("/"):
            return None
        return "/" + posixpath.normpath(path).strip("/")

    def root_place(self) -> Place | None:
        root = self._root or self._absolute_root()
        if root is None:
            return None  # below the login folder: known once connected
        s = self.settings
        # Links resolved once connected: two spellings of one folder compare equal.
        real = self._real_root or root
        return Place(("sftp", s.host.lower(), s.port), real.strip("/"), f"ssh://{s.address}{root}")

    def details(self) -> dict[str, str]:
        s = self.settings
        root, below = self._absolute_root(), s.path.strip("/")
        if root is None and not s.relative and ".." in below.split("/"):
            root = f"{s.path} (its '..' as the server reads it)"
        where = root or (f"{below} (below the login folder)" if below else "the login folder")
        return {"scheme": self.location.scheme, "host": s.host, "port": str(s.port), "user": s.user, "path": where}

    @contextlib.contextmanager
    def _sftp(self, what: str) -> Iterator[_Lease]:
        """Lease a channel; turn SFTP and network errors into BackendErrors about ``what``."""
        conn = self._connection()
        lease = None
        try:
            with conn.lease() as lease:
                yield lease
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if lease is None or not lease.usable or not conn.alive():
                # The channel died, so the connection is suspect: drop it
                # now, so the next call (the retry) opens a fresh one rather
                # than racing paramiko's own discovery of the loss.
                conn.close()
                reason = str(exc) or type(exc).__name__
                raise BackendError(f"{what}: connection to {self.settings.address} lost ({reason})") from exc
            raise _status_error(exc, what) from exc

    def _path(self, name: str) -> str:
        assert self._root is not None, "connect first"
        return posixpath.join(self._root, check_name(name))

    def _refuse_links(self, sftp: paramiko.SFTPClient, what: str, *names: str) -> None:
        """Stop ``what`` where a symbolic link below the root lies on the way
        to any of ``names`` (relative to the root; "" is the root itself).

        The server follows links anywhere in a path, and SFTP v3 cannot ask
        it not to: the plan keeps clear of the links the listing showed, and
        this look, just before the operation, refuses one made since.
        """
        for name in names:
            if name and _realpath(sftp, self._path(name)) != posixpath.join(self._real_root, name):
                raise FatalBackendError(f"{what} failed: a symbolic link is in the way (links are never followed)")

    # -- Backend -----------------------------------------------------------------
    def prepare(self, create: bool) -> None:
        try:
            self._connection()
        except FatalBackendError:
            raise
        except BackendError as exc:
            raise FatalBackendError(str(exc)) from exc
        root = self._root
        look, self._first_look = self._first_look, None  # fresh from the login, or asked now
        with self._sftp(f"opening {root}") as lease:
            try:
                mode = look.mode if look is not None else lease.sftp.stat(root).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not stat.S_ISDIR(mode):
                raise FatalBackendError(f"{root} on {self.settings.address} exists but is not a folder")
            if mode is None and not create:
                raise NotFound(f"folder {root} does not exist on {self.settings.address}")
            if mode is None:
                _makedirs(lease.sftp, root, None)

    def list(self, start_after: str | None = None) -> Iterator[Entry]:
        self._connection()
        # Listing a folder is one round trip per batch of names: folders
        # ahead of the walk are listed at once, each on its own channel.
        return ordered_walk(
            lambda prefix, folder: self._scan(prefix, folder, not prefix), self._root, LIST_THREADS, start_after
        )

    def _scan(self, prefix: str, folder: str, is_root: bool) -> Iterator[Entry | tuple[str, str]]:
        """One folder as it arrives: its files, and its subfolders as (name prefix, path)."""
        try:
            with self._sftp(f"listing {folder}") as lease:
                for item in _folder_items(lease.sftp, folder):
                    found = _listed(prefix, folder, item)
                    if found is not None:
                        yield found
        except NotFound:
            if is_root:
                raise NotFound(f"folder {folder} does not exist on {self.settings.address}") from None
            raise BackendError(f"folder {folder} vanished while it was being listed") from None

    def read(self, name: str) -> Iterator[bytes]:
        self._connection()
        path = self._path(name)
        with self._sftp(f"reading {name}") as lease:
            self._refuse_links(lease.sftp, f"reading {name}", name)
            yield from _read_path(lease, path)

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
        self._connection()
        final = self._path(name)
        old = self._path(keep_old_as) if keep_old_as is not None else None
        try:
            with self._sftp(f"writing {name}") as lease:
                self._refuse_links(lease.sftp, f"writing {name}", posixpath.dirname(name),
                                   posixpath.dirname(keep_old_as or ""))  # fmt: skip
                self._write(lease, final, chunks, mtime, old, overwrite, check)
        except _SourceFailed as failed:
            raise failed.__cause__ from None
        except BackendError as exc:
            free = self.free_bytes() if exc.retryable else None
            if free is not None and free < max(size, 1):
                # SFTP v3 reports a full disk as a bare "Failure"; the free
                # space, once the temporary file is gone, tells.
                raise FatalBackendError(f"writing {name} failed: no space left on the server") from exc
            raise
        except _Taken as taken:
            if taken.is_folder:
                raise FatalBackendError(f"writing {name} failed: a folder of that name is in the way") from None
            shown = keep_old_as if taken.path == old else name
            raise AlreadyExists(
                f"{shown} exists already: " + ("the old version was not moved there" if taken.path == old
                                                else "it appeared at the destination during the run, and was not replaced"),
                shown,
            ) from None

    def free_bytes(self) -> int | None:
        try:
            with self._sftp("asking for free space") as lease, _piped(lease) as pipe:
                answer = sftp_pipe.statvfs(pipe, self._root)
        except BackendError:
            return None
        return answer[0] if answer else None

    def _write(
        self,
        lease: _Lease,
        final: str,
        chunks: Iterable[bytes],
        mtime: float | None,
        old: str | None,
        overwrite: bool,
        check: Callable[[Iterator[bytes]], None] | None,
    ) -> None:
        sftp = lease.sftp
        temp = self.temp_name(posixpath.dirname(final))
        with _piped(lease) as pipe:
            try:
                handle = self._create_temp(pipe, temp)
                sftp_pipe.write_file(pipe, handle, _pull(chunks), lease.limits)
            except BaseException:
                if pipe.idle:
                    self._remove_temp(sftp, temp)
                else:  # the channel is lost: remove it over the next connection
                    self._orphans.add(temp)
                raise
        try:
            if check is not None:
                check(_read_path(lease, temp))
            if not overwrite:
                self._finish_new(lease, temp, final, mtime)
                return
            if old is None and self._conn is not None and self._conn.posix_rename is not False:
                self._finish_at_once(lease, temp, final, mtime)
                return
            _set_final_attributes(sftp, temp, self.file_mode, mtime)
            if old is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._rename_noreplace(lease, final, old)
            self._move(sftp, temp, final)
        except BaseException:
            self._remove_temp(sftp, temp)
            raise

    def _finish_new(self, lease: _Lease, temp: str, final: str, mtime: float | None) -> None:
        """Give the complete ``temp`` its attributes and its name ``final``,
        which must not exist: in one round trip where the server's rename
        refuses an existing target by itself."""
        conn = self._conn
        with _piped(lease) as pipe:
            if conn is not None and conn.rename_refuses_existing:
                attributes = pipe.send(CMD_SETSTAT, temp, _final_attributes(self.file_mode, mtime))
                move = pipe.send(CMD_RENAME, temp, final)
                refused_attributes, refused_move = pipe.settle([attributes]), pipe.settle([move])
                if refused_move is not None:
                    raise _taken(lease.sftp, final) or refused_move
                if refused_attributes is not None:
                    raise refused_attributes
                return
            look = pipe.send(CMD_LSTAT, final)
            attributes = pipe.send(CMD_SETSTAT, temp, _final_attributes(self.file_mode, mtime))
            kind, found = pipe.reply(look)
            refused_attributes = pipe.settle([attributes])
        if kind == CMD_ATTRS:
            raise _Taken(final, paramiko.SFTPAttributes._from_msg(paramiko.Message(bytes(found))).st_mode or 0)
        with contextlib.suppress(FileNotFoundError):
            sftp_pipe.check_status(kind, found)
            raise OSError(f"looking up {final}: the server answered without saying whether it exists")
        if refused_attributes is not None:
            raise refused_attributes
        lease.sftp.rename(temp, final)

    def _rename_noreplace(self, lease: _Lease, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, never over an existing ``dst`` (:class:`_Taken`)."""
        sftp = lease.sftp
        conn = self._conn
        if not (conn is not None and conn.rename_refuses_existing):
            taken = _taken(sftp, dst)
            if taken is not None:
                raise taken
        try:
            sftp.rename(src, dst)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _taken(sftp, dst) or exc from None

    def _finish_at_once(self, lease: _Lease, temp: str, final: str, mtime: float | None) -> None:
        """Give the complete ``temp`` its attributes and move it to ``final`` in
        one round trip: both requests go out together, and SFTP servers carry
        out the requests about one file in the order they came."""
        with _piped(lease) as pipe:
            attributes = pipe.send(CMD_SETSTAT, temp, _final_attributes(self.file_mode, mtime))
            move = pipe.send(CMD_EXTENDED, "posix-rename@openssh.com", temp, final)
            refused_attributes, refused_move = pipe.settle([attributes]), pipe.settle([move])
        if refused_move is not None:
            if refused_attributes is None and _unsupported(refused_move):
                self._move(lease.sftp, temp, final)  # learns that posix-rename is missing
            else:
                raise _folder_taken(lease.sftp, final) or refused_move
        elif self._conn is not None:
            self._conn.posix_rename = True
        if refused_attributes is not None:
            raise refused_attributes

    def _create_temp(self, pipe: sftp_pipe.Pipe, temp: str) -> bytes:
        """Create the temporary file ``temp``; return its open handle."""
        try:
            return _open_private(pipe, temp)
        except FileNotFoundError:
            _makedirs(pipe.sftp, posixpath.dirname(temp), self._root)  # first file in a new folder
            return _open_private(pipe, temp)

    def _remove_temp(self, sftp: paramiko.SFTPClient, temp: str) -> None:
        try:
            sftp.remove(temp)
        except FileNotFoundError:
            pass
        except Exception:  # noqa: BLE001 - the connection is gone: clean up after reconnecting
            self._orphans.add(temp)

    def _move(self, sftp: paramiko.SFTPClient, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, replacing ``dst`` atomically where the server can."""
        conn = self._conn
        if conn is None or conn.posix_rename is not False:
            try:
                sftp.posix_rename(src, dst)
                if conn is not None:
                    conn.posix_rename = True
                return
            except OSError as exc:
                if conn is None or not _unsupported(exc):
                    raise _folder_taken(sftp, dst) or exc from None
                conn.posix_rename = False
                log.info("%s has no posix-rename: replacing files by remove and rename", self.settings.address)
        try:
            sftp.rename(src, dst)
        except OSError:
            # Plain SFTP rename refuses to replace: remove the target first.
            # The old file is complete until then, the new one from then on.
            sftp.stat(src)  # a missing source is the real error
            sftp.remove(dst)
            sftp.rename(src, dst)

    def rename(self, old: str, new: str) -> None:
        self._connection()
        src, dst = self._path(old), self._path(new)
        moves = posixpath.dirname(src) != posixpath.dirname(dst)  # to another folder
        try:
            with self._sftp(f"renaming {old} to {new}") as lease:
                self._refuse_links(lease.sftp, f"renaming {old} to {new}", posixpath.dirname(old), posixpath.dirname(new))
                if moves:
                    _makedirs(lease.sftp, posixpath.dirname(dst), self._root)
                self._rename_noreplace(lease, src, dst)
                if moves:
                    self._prune(lease.sftp, {posixpath.dirname(src)})  # the folder the file left
        except _Taken:
            raise AlreadyExists(f"{new} exists already: {old} was not renamed over it", new) from None

    def delete(self, names: Sequence[str]) -> None:
        self._connection()
        failures: dict[str, str] = {}
        folders: set[str] = set()
        clear: set[str] = set()  # folders seen to hold no link on the way, in this call
        with self._sftp("deleting files") as lease:
            for name in names:
                try:
                    path = self._path(name)
                    if (folder := posixpath.dirname(name)) not in clear:
                        self._refuse_links(lease.sftp, f"deleting {name}", folder)
                        clear.add(folder)
                    lease.sftp.remove(path)
                    folders.add(posixpath.dirname(path))
                except FileNotFoundError:
                    pass
                except BackendError as exc:
                    failures[name] = str(exc)
                except OSError as exc:
                    if not _channel_survives(lease.sftp, exc):
                        raise
                    failures[name] = "permission denied" if exc.errno == errno.EACCES else str(exc)
            self._prune(lease.sftp, folders)
        if failures:
            raise DeleteError(failures)

    def _prune(self, sftp: paramiko.SFTPClient, folders: set[str]) -> None:
        """Remove folders the deletes (or renames) left empty, deepest first, never the root."""
        for folder in sorted(folders, key=len, reverse=True):
            while folder != self._root and folder.startswith(self._root.rstrip("/") + "/"):
                try:
                    sftp.rmdir(folder)
                except OSError:
                    break
                folder = posixpath.dirname(folder)

    def close(self) -> None:
        if self._orphans:
            # Last chance for the temporary files of writes whose connection
            # dropped: another thread may have reconnected before they were
            # known, and no call may come after this one to reconnect again.
            try:
                with self._sftp("removing temporary files") as lease:
                    self._remove_orphans(lease.sftp)
            except Exception as exc:  # noqa: BLE001 - closing must not fail; the next run removes them
                log.warning("could not remove %d temporary file(s) after a dropped connection: %s", len(self._orphans), exc)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and conn.pid == os.getpid():
            conn.close()


class _Taken(Exception):
    """A rename or a new file's name found its target taken."""

    def __init__(self, path: str, mode: int = 0):
        super().__init__(path)
        self.path = path
        self.is_folder = stat.S_ISDIR(mode)


def _taken(sftp: paramiko.SFTPClient, path: str) -> _Taken | None:
    """A :class:`_Taken` for ``path`` if something is there (never followed), else None."""
    try:
        return _Taken(path, sftp.lstat(path).st_mode or 0)
    except FileNotFoundError:
        return None


def _folder_taken(sftp: paramiko.SFTPClient, path: str) -> _Taken | None:
    """A :class:`_Taken` if a folder holds ``path``: what a failed move onto it
    ran into (servers say only "Failure"), and no retry can get past."""
    taken = _taken(sftp, path)
    return taken if taken is not None and taken.is_folder else None


def _read_path(lease: _Lease, path: str) -> Iterator[bytes]:
    with _piped(lease) as pipe:
        handle = sftp_pipe.open_file(pipe, path, SFTP_FLAG_READ)
        yield from sftp_pipe.read_file(pipe, handle, lease.limits)


def _status_error(exc: OSError | EOFError | paramiko.SSHException, what: str) -> BackendError:
    """A BackendError for an error status the server sent."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return NotFound(f"{what}: no such file or folder")
    if code == errno.EACCES:
        return FatalBackendError(f"{what}: permission denied")
    return BackendError(f"{what}: {exc}")


def _open_private(pipe: sftp_pipe.Pipe, path: str) -> bytes:
    """Create (or truncate) ``path`` for writing with mode 0600; return its handle.

    paramiko's ``open`` sends no attributes, so the server would create the
    file with its default mode (0644 on OpenSSH) and a half-written file could
    be read by others until the copy ends. The mode goes in the open request
    itself: no extra round trip, and no moment where the file is readable.
    Servers that keep their own modes (rclone serve sftp) ignore it.
    """
    attributes = paramiko.SFTPAttributes()
    attributes.st_mode = 0o600
    return sftp_pipe.open_file(pipe, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC, attributes)


def _set_final_attributes(sftp: paramiko.SFTPClient, path: str, mode: int, mtime: float | None) -> None:
    """Give a complete file its lasting mode and the source's mtime, in one request."""
    sftp._request(CMD_SETSTAT, path, _final_attributes(mode, mtime))


def _final_attributes(mode: int, mtime: float | None) -> paramiko.SFTPAttributes:
    attributes = paramiko.SFTPAttributes()
    attributes.st_mode = mode
    if mtime is not None:
        # Rounded up: SFTP keeps whole seconds, and a copy must never look
        # older than its source.
        attributes.st_atime = attributes.st_mtime = math.ceil(mtime)
    return attributes


def _unsupported(exc: OSError) -> bool:
    """Is this the server's answer to an extension it does not have?"""
    return exc.errno is None and "unsupported" in str(exc).lower()


def _realpath(sftp: paramiko.SFTPClient, path: str) -> str:
    """``path`` with its links resolved by the server (its realpath); the part
    that does not exist yet, and so holds no link, is kept as written."""
    folder, missing = path, []
    while folder not in ("/", ""):
        try:
            return posixpath.join(sftp.normalize(folder), *reversed(missing))
        except OSError:
            folder, tail = posixpath.split(folder)
            missing.append(tail)
    return path


def _makedirs(sftp: paramiko.SFTPClient, folder: str, root: str | None) -> None:
    """mkdir -p: create ``folder`` and any missing parents.

    Below ``root`` a symbolic link where a folder should be is refused, never
    followed; ``root`` itself and what lies above it are the user's own path.
    """
    missing = []
    inside = (root.rstrip("/") + "/") if root else None
    while folder not in ("", "/"):
        try:
            below_root = inside is not None and folder.startswith(inside)
            mode = (sftp.lstat(folder) if below_root else sftp.stat(folder)).st_mode
            if stat.S_ISDIR(mode):
                break
            if stat.S_ISLNK(mode):
                raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a symbolic link (links are never followed)")
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a folder")
        except FileNotFoundError:
            missing.append(folder)
            folder = posixpath.dirname(folder)
    for path in reversed(missing):
        try:
            sftp.mkdir(path)
        except OSError:
            # Another thread may have made it meanwhile; anything else shows on stat.
            if not stat.S_ISDIR(sftp.stat(path).st_mode):
                raise


def _folder_items(sftp: paramiko.SFTPClient, path: str) -> Iterator[paramiko.SFTPAttributes]:
    """A folder's entries batch by batch as the server sends them: paramiko's
    listdir_attr, without holding the whole folder (one may hold millions).
    A name that is not UTF-8 comes with its bytes escaped, as os.listdir
    gives it, for the plan to refuse by name: paramiko's decoding would fail
    the whole listing on it."""
    kind, msg = sftp._request(CMD_OPENDIR, path.encode("utf-8", "surrogateescape"))
    if kind != CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    handle = msg.get_binary()
    # READDIRs go two at a time: a small folder's end is known with its first
    # batch, a round trip sooner, and a large one's batches come without a
    # wait between them. Answers still owed when an error ends the listing
    # are read and dropped by paramiko while it waits for the CLOSE's.
    asked: collections.deque[int] = collections.deque()
    ended = False
    try:
        while not ended or asked:
            if not asked:
                asked.extend(sftp._async_request(type(None), CMD_READDIR, handle) for _ in range(READDIR_AHEAD))
            try:
                kind, msg = sftp._read_response(asked.popleft())
            except EOFError:
                # The folder's end, or a channel that died: paramiko says both
                # the same way. The CLOSE below is answered only in the first case.
                ended = True
                continue
            if kind != CMD_NAME:
                raise paramiko.SFTPError("Expected name response")
            for _ in range(msg.get_int()):
                filename = msg.get_string().decode("utf-8", "surrogateescape")
                longname = msg.get_string().decode("utf-8", "surrogateescape")
                attributes = paramiko.SFTPAttributes._from_msg(msg, filename, longname)
                if filename not in (".", ".."):
                    yield attributes
    except BaseException:
        # The channel may be broken: the error at hand is the one to report.
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            sftp._request(CMD_CLOSE, handle)
        raise
    # Not waited for: the folder's end is known, and the channel's next
    # taker reads the answer (see _settled).
    sftp._async_request(type(None), CMD_CLOSE, handle)


def _listed(prefix: str, folder: str, item: paramiko.SFTPAttributes) -> Entry | tuple[str, str] | None:
    """One item of a listing of ``folder``: an entry, a subfolder, or None (skipped)."""
    name, mode = prefix + item.filename, item.st_mode or 0
    if stat.S_ISLNK(mode):
        return Entry(name, 0, float(item.st_mtime or 0), link=True)
    if stat.S_ISDIR(mode):
        if "/" in item.filename or "\x00" in item.filename:
            log.warning("skipping folder with an unusable name %r", name)
            return None
        return name + "/", f"{folder}/{item.filename}"
    if stat.S_ISREG(mode):
        return Entry(name, item.st_size or 0, float(item.st_mtime or 0))
    log.warning("skipping %s: not a regular file", name)
    return None
