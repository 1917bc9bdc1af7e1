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
* Not the coordinator's HeadBucket and ListObjectsV2, nor streamed single
  PUTs (files whose BLAKE3 is known before their bytes): those go over
  kept-alive connections, signed in Python (synctool/backends/s3_http.py).
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

import os

from synctool.backends.s3_http import (  # noqa: F401 - BlockReader and SMALL_GET are this lane's too
    SMALL_GET,
    Address,
    BlockReader,
    Credentials,
    NativeError,
    refusal,
    total_size,
)

try:
    from awscrt import auth, common, http, io, s3
    from awscrt.exceptions import AwsCrtError
except ImportError:  # pragma: no cover - depends on the installation
    AVAILABLE = False
else:
    AVAILABLE = True

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


class _TooBig(Exception):
    """Raised from a body callback to fail a request whose answer outgrew its limit."""


class NativeS3:
    """Single PUTs and small GETs for one bucket, through awscrt's S3Client."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        bucket: str,
        path_style: bool,
        credentials: Credentials,
        connections: int,
    ):
        global _made_here
        _made_here = True
        self.pid = os.getpid()
        self.address = Address.of(endpoint_url, bucket, path_style)
        self.tls, self.host, server_name = self.address.tls, self.address.host, self.address.server_name
        self.bucket = bucket

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
        return self.address.path(key)

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
        size = total_size(headers.get("content-range"), len(data))
        return data, size, headers.get("etag")

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


def _native_error(exc: AwsCrtError) -> NativeError:
    status = int(getattr(exc, "status_code", None) or 0)
    body = getattr(exc, "body", None) or b""
    if status:
        return refusal(status, body)
    return NativeError(0, exc.name, exc.message)
