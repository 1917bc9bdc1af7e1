"""WebDAV servers: ``webdav://[user[:password]@]host[:port]/path`` (``webdavs://`` for TLS).

Option names and meanings follow Duplicati's WebDAV backend (``synctool help
webdav`` lists them). One HTTP client (httpx) per process, made in the
process that uses it, keeps its connections alive for every job; a client
never crosses a fork.

What is atomic, and what race remains:

* A write streams into a temporary name (``PUT``), is read back there when
  asked (``check``), then takes its name with ``MOVE``. A failed or rejected
  write leaves nothing under the final name.
* Nothing is replaced that the caller did not name: a new file moves in with
  ``Overwrite: F``, which the server refuses atomically (412) when the name
  is taken; so does every rename and the move of an old version to its
  retention name (``keep_old_as``).
* Replacing a file is ``MOVE`` with ``Overwrite: T``. On servers over a file
  system that is a rename (rclone); others remove the old file first (wsgidav),
  so the name is missing for a moment, never half-written. WebDAV lets such a
  move, and ``DELETE``, remove a whole folder: before either we look at what
  is there and refuse a folder. A folder made under that name between the
  look and the request is the race that remains.
* With ``keep_old_as`` the old file is moved away first: if the new one then
  fails to move in, the old version is kept under its retention name and the
  next run copies the file again.
* The source's mtime travels in the ``X-OC-Mtime`` header, which
  Nextcloud, ownCloud, rclone and wsgidav (with ``honor_mtime_header``) apply.
  A server that ignores it lists the upload time: a file is still not copied
  again while its source time is in the past, but one dated in the future is
  copied again at every run until that date (with --retention, keeping the
  previous copy each time), and a source file changed while it was copied
  may go unnoticed once.
* Folders emptied by deletes are left in place: WebDAV has no "remove only
  if empty", and removing a folder removes whatever it holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
import hashlib
import importlib.util
import logging
import math
import os
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from synctool.backends.walk import ordered_walk
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
    check_name,
)
from synctool.backends.optiontable import Option, table

if TYPE_CHECKING:
    import httpx

# httpx is imported by the process that first connects (a tenth of a second
# or more): a missing one is still an ImportError here, which the registry
# turns into its one-line "pip install" advice.
if importlib.util.find_spec("httpx") is None:
    raise ImportError("No module named 'httpx'", name="httpx")

log = logging.getLogger("synctool.backends.webdav")

PAD_CHUNK = 1 << 20
#: A write whose source fails with at most this much left to send completes
#: its upload with zeros (see _Body) rather than breaking the connection.
PAD_LIMIT = 8 << 20
LIST_THREADS = 8  # folders listed at once
DAV = "{DAV:}"
# Only what a listing needs: much less to send and parse than allprop.
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/></D:prop></D:propfind>"
)
# Duplicati's use-extended-propfind: some servers answer only this one.
PROPFIND_ALLPROP = b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
QUOTA_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:quota-available-bytes/></D:prop></D:propfind>"
)


# -- TLS ------------------------------------------------------------------------
class CertificateRefused(ssl.SSLCertVerificationError):
    """The server's certificate is not among the pinned ones."""


class _PinnedSocket(ssl.SSLSocket):
    """Checks the certificate against the pins right after the handshake,
    before a byte of the request (and its credentials) is sent."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        der = self.getpeercert(binary_form=True) or b""
        if not certificate_matches(der, self.context.pins):  # type: ignore[attr-defined]
            self.close()
            raise CertificateRefused(f"its certificate is not the one accept-specified-ssl-hash names: {describe_certificate(der)}")


class _PinnedContext(ssl.SSLContext):
    sslsocket_class = _PinnedSocket
    pins: frozenset[str] = frozenset()


def certificate_hashes(der: bytes) -> tuple[str, str]:
    """(SHA-1, SHA-256) of a certificate in hex capitals: Duplicati pins the SHA-1."""
    return hashlib.sha1(der).hexdigest().upper(), hashlib.sha256(der).hexdigest().upper()  # noqa: S324 - a name, not security


def describe_certificate(der: bytes) -> str:
    sha1, sha256 = certificate_hashes(der)
    return f"the server presents SHA-1 {sha1} (SHA-256 {sha256}); to trust it, set accept-specified-ssl-hash={sha1}"


def certificate_matches(der: bytes, pins: Iterable[str]) -> bool:
    return bool(der) and not set(certificate_hashes(der)).isdisjoint(pins)


def parse_pins(text: str | None) -> frozenset[str]:
    """Duplicati's list: hex hashes separated by ',' or ';' (':' between bytes is allowed)."""
    return frozenset(p.strip().replace(":", "").upper() for p in (text or "").replace(";", ",").split(",") if p.strip())


# -- settings ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything needed to connect, from the URL and the options."""

    tls: bool
    host: str
    port: int
    user: str | None
    password: str | None
    root: tuple[str, ...]  # the URL's path, decoded, segment by segment
    digest: bool
    accept_any: bool
    pins: frozenset[str]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def root_path(self) -> str:
        """The root as the server's decoded path: "/a/b", or "" for the server's top."""
        return "".join("/" + part for part in self.root)


def _root_segments(path: str) -> tuple[str, ...]:
    path = path.strip("/")
    if not path:
        return ()
    parts = tuple(path.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        # A server (or a proxy before it) would resolve them into another folder
        # than the one the URL, and the check against an overlapping source, names.
        raise FatalBackendError(f"the path {path!r} has an empty, '.' or '..' segment: write it without them")
    return parts


# -- the backend ---------------------------------------------------------------------
class WebDAVBackend(Backend):
    schemes = ("webdav", "webdavs")
    options = table(
        Option("auth-username", "text", None, "user name (instead of user@ in the URL)"),
        Option("auth-password", "text", None, "password (instead of user:password@ in the URL)", secret=True),
        Option("use-ssl", "bool", False, "connect with https (webdavs:// implies it)"),
        Option("accept-any-ssl-certificate", "bool", False, "do not check the server's certificate (unsafe)"),
        Option("accept-specified-ssl-hash", "text", None,
               "trust only the certificate(s) with these SHA-1 (or SHA-256) hashes in hex, separated by ',' or ';'"),
        Option("ignore-revocation-failure", "bool", False,
               "no effect: certificate revocation is not checked (no CRL or OCSP lookups)"),
        Option("force-digest-authentication", "bool", False,
               "log in with HTTP Digest only, never sending the password itself"),
        Option("integrated-authentication", "bool", False,
               "Windows integrated authentication: not available here; setting it is refused"),
        Option("use-extended-propfind", "bool", False, "list with an allprop PROPFIND (some servers need it)"),
        Option("use-legacy-parsing", "bool", False,
               "no effect: listed names are always taken relative to the folder asked for, whatever form the "
               "server's href has"),
        Option("debug-propfind-file", "text", None, "write every PROPFIND answer of a listing to this file"),
        Option("short-timeout", "duration", 30.0, "longest wait to connect, and for a short request (move, delete)"),
        Option("list-timeout", "duration", 600.0, "longest wait for the answer to one folder's listing"),
        Option("read-write-timeout", "duration", 30.0, "longest pause while file content is sent or received"),
    )  # fmt: skip
    # Jobs one process runs at once. Small files are bound by the client's
    # CPU (HTTP in Python): against rclone serve webdav, 600 files of 4 KiB
    # went as fast with 4 threads as with 8, and slower with 16.
    concurrency = 4
    mtime_precision = 1.0  # getlastmodified carries whole seconds
    max_segment_bytes = 255  # NAME_MAX of the file systems behind common servers

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        self.settings = self._settings()
        self._lock = threading.Lock()
        self._client_obj: httpx.Client | None = None
        self._pid = -1
        self._folders: set[str] = {""}  # folders known to exist, in this process
        # Temporary files a lost connection kept us from removing.
        self._orphans: set[str] = set()
        self._debug_file: Any = None
        # Whether the server reads '?', '#' and ';' in a Destination header
        # right; None until a name needs it (see _check_destination).
        self._destination_ok: bool | None = None

    def _settings(self) -> Settings:
        loc, v = self.location, self.values
        if not loc.host:
            raise FatalBackendError(f"a {loc.scheme}:// URL needs a host: {loc.scheme}://host[:port]/path")
        if v["integrated-authentication"]:
            raise FatalBackendError(
                "integrated-authentication (Windows NTLM/Kerberos) is not available: log in with "
                "auth-username and auth-password"
            )
        # As Duplicati: the URL's user wins, with its password or else the option's.
        if loc.user:
            user, password = loc.user, loc.password or v["auth-password"]
        else:
            user, password = v["auth-username"] or None, v["auth-password"] if v["auth-username"] else None
        if v["force-digest-authentication"] and not user:
            raise FatalBackendError("force-digest-authentication needs a user name: give auth-username")
        tls = loc.scheme == "webdavs" or v["use-ssl"]
        return Settings(
            tls=tls,
            host=loc.host,
            port=loc.port or (443 if tls else 80),
            user=user,
            password=password,
            root=_root_segments(loc.path),
            digest=v["force-digest-authentication"],
            accept_any=v["accept-any-ssl-certificate"],
            pins=parse_pins(v["accept-specified-ssl-hash"]),
        )

    # -- where things are -----------------------------------------------------------
    def display_url(self) -> str:
        s = self.settings
        user = f"{quote(s.user, safe='')}@" if s.user else ""
        return f"{self.location.scheme}://{user}{s.address}{quote(s.root_path) or '/'}"

    def root_place(self) -> Place:
        s = self.settings
        return Place(("webdav", s.host.lower(), s.port), "/".join(s.root), self.display_url())

    def details(self) -> dict[str, str]:
        s = self.settings
        tls = "no"
        if s.tls:
            tls = "yes, any certificate" if s.accept_any else ("yes, pinned certificate" if s.pins else "yes")
        return {"scheme": self.location.scheme, "url": s.origin + (quote(s.root_path) or "/"),
                "user": s.user or "(none)", "tls": tls,
                "authentication": "digest" if s.digest else ("basic" if s.user else "none")}  # fmt: skip

    def _url(self, name: str, folder: bool = False) -> str:
        """The URL of ``name`` (relative to the root, "" for the root itself), encoded."""
        parts = [*self.settings.root, *(name.split("/") if name else ())]
        path = "".join("/" + quote(p, safe="") for p in parts)
        return self.settings.origin + (path + "/" if folder else path or "/")

    def _file_url(self, name: str) -> str:
        return self._url(check_name(name))

    # -- the client of this process ------------------------------------------------
    @property
    def _client(self) -> httpx.Client:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    if self._client_obj is not None:
                        # A parent's client copied by fork: its connections
                        # belong to the parent. Kept, never closed, never used.
                        _INHERITED.append(self._client_obj)
                    self._client_obj = self._new_client()
                    self._folders = {""}
                    self._destination_ok = None
                    self._pid = os.getpid()
        assert self._client_obj is not None
        return self._client_obj

    def _new_client(self) -> httpx.Client:
        import httpx

        s, v = self.settings, self.values
        auth: httpx.Auth | None = None
        if s.user:
            auth = (_digest_auth_class() if s.digest else httpx.BasicAuth)(s.user, s.password or "")
        transport = httpx.HTTPTransport(
            # A context of our own: httpx's default loads certifi's bundle,
            # a tenth of a second of CPU in every process, even for http.
            verify=self._tls_context() if s.tls else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.concurrency + LIST_THREADS),
            # A request's headers and its body go out in separate sends: with
            # Nagle's algorithm a small body would wait for the server to
            # acknowledge the headers, which it may delay by 40 ms.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        client = httpx.Client(
            auth=auth,
            transport=transport,
            timeout=httpx.Timeout(v["short-timeout"], read=v["read-write-timeout"], write=v["read-write-timeout"], pool=None),
            follow_redirects=False,
            # No compression: the content is passed on as it is, and CPU is the limit.
            headers={"Accept-Encoding": "identity", "User-Agent": "synctool"},
            trust_env=False,  # no proxy or .netrc of the environment sees the credentials
        )
        if s.digest:
            # A Digest challenge needs one round trip without a body: a
            # streamed PUT could not be sent a second time.
            self._send(client, "OPTIONS", self._url("", folder=True), "logging in", ok=(200, 204, 207, 404, 405))
        return client

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        if not (s.accept_any or s.pins):
            return ssl.create_default_context()
        if s.accept_any:
            log.warning("not checking the certificate of %s (accept-any-ssl-certificate)", s.address)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        else:
            context = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
            context.pins = s.pins
        # The pins decide (or nothing does): neither the chain nor the host name is checked.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def close(self) -> None:
        if self._pid != os.getpid() or self._client_obj is None:
            return
        if self._orphans:
            self._remove_orphans()
        with contextlib.suppress(Exception):
            self._client_obj.close()
        self._client_obj, self._pid = None, -1

    # -- requests ----------------------------------------------------------------
    def _send(self, client: httpx.Client, method: str, url: str, what: str, *,
              ok: Sequence[int] = (200, 201, 204), **kwargs: Any) -> httpx.Response:  # fmt: skip
        """One request whose answer is read whole; a status outside ``ok`` raises."""
        response = self._transport(lambda: client.request(method, url, **kwargs), what)
        if response.status_code not in ok:
            raise self._status_error(response, what)
        return response

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        return self._send(self._client, method, url, what, **kwargs)

    def _transport(self, call: Callable[[], Any], what: str) -> Any:
        """Run ``call``; a network failure becomes a retryable BackendError naming ``what``."""
        import httpx

        try:
            return call()
        except _SourceFailed as failed:
            raise failed.error from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise self._network_error(exc, what) from None

    def _network_error(self, exc: Exception, what: str) -> BackendError:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return BackendError(f"{what}: {self.settings.address} did not answer in time ({type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError):
            return self._connect_error(exc, what)
        return BackendError(f"{what}: connection to {self.settings.address} lost ({exc or type(exc).__name__})")

    def _connect_error(self, exc: Exception, what: str) -> BackendError:
        address = self.settings.address
        cause = _cause(exc, ssl.SSLError)
        if isinstance(cause, CertificateRefused):
            return FatalBackendError(f"{what}: refusing {address}: {cause.args[0]}")
        if isinstance(cause, ssl.SSLCertVerificationError):
            der = _fetch_certificate(self.settings)
            shown = f": {describe_certificate(der)}" if der else ""
            return FatalBackendError(f"{what}: the certificate of {address} is not trusted ({cause.verify_message}){shown}")
        if isinstance(cause, ssl.SSLError):
            return FatalBackendError(f"{what}: TLS with {address} failed ({cause.reason or cause}): is it a https server?")
        if isinstance(_cause(exc, ConnectionRefusedError), ConnectionRefusedError):
            return BackendError(f"{what}: connection refused by {address} (is a WebDAV server listening there?)")
        return BackendError(f"{what}: cannot connect to {address} ({exc})")

    def _status_error(self, response: httpx.Response, what: str) -> BackendError:
        code = response.status_code
        reason = f"{code} {response.reason_phrase}".strip()
        if code == 401:
            who = f"as {self.settings.user}" if self.settings.user else "without a user name"
            return FatalBackendError(
                f"{what}: {self.settings.address} refused the login {who} ({reason}): check the user name "
                "and auth-password" + (" (force-digest-authentication is set)" if self.settings.digest else "")
            )
        if code == 403:
            return FatalBackendError(f"{what}: permission denied ({reason})")
        if code == 404:
            return NotFound(f"{what}: no such file or folder ({reason})")
        if code == 507:
            return FatalBackendError(f"{what}: no space left on the server ({reason})")
        if code in (301, 302, 303, 307, 308):
            return FatalBackendError(f"{what}: the server sends us to {response.headers.get('location')!r}: use that URL")
        if code in (405, 501) and what.startswith("listing"):
            return FatalBackendError(f"{what}: the server does not speak WebDAV here ({reason})")
        if code >= 500 or code in (408, 423, 429):
            return BackendError(f"{what}: the server answered {reason}")
        return FatalBackendError(f"{what}: the server answered {reason}")

    # -- Backend --------------------------------------------------------------------
    def prepare(self, create: bool) -> None:
        try:
            kind = self._kind("")
        except FatalBackendError:
            raise
        except BackendError as exc:
            raise FatalBackendError(str(exc)) from exc
        if kind == "file":
            raise FatalBackendError(f"{self.display_url()} is a file, not a folder")
        if kind is None:
            if not create:
                raise NotFound(f"folder {self.settings.root_path or '/'} does not exist on {self.settings.address}")
            self._make_folders(self.settings.root, top=True)

    def _kind(self, name: str) -> str | None:
        """"folder", "file" or None (nothing there), by a Depth 0 PROPFIND."""
        what = f"looking at {name or self.display_url()}"
        response = self._request("PROPFIND", self._url(name, folder=not name), what, ok=(207, 404), headers={"Depth": "0"},
                                 content=PROPFIND_BODY, timeout=self._short())  # fmt: skip
        if response.status_code == 404:
            return None
        for element in _responses(iter([response.content])):
            props = _props(element)
            if props is not None:
                return "folder" if props.find(f"{DAV}resourcetype/{DAV}collection") is not None else "file"
        return None

    def _short(self) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(self.values["short-timeout"])

    def _make_folders(self, parts: Sequence[str], top: bool = False) -> None:
        """MKCOL each missing folder down to ``parts`` (the root's own segments
        with ``top``, else a folder's below the root)."""
        for depth in range(1, len(parts) + 1):
            if top:
                url = self.settings.origin + "".join("/" + quote(p, safe="") for p in parts[:depth]) + "/"
            else:
                url = self._url("/".join(parts[:depth]), folder=True)
            name = "/".join(parts[:depth])
            if top:
                self._request("MKCOL", url, f"creating folder {name}", ok=(200, 201, 204, 405), timeout=self._short())
            else:
                self._mkcol(url, name, ok=(200, 201, 204, 405))
                self._folders.add(name)

    def _ensure_folder(self, folder: str) -> None:
        """Make sure ``folder`` (below the root) exists, once per process.

        Done before a PUT: a streamed body cannot be sent again after a 409.
        MKCOL answers 405 for a folder that exists, so a known folder costs
        nothing and a new one a single request; its parents are made only
        when the server says they are missing (409).
        """
        if folder in self._folders:
            return
        if self._mkcol(self._url(folder, folder=True), folder, ok=(200, 201, 204, 405, 409)) == 409:
            self._make_folders(folder.split("/"))
        self._folders.add(folder)

    def _mkcol(self, url: str, folder: str, ok: tuple[int, ...]) -> int:
        """MKCOL ``folder``; its answer's status, 405 (it exists) for a folder
        that another request made meanwhile: several threads may make one
        folder at once, and wsgidav answers the one that lost the race 500."""
        try:
            return self._request("MKCOL", url, f"creating folder {folder}", ok=ok, timeout=self._short()).status_code
        except BackendError:
            if self._kind(folder) != "folder":
                raise
            return 405

    def list(self, start_after: str | None = None) -> Iterator[Entry]:
        self._client  # noqa: B018 - opened here, not by the threads below
        path = self.values["debug-propfind-file"]
        self._debug_file = open(path, "wb") if path else None  # noqa: SIM115 - closed below
        try:
            # One round trip per folder: several are listed ahead of the walk
            # (Depth: infinity is refused by many servers, and would hold the
            # whole tree at once).
            def scan(prefix: str, folder: str) -> list[Entry | tuple[str, str]]:
                files, folders = self._scan(folder)
                return [*files, *((sub + "/", sub) for sub in folders)]

            yield from ordered_walk(scan, "", LIST_THREADS, start_after)
        finally:
            if self._debug_file is not None:
                self._debug_file.close()
                self._debug_file = None

    def _scan(self, folder: str) -> tuple[list[Entry], list[str]]:
        """One folder (Depth: 1): its files, and its subfolders' names."""
        import httpx

        what = f"listing {folder or self.display_url()}"
        body = PROPFIND_ALLPROP if self.values["use-extended-propfind"] else PROPFIND_BODY
        timeout = httpx.Timeout(self.values["short-timeout"], read=self.values["list-timeout"])
        files: list[Entry] = []
        folders: list[str] = []

        def run() -> None:
            with self._client.stream("PROPFIND", self._url(folder, folder=True), headers={"Depth": "1"},
                                     content=body, timeout=timeout) as response:  # fmt: skip
                if response.status_code == 404:
                    if not folder:
                        raise NotFound(f"folder {self.settings.root_path or '/'} does not exist on {self.settings.address}")
                    raise BackendError(f"folder {folder} vanished while it was being listed")
                if response.status_code not in (200, 207):
                    response.read()
                    raise self._status_error(response, what)
                answer: list[bytes] | None = [] if self._debug_file is not None else None
                for element in _responses(_kept(response.iter_bytes(), answer)):
                    self._entry(element, folder, files, folders)
                if answer is not None:
                    with self._lock:  # one folder's answer whole, never mixed with another's
                        self._debug_file.write(b"".join(answer) + b"\n")

        self._transport(run, what)
        return files, folders

    def _entry(self, element: ET.Element, folder: str, files: list[Entry], folders: list[str]) -> None:
        """Sort one <response> of a listing of ``folder`` into ``files`` or ``folders``."""
        href = element.findtext(f"{DAV}href")
        props = _props(element)
        if href is None or props is None:
            return
        # Names are compared decoded: servers encode hrefs their own way.
        path = unquote(urlsplit(href.strip()).path, errors="surrogateescape")
        base = self.settings.root_path + ("/" + folder if folder else "")
        is_folder = props.find(f"{DAV}resourcetype/{DAV}collection") is not None
        trimmed = path[:-1] if is_folder and path.endswith("/") and len(path) > 1 else path
        if trimmed == base or (trimmed == "/" and not base):
            return  # the folder itself
        if trimmed.startswith(base + "/"):
            rest = trimmed[len(base) + 1 :]
            name = f"{folder}/{rest}" if folder else rest
        else:
            # Not below the folder asked for: passed on as it is (absolute),
            # for the plan to refuse by name.
            name = trimmed
        if is_folder:
            if rest_is_one_safe_segment(name, folder):
                folders.append(name)
            else:
                log.warning("skipping folder with an unusable name %r", name)
            return
        size = _int(props.findtext(f"{DAV}getcontentlength"))
        if size is None:
            log.warning("%s: the server lists no size; taken as 0", name)
        files.append(Entry(name, size or 0, _http_date(props.findtext(f"{DAV}getlastmodified"))))

    def read(self, name: str) -> Iterator[bytes]:
        return self._read_url(self._file_url(name), f"reading {name}")

    def _read_url(self, url: str, what: str) -> Iterator[bytes]:
        import httpx

        client = self._client
        try:
            with client.stream("GET", url) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._status_error(response, what)
                # As they arrive (64 KiB each): gathering them into larger
                # chunks first cost as much CPU again as the reading itself.
                yield from response.iter_raw()
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise self._network_error(exc, what) from None

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
        final = self._file_url(name)
        keep = self._file_url(keep_old_as) if keep_old_as is not None else None
        folder = name.rpartition("/")[0]
        self._remove_orphans()
        self._ensure_folder(folder)
        for target in (name, keep_old_as):
            self._check_destination(target, folder)
        temp = self.temp_name(folder)
        temp_url = self._url(temp)
        self._put(temp_url, chunks, size, mtime, f"writing {name}")
        try:
            if check is not None:
                with contextlib.closing(self._read_url(temp_url, f"reading back {name}")) as stored:
                    check(stored)
            if keep is not None:
                assert keep_old_as is not None
                self._keep_old(name, keep_old_as, keep)
            elif overwrite:
                self._refuse_folder(name)
            # After keep_old_as moved the old file away, nothing should be
            # there: whatever is, another writer put it, and it stays.
            self._move(temp_url, final, overwrite and keep is None, f"moving {name} into place")
        except _Taken:
            self._remove(temp_url, temp)
            self._refuse_folder(name)  # what is in the way may be a folder (one that was emptied, say)
            raise AlreadyExists(f"{name} exists already: it appeared at the destination during the run, and was not replaced", name) from None
        except _NoFolder as missing:
            self._remove(temp_url, temp)
            raise missing.error from None
        except BaseException:
            self._remove(temp_url, temp)
            raise

    def _put(self, url: str, chunks: Iterable[bytes], size: int, mtime: float | None, what: str) -> None:
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        if mtime is not None and mtime >= 0:
            # Whole seconds only (wsgidav refuses a fraction, rclone ignores
            # it), rounded up: a copy must never look older than its source.
            headers["X-OC-Mtime"] = str(math.ceil(mtime))
        body = _Body(chunks, size)
        try:
            self._request("PUT", url, what, content=body, headers=headers)
        except BaseException:
            # The upload broke off. Whatever the server kept of it goes now;
            # a server still taking it in may write it after this, so the URL
            # stays noted, and is removed again before the next write and
            # when the backend closes.
            self._remove(url, None)
            self._orphans.add(url)
            raise
        if body.failed is not None:
            self._remove(url, None)  # complete, so the server is done with it
            raise body.failed

    def _check_destination(self, name: str | None, folder: str) -> None:
        """Refuse to move a file to ``name`` where the server would take it elsewhere.

        A MOVE names its target in the Destination header. Some servers
        (wsgidav) decode that header before taking it apart, so a '?', '#'
        or ';' in a name cuts it short: "a?b" lands on "a", replacing it. Once
        per process, before the first such name, a probe in ``folder`` shows
        whether this server is one of them; if so such names are refused.
        """
        if name is None or not any(c in self.settings.root_path + "/" + name for c in "?#;"):
            return
        if self._destination_ok is None:
            self._destination_ok = self._probe_destination(folder)
        if not self._destination_ok:
            raise FatalBackendError(
                f"{name}: this server misreads a '?', '#' or ';' in the target of a move (it would put "
                "the file under another name), so no file of such a name is written or renamed there"
            )

    def _probe_destination(self, folder: str) -> bool:
        """Move an empty temporary file to a name with '?', '#' and ';': is it there?"""
        probe, target = self.temp_name(folder), self.temp_name(folder)
        odd = target + "?#;"
        try:
            self._request("PUT", self._url(probe), "probing the server", content=b"", timeout=self._short())
            self._move(self._url(probe), self._url(odd), False, "probing the server")
            return self._kind(odd) == "file"
        except (_Taken, _NoFolder, NotFound):
            return False
        finally:
            # Where a misreading server put it: a temporary name all the same.
            for leftover in (probe, odd, target):
                self._remove(self._url(leftover), leftover)

    def _keep_old(self, name: str, keep_old_as: str, keep: str) -> None:
        """Move the old version of ``name`` to ``keep_old_as``, never over anything."""
        keep_folder = keep_old_as.rpartition("/")[0]
        if keep_folder != name.rpartition("/")[0]:
            self._ensure_folder(keep_folder)
        try:
            self._move(self._file_url(name), keep, False, f"keeping the old version of {name}")
        except NotFound:
            pass  # no old version: it was deleted since the listing
        except _Taken:
            raise AlreadyExists(f"{keep_old_as} exists already: the old version was not moved there", keep_old_as) from None

    def _refuse_folder(self, name: str) -> None:
        """Refuse to replace a folder: MOVE with Overwrite: T would remove all it holds."""
        if self._kind(name) == "folder":
            raise FatalBackendError(f"writing {name} failed: a folder of that name is in the way")

    def _move(self, src: str, dst: str, overwrite: bool, what: str) -> None:
        response = self._request("MOVE", src, what, ok=(201, 204, 404, 409, 412, 403), timeout=self._short(),
                                 headers={"Destination": dst, "Overwrite": "T" if overwrite else "F"})  # fmt: skip
        code = response.status_code
        if code == 412:
            raise _Taken()
        if code == 404:
            raise NotFound(f"{what}: no such file")
        if code in (403, 409):
            # The target's folder is missing (409; rclone answers 403), or
            # permission is denied: the caller makes the folder and tries again.
            raise _NoFolder(self._status_error(response, what))

    def _remove(self, url: str, name: str | None) -> None:
        """Remove a temporary file, quietly: what cannot go now goes later."""
        try:
            self._request("DELETE", url, f"removing {name or url}", ok=(200, 204, 404), timeout=self._short())
            self._orphans.discard(url)
        except Exception:  # noqa: BLE001 - the server is gone: removed before the next write
            self._orphans.add(url)

    def _remove_orphans(self) -> None:
        for url in list(self._orphans):
            self._remove(url, None)

    def rename(self, old: str, new: str) -> None:
        src, dst = self._file_url(old), self._file_url(new)
        what = f"renaming {old} to {new}"
        self._check_destination(new, old.rpartition("/")[0])
        try:
            try:
                self._move(src, dst, False, what)
            except _NoFolder:
                self._ensure_folder(new.rpartition("/")[0])
                self._move(src, dst, False, what)
        except _NoFolder as missing:
            raise missing.error from None
        except _Taken:
            raise AlreadyExists(f"{new} exists already: {old} was not renamed over it", new) from None

    def delete(self, names: Sequence[str]) -> None:
        failures: dict[str, str] = {}
        for name in names:
            try:
                url = self._file_url(name)
                if self._kind(name) == "folder":
                    # DELETE removes a folder with everything in it.
                    failures[name] = "a folder of that name is in the way: not removed"
                    continue
                # Depth: 0 makes careful servers refuse a folder that appeared since.
                self._request("DELETE", url, f"deleting {name}", ok=(200, 204, 404),
                              headers={"Depth": "0"}, timeout=self._short())  # fmt: skip
            except BackendError as exc:
                if exc.retryable:
                    raise
                failures[name] = str(exc)
        if failures:
            raise DeleteError(failures)

    def free_bytes(self) -> int | None:
        """RFC 4331's quota-available-bytes of the root, where the server gives it."""
        try:
            response = self._request("PROPFIND", self._url("", folder=True), "asking for free space", ok=(207,),
                                     headers={"Depth": "0"}, content=QUOTA_BODY, timeout=self._short())  # fmt: skip
        except BackendError:
            return None
        for element in _responses(iter([response.content])):
            props = _props(element)
            if props is not None:
                return _int(props.findtext(f"{DAV}quota-available-bytes"))
        return None


# -- helpers ---------------------------------------------------------------------------
#: Clients a forked child inherited: never closed or freed there.
_INHERITED: list[object] = []


class _Taken(Exception):
    """A MOVE with Overwrite: F found its target taken (412)."""


class _NoFolder(Exception):
    """A MOVE found the target's folder missing."""

    def __init__(self, error: BackendError):
        super().__init__(str(error))
        self.error = error


class _SourceFailed(Exception):
    """The caller's chunk iterator raised: re-raised as itself, never translated.

    The error rides along as an attribute: httpcore re-raises what a body
    raised ``from None``, which drops the chain of causes.
    """

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Body:
    """A PUT's body: the caller's chunks, and what to do when they fail.

    Breaking off a request leaves the server to notice in its own time, and
    some (rclone) then keep what they had received after we removed it. So
    when the source fails with little left to send, the rest is sent as
    zeros: the server completes the upload, and removing it afterwards is
    final. ``failed`` is then the source's error, raised once it is removed.
    """

    def __init__(self, chunks: Iterable[bytes], size: int):
        self.chunks, self.size = chunks, size
        self.failed: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in self.chunks:
                sent += len(chunk)
                yield chunk
        except GeneratorExit:
            raise  # the client stopped sending: the connection broke
        except BaseException as exc:
            left = self.size - sent
            if not 0 <= left <= PAD_LIMIT:
                raise _SourceFailed(exc) from exc
            self.failed = exc
            for start in range(0, left, PAD_CHUNK):
                yield _ZEROS[: min(PAD_CHUNK, left - start)]


_ZEROS = bytes(PAD_CHUNK)


@functools.cache
def _digest_auth_class() -> type:
    import httpx

    class LockedDigestAuth(httpx.DigestAuth):
        """httpx's DigestAuth counts its nonces unguarded; every job of a
        process shares one client, and a server may refuse a count twice."""

        def __init__(self, username: str, password: str):
            super().__init__(username, password)
            self._count_lock = threading.Lock()

        def _build_auth_header(self, request, challenge):  # type: ignore[no-untyped-def]
            with self._count_lock:
                return super()._build_auth_header(request, challenge)

    return LockedDigestAuth


def _cause(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fetch_certificate(s: Settings) -> bytes | None:
    """The server's certificate, fetched unchecked only to show its hashes in a refusal."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((s.host, s.port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname=s.host) as tls:
                return tls.getpeercert(binary_form=True)
    except OSError:
        return None


def _kept(chunks: Iterable[bytes], into: list[bytes] | None) -> Iterator[bytes]:
    """``chunks`` passed on, each also appended to ``into`` (unless None)."""
    for chunk in chunks:
        if into is not None:
            into.append(chunk)
        yield chunk


def _responses(chunks: Iterable[bytes]) -> Iterator[ET.Element]:
    """Each <D:response> of a multistatus body, parsed as it streams in."""
    parser = ET.XMLPullParser(events=("start", "end"))
    root = None
    for chunk in chunks:
        parser.feed(chunk)
        for event, element in parser.read_events():
            if event == "start":
                if root is None:
                    root = element
            elif element.tag == f"{DAV}response":
                yield element
                root.clear()  # type: ignore[union-attr] - keeps memory flat in huge folders
    parser.close()


def _props(element: ET.Element) -> ET.Element | None:
    """The properties a <response> reports with status 200, merged; None if none."""
    merged = None
    for propstat in element.findall(f"{DAV}propstat"):
        status = (propstat.findtext(f"{DAV}status") or "").split()
        prop = propstat.find(f"{DAV}prop")
        if prop is None or len(status) < 2 or not status[1].startswith("2"):
            continue
        if merged is None:
            merged = prop
        else:
            merged.extend(list(prop))
    return merged


def rest_is_one_safe_segment(name: str, folder: str) -> bool:
    """Whether a listed subfolder ``name`` is one usable segment below ``folder``."""
    prefix = folder + "/" if folder else ""
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix) :]
    return rest not in ("", ".", "..") and "/" not in rest and "\x00" not in rest


def _int(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def _http_date(text: str | None) -> float:
    """getlastmodified (an HTTP date; some servers send ISO 8601) as seconds; 0 when unreadable."""
    if not text:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(text.strip()).timestamp()
    except (TypeError, ValueError):
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        log.debug("unreadable getlastmodified %r", text)
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
