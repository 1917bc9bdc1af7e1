"""S3 over plain keep-alive HTTP, signed here: probes, listings, streamed GETs and PUTs.

Why: the coordinator asks an S3 side a few small things before the first
copy (is the bucket there, are there journals, the listing's pages). Across
a network each is a round trip the whole run waits for, and a fresh
connection costs one more. awscrt's client (synctool/backends/s3_native.py)
dials anew for each client, takes about a tenth of a second to load, and
runs event-loop threads that a later fork must wait out. Here a request is
signed with AWS Signature Version 4 (a few HMACs of the standard library)
and sent over a connection kept alive between requests, so the probe, the
journal lookup and the listing share one. A worker's streamed PUTs (a file
whose BLAKE3 is known before its bytes) and its reads of large objects go
the same way, so a worker that copies a local disk to S3 never loads awscrt,
and one that reads large objects never loads boto3.

It also holds what this module and s3_native share: where a bucket is
addressed, S3's error answers, and listing pages parsed with ElementTree.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import importlib.util
import io as _pyio
import re
import select
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from http import client as http_client
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

#: Whether awscrt can be imported, without importing it (that takes a while).
CRT_AVAILABLE = importlib.util.find_spec("awscrt") is not None
#: Largest object read whole into memory by one ranged GET. Per process the
#: most held at once is (jobs in flight) x SMALL_GET: 32 MiB at 32 jobs.
SMALL_GET = 1 << 20
#: Largest answer to a listing request held in memory (a page of 1,000 keys
#: is about 250 KB).
LIST_ANSWER_LIMIT = 16 << 20
#: Seconds to wait for a connection, and then for each answer.
CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 60.0
#: Bytes handed to the socket at once by a streamed PUT.
STREAM_BLOCK = 1 << 20
#: Tries of one request: a connection the server dropped while idle, or an
#: answer of 500-504, is tried again, as awscrt and botocore do.
ATTEMPTS = 3
RETRY_STATUSES = frozenset({500, 502, 503, 504})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

Credentials = Callable[[], tuple[str, str, str | None]] | tuple[str, str, str | None]


class NativeError(Exception):
    """A failed S3 request, reduced to what the backend maps errors from.

    ``status`` is the HTTP status (0 when no answer came: refused, reset,
    timed out); ``code`` is S3's error code from the XML body, or the name
    of the failure when there was no answer.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}" if message else code)
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass(frozen=True)
class Address:
    """Where a bucket's requests go: the Host header, and the path before a key."""

    host: str
    path_prefix: str
    server_name: str  # the name TLS checks the certificate against
    tls: bool

    @classmethod
    def of(cls, endpoint_url: str, bucket: str, path_style: bool) -> Address:
        parts = urlsplit(endpoint_url)
        base_path = parts.path.rstrip("/")
        netloc = parts.netloc.rpartition("@")[2]
        server_name = parts.hostname or ""
        if path_style:
            return cls(netloc, f"{base_path}/{quote(bucket, safe='')}/", server_name, parts.scheme == "https")
        return cls(f"{bucket}.{netloc}", f"{base_path}/", f"{bucket}.{server_name}", parts.scheme == "https")

    def path(self, key: str) -> str:
        # SigV4 signs the path as sent: RFC 3986 encoding, '/' kept.
        return self.path_prefix + quote(key, safe="/~")


class Signer:
    """AWS Signature Version 4 for S3. A streamed body is not hashed
    (UNSIGNED-PAYLOAD, as awscrt and botocore send S3 bodies over TLS)."""

    def __init__(self, region: str, credentials: Credentials):
        self.region = region
        self.credentials = credentials

    def headers(
        self,
        method: str,
        host: str,
        path: str,
        query: str = "",
        headers: dict[str, str] | None = None,
        payload: str = EMPTY_SHA256,
        now: float | None = None,
    ) -> list[tuple[str, str]]:
        """``headers`` and those that authorise ``method host path?query``
        with them, Host excepted; ``query`` as sent: encoded, sorted by name."""
        key, secret, token = self.credentials() if callable(self.credentials) else self.credentials
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        signed = {k.lower(): " ".join(str(v).split()) for k, v in (headers or {}).items()}
        signed.update({"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp})
        if token:
            signed["x-amz-security-token"] = token
        names = ";".join(sorted(signed))
        canonical = "\n".join(
            [method, path, query, *(f"{n}:{signed[n]}" for n in sorted(signed)), "", names, payload]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signing_key = ("AWS4" + secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        authorization = f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={names}, Signature={signature}"
        return [*((n, v) for n, v in signed.items() if n != "host"), ("Authorization", authorization)]


class S3Http:
    """HeadBucket, ListObjectsV2, and streamed GetObject and PutObject for one
    bucket, over kept-alive connections.

    Safe to use from several threads (the listing asks for key ranges in
    parallel, a worker's jobs write in parallel): each request takes an idle
    connection or dials a new one, and gives it back once its answer is
    read. No thread of its own, so the coordinator may fork its workers with
    this open.
    """

    def __init__(self, *, endpoint_url: str, region: str, bucket: str, path_style: bool, credentials: Credentials, **_):
        self.address = Address.of(endpoint_url, bucket, path_style)
        self.signer = Signer(region, credentials)
        self._idle: list[http_client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context() if self.address.tls else None

    def head_bucket(self) -> None:
        """Returns when the bucket is there and may be listed, else NativeError (404: missing)."""
        self._send("HEAD", self.address.path_prefix, {}, 0)

    def list_page(
        self,
        prefix: str,
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str | None = None,
        delimited: bool = False,
    ) -> tuple[list[dict], str | None, list[str]]:
        """One ListObjectsV2 page: (objects as boto3 gives them, the next
        page's token or None, the common prefixes when ``delimited`` by '/').

        Each object is ``{"Key", "Size", "LastModified"}``, the last a UTC
        datetime. Keys travel URL-encoded (``encoding-type=url``, as boto3
        asks), since XML cannot carry every character a key may hold.
        """
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys), "encoding-type": "url"}
        if token:
            query["continuation-token"] = token
        if start_after:
            query["start-after"] = start_after
        if delimited:
            query["delimiter"] = "/"
        return parse_listing(self._send("GET", self.address.path_prefix, query, LIST_ANSWER_LIMIT))

    def put_stream(self, key: str, body, size: int, headers: dict[str, str]) -> None:
        """Store the ``size`` bytes that ``body.read`` gives under ``key`` in
        one PutObject, each block sent as it is read.

        awscrt's client would read the whole body into memory first (to
        retry it). Whatever ``body.read`` raises ends the request short of
        its Content-Length, and S3 then stores nothing; for the same reason
        a failure is never retried here (the body cannot be read again).
        """
        path = self.address.path(key)
        conn = None
        try:
            try:
                conn = self._connection()
                self._start(conn, "PUT", path, "", {"Content-Length": str(size), **headers}, "UNSIGNED-PAYLOAD")
            except OSError as exc:
                raise NativeError(0, type(exc).__name__, f"cannot send to {self.address.host}: {exc}") from exc
            while block := body.read(STREAM_BLOCK):  # what the source raises passes as it is
                try:
                    conn.send(block)
                except OSError as exc:
                    # A server that refuses a request may answer before its
                    # body is all sent, and close: its answer says more.
                    answer = _answer(conn)
                    if answer is None:
                        raise NativeError(0, type(exc).__name__, f"sending to {self.address.host}: {exc}") from exc
                    break
            else:
                answer = _answer(conn)
            if answer is None:
                raise NativeError(0, "ConnectionClosed", f"{self.address.host} closed the connection without an answer")
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        status, data, will_close = answer
        if will_close:
            conn.close()
        else:
            self._give_back(conn)
        if status >= 300:
            raise refusal(status, data)

    def get_stream(self, key: str, chunk: int) -> Iterator[bytes]:
        """GetObject: the body in chunks of up to ``chunk`` bytes, as it arrives.

        The request is tried again like the others until its answer starts;
        after that a failure, or a body shorter than its Content-Length
        (which http.client lets pass silently), raises NativeError. The
        connection goes back to the pool only once the body was read to its
        end: a reader that stops early leaves the rest of it on the wire.
        """
        conn, response = self._answer_head("GET", self.address.path(key))
        left = response.length
        try:
            while left is None or left > 0:
                try:
                    data = response.read(chunk if left is None else min(chunk, left))
                except (OSError, http_client.HTTPException) as exc:
                    raise NativeError(0, type(exc).__name__, f"reading from {self.address.host}: {exc}") from exc
                if not data:
                    if left:
                        raise NativeError(0, "ConnectionClosed", f"{self.address.host} ended the answer {left} bytes short")
                    break
                if left is not None:
                    left -= len(data)
                yield data
        except BaseException:
            conn.close()
            raise
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _answer_head(self, method: str, path: str) -> tuple[http_client.HTTPConnection, http_client.HTTPResponse]:
        """Send a request without a body; its connection and its answer, whose
        body is still to be read. Tried again as :meth:`_exchange` says."""
        return self._exchange(method, path, "", None)  # type: ignore[return-value]

    def _send(self, method: str, path: str, query: dict[str, str], limit: int) -> bytes:
        """One request whose answer is small: its body, or NativeError."""
        encoded = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(query.items()))
        return self._exchange(method, path, encoded, limit)  # type: ignore[return-value]

    def _exchange(self, method: str, path: str, query: str, limit: int | None):
        """A request without a body, tried up to ATTEMPTS times: at once on a
        connection that failed (an idle one the server had closed), after a
        pause on a busy server's 5xx. A refusal raises NativeError. With a
        ``limit`` the answer's body is read (at most that long) and returned;
        without, (connection, answer) come back as soon as the answer starts."""
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            conn = None
            try:
                conn = self._connection()
                self._start(conn, method, path, query)
                response = conn.getresponse()
                if limit is None and response.status < 300:
                    return conn, response
                wanted = LIST_ANSWER_LIMIT if limit is None else limit
                body = response.read(wanted + 1) if method != "HEAD" else response.read()
            except (OSError, http_client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                if last:
                    raise NativeError(0, type(exc).__name__, f"{self.address.host}: {exc}") from None
                time.sleep(0.1 * attempt)
                continue
            if len(body) > wanted or response.will_close:
                conn.close()  # the rest of a too long answer is still on its way
            else:
                self._give_back(conn)
            if len(body) > wanted:
                raise NativeError(response.status, "AnswerTooLarge", f"more than {wanted} bytes")
            if response.status in RETRY_STATUSES and not last:
                time.sleep(0.1 * (attempt + 1))
                continue
            if response.status >= 300:
                raise refusal(response.status, body)
            return body
        raise AssertionError("unreachable")

    def _start(
        self,
        conn: http_client.HTTPConnection,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str] | None = None,
        payload: str = EMPTY_SHA256,
    ) -> None:
        """Send a request's line and its signed headers; its body, if any, follows."""
        conn.putrequest(method, f"{path}?{query}" if query else path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", self.address.host)  # as signed: http.client would drop a default port
        for name, value in self.signer.headers(method, self.address.host, path, query, headers, payload):
            conn.putheader(name, value)
        conn.endheaders()

    def connect_ahead(self) -> None:
        """Dial one connection now and keep it for the next request."""
        self._give_back(self._connection())

    def _connection(self) -> http_client.HTTPConnection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.sock is not None and not readable(conn.sock):
                    return conn
                conn.close()  # readable while idle: the server closed it
        if self._tls is not None:
            conn = http_client.HTTPSConnection(self.address.host, timeout=CONNECT_TIMEOUT, context=self._tls)
        else:
            conn = http_client.HTTPConnection(self.address.host, timeout=CONNECT_TIMEOUT)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(ANSWER_TIMEOUT)
        return conn

    def _give_back(self, conn: http_client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)


def _answer(conn: http_client.HTTPConnection) -> tuple[int, bytes, bool] | None:
    """(status, body, whether the server closes) of the answer on ``conn``; None when there is none to read."""
    try:
        response = conn.getresponse()
        return response.status, response.read(), response.will_close
    except (OSError, http_client.HTTPException):
        return None


class BlockReader(_pyio.RawIOBase):
    """A block of bytes as a seekable file, read in place.

    io.BytesIO copies a bytearray (it shares only a bytes object), and the
    blocks we upload are bytearrays filled chunk by chunk: a copy would
    double the memory of every upload in flight. Seekable, so botocore can
    take its length and rewind it for a retry. (No ``__len__``: awscrt tests
    a body for truth, and would drop an empty one.)
    """

    def __init__(self, data: bytes | bytearray):
        super().__init__()
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = _pyio.SEEK_SET) -> int:
        base = {_pyio.SEEK_SET: 0, _pyio.SEEK_CUR: self._pos, _pyio.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        end = min(len(self._view), self._pos + len(buffer))
        n = max(0, end - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n


def clear_frames(exc: BaseException | None) -> None:
    """Drop the local variables of the finished frames behind ``exc`` and its causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def readable(sock) -> bool:
    """Whether ``sock`` has something to read right now (poll: no limit on descriptor numbers)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def parse_listing(body: bytes) -> tuple[list[dict], str | None, list[str]]:
    """A ListObjectsV2 answer: (objects, next continuation token or None, common prefixes)."""
    root = ElementTree.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    decode = unquote_plus if root.findtext(ns + "EncodingType") == "url" else str
    objects = [
        {
            "Key": decode(item.findtext(ns + "Key") or ""),
            "Size": int(item.findtext(ns + "Size") or 0),
            "LastModified": _timestamp(item.findtext(ns + "LastModified") or ""),
        }
        for item in root.iterfind(ns + "Contents")
    ]
    prefixes = [decode(item.findtext(ns + "Prefix") or "") for item in root.iterfind(ns + "CommonPrefixes")]
    truncated = root.findtext(ns + "IsTruncated") == "true"
    token = root.findtext(ns + "NextContinuationToken") if truncated else None
    if truncated and not token:
        raise NativeError(200, "InvalidListing", "a truncated listing without a continuation token")
    return objects, token, prefixes


def _timestamp(text: str) -> datetime.datetime:
    """``2024-01-01T12:00:00.000Z`` as an aware datetime (3.10's fromisoformat takes no Z)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def total_size(content_range: str | None, received: int) -> int:
    """Object size from ``Content-Range: bytes 0-1023/4096`` (a 200 answer has none)."""
    if content_range:
        match = re.search(r"/(\d+)\s*$", content_range)
        if match:
            return int(match.group(1))
    return received


def refusal(status: int, body: bytes) -> NativeError:
    """The server's error answer: its status, and the Code and Message of its XML body."""
    return NativeError(status, _xml_field(body, "Code") or str(status), _xml_field(body, "Message"))


def _xml_field(body: bytes, field: str) -> str:
    match = re.search(rb"<%s>(.*?)</%s>" % (field.encode(), field.encode()), body, re.S)
    return match.group(1).decode("utf-8", "replace").strip() if match else ""
