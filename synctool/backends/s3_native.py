"""A fast lane for small S3 objects on awscrt's native client.

Why: a small object costs one round trip, and through boto3 most of that
trip is botocore's own Python work (building, signing and parsing the
request), so a 2-core machine tops out around 500-1,300 objects a second.
awscrt's ``S3Client`` (the C engine behind ``boto3[crt]``) signs and sends in
C on its own event-loop threads; the same PUTs run about five times faster.

What goes through here, and what does not:

* single PUTs (objects smaller than the part size, already whole in memory),
* the first bytes of every GET (a ranged GET of up to ``SMALL_GET`` bytes):
  a small object arrives whole in that one request, a larger one is streamed
  on through boto3 from where this one stopped. Nothing larger than
  ``SMALL_GET`` is ever held in memory here.
* Not multipart uploads: awscrt's multipart fails against ``rclone serve s3``,
  whose CreateMultipartUpload answer names its root element
  ``InitiateMultipartUpload`` instead of ``InitiateMultipartUploadResult``
  (awscrt reports AWS_ERROR_S3_MISSING_UPLOAD_ID), so boto3 keeps those.
  Nor listing, copying, deleting: few requests, no gain.

One client per process, made inside the process (its event-loop threads do
not survive a fork). If awscrt is not installed, :data:`AVAILABLE` is False
and the backend uses boto3 for everything.
"""

from __future__ import annotations

import io as _pyio
import os
import re
from collections.abc import Callable
from urllib.parse import quote, urlsplit

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
        signing = s3.create_default_s3_signing_config(region=region, credential_provider=provider)
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

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> None:
        """Store ``data`` under ``key`` in one PutObject; all or nothing."""
        request = http.HttpRequest(
            "PUT",
            self._path(key),
            http.HttpHeaders([("Host", self.host), ("Content-Length", str(len(data))), *headers.items()]),
            _pyio.BytesIO(data),
        )
        self._wait(self._client.make_request(type=s3.S3RequestType.PUT_OBJECT, request=request))

    def get_start(self, key: str, limit: int = SMALL_GET) -> tuple[bytes, int, str | None]:
        """The first ``limit`` bytes of ``key``: (bytes, object size, ETag).

        One ranged GetObject; when bytes has the object's size, that is all of it.
        """
        request = http.HttpRequest(
            "GET", self._path(key), http.HttpHeaders([("Host", self.host), ("Range", f"bytes=0-{limit - 1}")])
        )
        received: list[bytes] = []
        answer: dict = {}
        held = 0
        meta = None

        def on_headers(status_code: int, headers: list, **_) -> None:
            answer["status"], answer["headers"] = status_code, {k.lower(): v for k, v in headers}

        def on_body(chunk: bytes, **_) -> None:
            nonlocal held
            held += len(chunk)
            if held > limit:  # a server that ignored Range: stop, do not buffer it all
                answer["too_big"] = True
                meta.cancel()
                return
            received.append(chunk)

        meta = self._client.make_request(
            type=s3.S3RequestType.DEFAULT,
            operation_name="GetObject",
            request=request,
            on_headers=on_headers,
            on_body=on_body,
        )
        try:
            self._wait(meta)
        except NativeError as exc:
            if answer.get("too_big"):
                return b"", -1, None  # the caller streams it instead
            if exc.status == 416:
                return b"", 0, None  # no byte 0: S3 says so for an empty object
            raise
        headers = answer.get("headers", {})
        data = b"".join(received)
        size = _total_size(headers.get("content-range"), len(data))
        return data, size, headers.get("etag")

    @staticmethod
    def _wait(meta) -> None:
        try:
            meta.finished_future.result()
        except BaseException as exc:
            if isinstance(exc, AwsCrtError):
                raise _native_error(exc) from None
            meta.cancel()  # interrupted while waiting: do not leave it running
            raise


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
    code = _xml_field(body, "Code")
    if status:
        return NativeError(status, code or str(status), _xml_field(body, "Message"))
    return NativeError(0, exc.name, exc.message)


def _xml_field(body: bytes, field: str) -> str:
    match = re.search(rb"<%s>(.*?)</%s>" % (field.encode(), field.encode()), body, re.S)
    return match.group(1).decode("utf-8", "replace").strip() if match else ""
