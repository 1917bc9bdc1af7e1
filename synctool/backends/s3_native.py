"""A fast lane for small S3 objects on awscrt's native client.

Why: a small object costs one round trip, and through boto3 most of that
trip is botocore's own Python work (building, signing and parsing the
request), so a 2-core machine tops out around 500-1,300 objects a second.
awscrt's ``S3Client`` (the C engine behind ``boto3[crt]``) signs and sends in
C on its own event-loop threads; the same PUTs run about five times faster.

What goes through here, and what does not:

* single PUTs (objects smaller than the part size, already whole in memory),
* streamed single PUTs (larger files whose BLAKE3 is known before their
  bytes, see ``S3Backend.digest_first``), signed here but sent over a plain
  keep-alive HTTP connection of the job's thread: awscrt's S3Client reads a
  request's whole body into memory before it sends it (to retry it), which
  would hold each such file whole,
* the first bytes of every GET (a ranged GET of up to ``SMALL_GET`` bytes):
  a small object arrives whole in that one request, a larger one is streamed
  on through boto3 from where this one stopped. Nothing larger than
  ``SMALL_GET`` is ever held in memory here.
* the coordinator's HeadBucket and ListObjectsV2, on a :func:`transient`
  client: a sync with nothing to copy then never imports boto3 (~0.15 s)
  nor builds its client (~0.1 s), and a page of 1,000 keys parses in a few
  milliseconds with ElementTree instead of ~60 ms in botocore.
* Not multipart uploads: awscrt's multipart fails against ``rclone serve s3``,
  whose CreateMultipartUpload answer names its root element
  ``InitiateMultipartUpload`` instead of ``InitiateMultipartUploadResult``
  (awscrt reports AWS_ERROR_S3_MISSING_UPLOAD_ID), so boto3 keeps those.
  Nor copying, deleting: few requests, no gain.

One client per process, made inside the process (its event-loop threads do
not survive a fork). If awscrt is not installed, :data:`AVAILABLE` is False
and the backend uses boto3 for everything.
"""

from __future__ import annotations

import contextlib
import datetime
import io as _pyio
import os
import re
import select
import ssl
import threading
import traceback
from collections.abc import Callable, Iterator
from http import client as http_client  # awscrt's http module takes the name http
from urllib.parse import quote, unquote_plus, urlencode, urlsplit
from xml.etree import ElementTree

try:
    from awscrt import auth, common, http, io, s3
    from awscrt.exceptions import AwsCrtError
except ImportError:  # pragma: no cover - depends on the installation
    AVAILABLE = False
else:
    AVAILABLE = True

#: Largest object read whole into memory by one ranged GET. Per process the
#: most held at once is (jobs in flight) x SMALL_GET: 32 MiB at 32 jobs.
SMALL_GET = 1 << 20
#: Largest answer to a listing request held in memory (a page of 1,000 keys
#: is about 250 KB).
LIST_ANSWER_LIMIT = 16 << 20
#: How long a transient client's threads get to end after it is released.
THREAD_JOIN_SECONDS = 5.0
#: Bytes handed to the socket at once by a streamed PUT.
STREAM_BLOCK = 1 << 20
#: Seconds a streamed PUT waits on its connection (to connect, to send, for the answer).
STREAM_TIMEOUT = 60.0

# Every client not yet closed by the process that made it. A forked child
# inherits this set, so a parent's client is never freed there (by a backend
# dropping it, or by the garbage collector): freeing one waits for event-loop
# threads that do not exist in the child, and crashed it in our tests.
_OPEN: set = set()
_made_here = False  # whether this process ever made a client


def _join_finished_threads() -> None:
    """Before a fork: join the native threads that already ended.

    awscrt parks finished threads on a list and joins them when its next
    thread ends. A child inherits that list and would join its parent's
    threads, which it does not have: a crash (seen when a test process that
    had closed a client forked the sync workers). Joining them here, in the
    parent, leaves the child an empty list. Live threads are not waited for.
    """
    if _made_here:
        common.join_all_native_threads(timeout_sec=0.001)


if AVAILABLE:
    os.register_at_fork(before=_join_finished_threads)


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


class _TooBig(Exception):
    """Raised from a body callback to fail a request whose answer outgrew its limit."""


class NativeError(Exception):
    """A failed native request, reduced to what the backend maps errors from.

    ``status`` is the HTTP status (0 when no answer came: refused, reset,
    timed out); ``code`` is S3's error code from the XML body, or awscrt's
    error name when there was no answer.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}" if message else code)
        self.status, self.code, self.message = status, code, message


class NativeS3:
    """Single PUTs and small GETs for one bucket, through awscrt's S3Client."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        bucket: str,
        path_style: bool,
        credentials: Callable[[], tuple[str, str, str | None]] | tuple[str, str, str | None],
        connections: int,
    ):
        global _made_here
        _made_here = True
        self.pid = os.getpid()
        parts = urlsplit(endpoint_url)
        self.tls = parts.scheme == "https"
        self.bucket = bucket
        base_path = parts.path.rstrip("/")
        netloc = parts.netloc.rpartition("@")[2]
        server_name = parts.hostname or ""
        if path_style:
            self.host = netloc
            self._path_prefix = f"{base_path}/{quote(bucket, safe='')}/"
        else:
            self.host, server_name = f"{bucket}.{netloc}", f"{bucket}.{server_name}"
            self._path_prefix = f"{base_path}/"

        elg = io.EventLoopGroup()
        bootstrap = io.ClientBootstrap(elg, io.DefaultHostResolver(elg))
        if callable(credentials):
            # boto3's credential chain (profiles, instance roles): asked per
            # signature, so refreshed credentials are picked up.
            def delegate():
                key, secret, token = credentials()
                return auth.AwsCredentials(key, secret, token)

            provider = auth.AwsCredentialsProvider.new_delegate(delegate)
        else:
            provider = auth.AwsCredentialsProvider.new_static(*credentials)
        # SigV4 over the headers with UNSIGNED-PAYLOAD, as boto3 does over TLS.
        signing = self._signing = s3.create_default_s3_signing_config(region=region, credential_provider=provider)
        self._streams = threading.local()  # each job thread's connection for streamed PUTs
        tls_options = None
        if self.tls:
            # The system's trust store; SNI names the host we address.
            context = io.ClientTlsContext(io.TlsContextOptions())
            tls_options = context.new_connection_options()
            tls_options.set_server_name(server_name)
        self._client = s3.S3Client(
            bootstrap=bootstrap,
            region=region,
            signing_config=signing,
            tls_mode=s3.S3RequestTlsMode.ENABLED if self.tls else s3.S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options,
            # Never split a PUT: we only hand over objects below our part
            # size, and awscrt's multipart does not work on every server.
            multipart_upload_threshold=5 << 30,
            part_size=8 << 20,
            max_active_connections_override=connections,
            connect_timeout_ms=10_000,
            # Two retries, as the boto3 client has (see s3.py): a longer
            # outage is the coordinator's to wait out with its --retry.
            retry_config=s3.S3RetryConfig(max_retries=2) if hasattr(s3, "S3RetryConfig") else None,
        )
        _OPEN.add(self)

    def close(self) -> None:
        """Let the client go (its threads stop once its requests are done)."""
        if os.getpid() == self.pid:
            _OPEN.discard(self)

    def _path(self, key: str) -> str:
        # SigV4 signs the path as sent: RFC 3986 encoding, '/' kept.
        return self._path_prefix + quote(key, safe="/~")

    def put(self, key: str, body, size: int, headers: dict[str, str]) -> None:
        """Store the ``size`` bytes that ``body`` (a file) gives under ``key``
        in one PutObject; all or nothing."""
        request = http.HttpRequest(
            "PUT",
            self._path(key),
            http.HttpHeaders([("Host", self.host), ("Content-Length", str(size)), *headers.items()]),
            body,
        )
        self._wait(self._client.make_request(type=s3.S3RequestType.PUT_OBJECT, request=request))

    def put_stream(self, key: str, body, size: int, headers: dict[str, str]) -> None:
        """Like :meth:`put`, but each block of ``body`` goes out as it is read.

        Whatever ``body.read`` raises ends the request short of its
        Content-Length, and S3 then stores nothing.
        """
        path = self._path(key)
        request = http.HttpRequest(
            "PUT", path, http.HttpHeaders([("Host", self.host), ("Content-Length", str(size)), *headers.items()])
        )
        auth.aws_sign_request(request, self._signing).result()
        conn = self._stream_connection()
        try:
            try:
                conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
                for name, value in request.headers:
                    conn.putheader(name, value)
                conn.endheaders()
            except OSError as exc:
                raise NativeError(0, type(exc).__name__, f"cannot send to {self.host}: {exc}") from exc
            while block := body.read(STREAM_BLOCK):  # what the source raises passes as it is
                try:
                    conn.send(block)
                except OSError as exc:
                    # A server that refuses a request may answer before its
                    # body is all sent, and close: its answer says more.
                    answer = self._stream_answer(conn)
                    if answer is None:
                        raise NativeError(0, type(exc).__name__, f"sending to {self.host}: {exc}") from exc
                    break
            else:
                answer = self._stream_answer(conn)
            if answer is None:
                raise NativeError(0, "ConnectionClosed", f"{self.host} closed the connection without an answer")
        except BaseException:
            conn.close()
            self._streams.conn = None
            raise
        status, data = answer
        if status >= 300:
            raise _refusal(status, data)

    def _stream_connection(self) -> http_client.HTTPConnection:
        """This thread's connection for streamed PUTs; a new one when the server closed the last."""
        conn = getattr(self._streams, "conn", None)
        if conn is not None and conn.sock is not None and _readable(conn.sock):
            conn.close()  # readable while idle: the server closed it (or sent what we did not ask for)
            conn = None
        if conn is None:
            if self.tls:
                conn = http_client.HTTPSConnection(self.host, timeout=STREAM_TIMEOUT, context=ssl.create_default_context())
            else:
                conn = http_client.HTTPConnection(self.host, timeout=STREAM_TIMEOUT)
            self._streams.conn = conn
        return conn

    @staticmethod
    def _stream_answer(conn: http_client.HTTPConnection) -> tuple[int, bytes] | None:
        """(status, body) of the answer on ``conn``; None when there is none to read."""
        try:
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http_client.HTTPException):
            return None

    def get_start(self, key: str, limit: int = SMALL_GET) -> tuple[bytes, int, str | None]:
        """The first ``limit`` bytes of ``key``: (bytes, object size, ETag).

        One ranged GetObject; when bytes has the object's size, that is all of it.
        """
        try:
            headers, data = self._send("GET", self._path(key), "GetObject", limit, [("Range", f"bytes=0-{limit - 1}")])
        except _TooBig:
            return b"", -1, None  # a server that ignored Range: the caller streams it instead
        except NativeError as exc:
            if exc.status == 416:
                return b"", 0, None  # no byte 0: S3 says so for an empty object
            raise
        size = _total_size(headers.get("content-range"), len(data))
        return data, size, headers.get("etag")

    def head_bucket(self) -> None:
        """HeadBucket: returns when the bucket is there and may be listed, else NativeError (404: missing)."""
        self._send("HEAD", self._path_prefix, "HeadBucket", 0)

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
        path = self._path_prefix + "?" + urlencode(sorted(query.items()), quote_via=quote, safe="~")
        _, body = self._send("GET", path, "ListObjectsV2", LIST_ANSWER_LIMIT)
        return _parse_listing(body)

    def _send(self, method: str, path: str, operation: str, limit: int, extra: list | None = None) -> tuple[dict, bytes]:
        """One request whose answer is small: (headers, lower-case names; body).

        Raises NativeError when it fails, _TooBig when the body passes ``limit``.
        """
        request = http.HttpRequest(method, path, http.HttpHeaders([("Host", self.host), *(extra or [])]))
        received: list[bytes] = []
        answer: dict = {"held": 0, "headers": {}}

        # The callbacks must not refer to the request object: awscrt holds
        # them until the request ends, and such a cycle through C code is
        # never collected (it kept every client and its answers alive).
        def on_headers(status_code: int, headers: list, **_) -> None:
            answer["headers"] = {k.lower(): v for k, v in headers}

        def on_body(chunk: bytes, **_) -> None:
            answer["held"] += len(chunk)
            if answer["held"] > limit:
                raise _TooBig()  # fails the request: nothing more is buffered
            received.append(chunk)

        self._wait(
            self._client.make_request(
                type=s3.S3RequestType.DEFAULT,
                operation_name=operation,
                request=request,
                on_headers=on_headers,
                on_body=on_body,
            )
        )
        return answer["headers"], b"".join(received)

    @staticmethod
    def _wait(meta) -> None:
        try:
            meta.finished_future.result()
        except BaseException as exc:
            if isinstance(exc, AwsCrtError):
                raise _native_error(exc) from None
            meta.cancel()  # interrupted while waiting: do not leave it running
            raise


@contextlib.contextmanager
def transient(**client_args) -> Iterator[NativeS3]:
    """A client for a few requests in a process that may fork afterwards.

    awscrt's threads do not survive a fork, and a child forked while they
    run can inherit their locks held. So the coordinator's listing client is
    released when the block ends, and its threads are waited for, as
    awscrt's README asks before a fork.
    """
    client = NativeS3(**client_args)
    shut_down = client._client.shutdown_event
    try:
        yield client
    except BaseException as exc:
        # A failed request's frames, kept by the traceback, hold the request
        # and so the native client: clear them, or the wait below lasts its
        # whole timeout on every failed listing.
        clear_frames(exc)
        raise
    finally:
        client.close()
        # The caller may still hold ``client`` (a with-statement's name
        # outlives its block): drop the native client it wraps, which then
        # shuts down.
        client._client = None
        if shut_down.wait(THREAD_JOIN_SECONDS):
            common.join_all_native_threads(timeout_sec=THREAD_JOIN_SECONDS)


def clear_frames(exc: BaseException | None) -> None:
    """Drop the local variables of the finished frames behind ``exc`` and its causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _readable(sock) -> bool:
    """Whether ``sock`` has something to read right now (poll: no limit on descriptor numbers)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _parse_listing(body: bytes) -> tuple[list[dict], str | None, list[str]]:
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


def _total_size(content_range: str | None, received: int) -> int:
    """Object size from ``Content-Range: bytes 0-1023/4096`` (a 200 answer has none)."""
    if content_range:
        match = re.search(r"/(\d+)\s*$", content_range)
        if match:
            return int(match.group(1))
    return received


def _native_error(exc: AwsCrtError) -> NativeError:
    status = int(getattr(exc, "status_code", None) or 0)
    body = getattr(exc, "body", None) or b""
    if status:
        return _refusal(status, body)
    return NativeError(0, exc.name, exc.message)


def _refusal(status: int, body: bytes) -> NativeError:
    """The server's error answer: its status, and the Code and Message of its XML body."""
    return NativeError(status, _xml_field(body, "Code") or str(status), _xml_field(body, "Message"))


def _xml_field(body: bytes, field: str) -> str:
    match = re.search(rb"<%s>(.*?)</%s>" % (field.encode(), field.encode()), body, re.S)
    return match.group(1).decode("utf-8", "replace").strip() if match else ""
