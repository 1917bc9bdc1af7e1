"""S3-compatible object stores: ``s3://BUCKET/PREFIX`` (``s3s://`` for TLS).

Works with AWS S3 and the S3 dialects of MinIO, Wasabi, Backblaze B2, Ceph RGW
and ``rclone serve s3``. Option names are Duplicati's, so its scripts keep
working; a few ``s3-*`` options of our own tune the multipart upload.

How a file goes: smaller than a part, in one PUT from memory; larger and
from a source that rereads cheaply (a local disk), in one PUT streamed from
the source up to ``s3-upload-cutoff`` (as rclone does); otherwise in parts.

Memory: what one process's writes hold is bounded in bytes, not in parts:
``s3-parts-in-flight x s3-part-size`` (20 MiB with the defaults). A small
object's whole content, the first block of a larger one and each part take
their size from that budget before a byte is read, and give it back once sent
(see :mod:`synctool.backends.budget`); a block may pass its share by less than
one source chunk. A streamed PUT holds two source chunks, outside the budget.
Reads hold at most ``s3_http.SMALL_GET`` per job.

Buckets and prefixes: a missing bucket is created for the destination
(``prepare(create=True)``, Duplicati's auto-create-folders, on by default)
and is an error for the source, or with ``auto-create-folders=false``.
Prefixes exist only through their objects, so a source prefix with no object
under it counts as missing too: a mistyped prefix would otherwise mirror as
"delete everything". A missing bucket, refused keys or an unreachable
endpoint each give one error that names the bucket or endpoint (never a key).

Not atomic on S3, and what we do about it:

* ``keep_old_as`` copies the old object to its retention name before the new
  one completes; if the upload then fails, the old object stays as it was and
  a spare copy remains under the retention name (nothing is lost).
* Nothing is written over a name the caller did not mean to replace. A new
  file's PUT (and CompleteMultipartUpload) and every copy to a retention
  name carry ``If-None-Match: *``, which AWS and MinIO enforce; a retention
  name is also looked up first, for servers that ignore the header
  (``rclone serve s3`` does). On such a server a name another writer creates
  between our listing (or look-up) and our write is the race that remains.
* The source's mtime travels as ``x-amz-meta-mtime`` (rclone's name for it).
  AWS lists the upload time; ``stored_mtime`` reads the source's back, so a
  file dated in the future is not copied again at every run. ``rclone serve
  s3`` lists the stored time itself.
* ``write``'s ``check`` (--verify-get-after-put) can only read an object once
  it is visible under its name: a rejected object is deleted, and the
  worker keeps a journal of what it has written but not yet read back (see
  ``workers/journal.py``).
* S3 takes metadata when a request starts. From a source that rereads
  cheaply (a local disk) the worker hashes a file larger than a part first,
  and the BLAKE3 goes with the upload (``digest_first``); bytes that then
  hash otherwise (the file changed) abort it: a multipart upload is not
  completed, and a streamed PUT never sends its last chunk (a PUT cut short
  of its Content-Length stores nothing, and the old object stays). From
  elsewhere a file larger than a part goes in parts, and its hash is only
  known after the last one: after completing the upload we rewrite the
  object's metadata in place with one server-side CopyObject (no bytes pass
  through us). Above 5 GiB that would be a multipart copy of the whole
  object, and archive storage classes refuse copies, so there the metadata
  is left out; ``s3-multipart-blake3=false`` turns the rewrite off
  (worth it in versioned buckets, where it keeps a second version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import blake3

from synctool.backends import key_ranges, s3_http
from synctool.backends.base import (
    AlreadyExists,
    Backend,
    BackendError,
    BackendSpec,
    Entry,
    JOURNAL_START,
    FatalBackendError,
    NotFound,
    Place,
    check_name,
    is_journal,
)
from synctool.backends.budget import ByteBudget, block_size_for, send_blocks, store
from synctool.backends.objectstore import delete_in_batches, object_prefix, storage_name
from synctool.backends.optiontable import NO_EFFECT, TIMEOUT_OPTIONS, Option, table

log = logging.getLogger("synctool.backends.s3")

MiB = 1 << 20
GiB = 1 << 30
READ_CHUNK = MiB
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
MAX_PUT = 5 * GiB  # S3's largest single PUT
MAX_PARTS = 10_000  # S3's most parts in one upload
PART_HEADROOM = 9_000  # size parts for this many, in case the file grew since listing
DELETE_BATCH = 1_000  # S3's most keys per DeleteObjects request
LIST_THREADS = 4  # key ranges listed at once
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})

# Error codes that mean "these credentials are not accepted here".
AUTH_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)
# 4xx codes that are worth another try (everything 5xx is too).
RETRY_CODES = frozenset({"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "OperationAborted", "Throttling"})

if TYPE_CHECKING:
    from botocore.config import Config

    from synctool.backends import s3_native

# boto3 is imported on first use, not with this module: with the native
# client a sync that copies nothing never needs it (its import and first
# client cost ~0.25 s).


@functools.cache
def _connection_errors() -> tuple[type[BaseException], ...]:
    """Errors below the HTTP layer: the connection failed, broke, or timed out."""
    import botocore.exceptions
    import urllib3.exceptions

    return (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        botocore.exceptions.ResponseStreamingError,
        botocore.exceptions.IncompleteReadError,
        urllib3.exceptions.HTTPError,
        ConnectionError,
        TimeoutError,
    )

# Guards opening a backend's client; a child process gets a fresh one, since a
# fork may copy it locked by a thread that does not exist in the child.
_open_lock = threading.Lock()


def _new_open_lock() -> None:
    global _open_lock
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_open_lock)


def _holds_every_key_of(page: key_ranges.Page, start: str) -> bool:
    """Whether a listing's first page holds every key that begins with ``start``:
    it is the whole listing, or its last key sorts after all of them."""
    if page.token is None:
        return True
    last = page.objects[-1]["Key"] if page.objects else ""
    return last > start and not last.startswith(start)


def _starting_with(first: key_ranges.Page, page: key_ranges.PageOf) -> key_ranges.PageOf:
    """``page``, but its first call (a listing's plain first page) answered by ``first``."""
    given = [first]

    def answer(prefix: str, start_after: str | None, token: str | None, delimited: bool) -> key_ranges.Page:
        if given and start_after is None and token is None and not delimited:
            return given.pop()
        return page(prefix, start_after, token, delimited)

    return answer


class S3Backend(Backend):
    schemes = ("s3", "s3s")
    description = "S3-compatible object storage (AWS, MinIO, Wasabi, B2, Ceph, rclone): s3://BUCKET/PREFIX, s3s:// for TLS"
    options = table(
        Option("aws-access-key-id", "text", None, "S3 access key id (default: boto3's credential chain: environment, profile, instance role)."),
        Option("aws-secret-access-key", "text", None, "S3 secret access key.", secret=True),
        Option("auth-username", "text", None, "Alias of aws-access-key-id (also the user of s3://KEY:SECRET@bucket)."),
        Option("auth-password", "text", None, "Alias of aws-secret-access-key.", secret=True),
        Option("aws-session-token", "text", None, "Session token of temporary credentials.", secret=True),
        Option("s3-server-name", "text", None, "Endpoint: host[:port], or a URL whose http:// or https:// sets TLS (default: AWS)."),
        Option("use-ssl", "bool", None, "Use TLS with a host[:port] s3-server-name (default: off, as in Duplicati; on for AWS hosts and s3s://)."),
        Option("s3-location-constraint", "text", None, "Region; also the region of a bucket this run creates."),
        Option("s3-authentication-region", "text", None, "Region the requests are signed for, where it differs from s3-location-constraint."),
        Option("s3-storage-class", "text", None, "Storage class of new objects, e.g. STANDARD_IA."),
        Option("s3-ext-forcepathstyle", "bool", None, "Path-style addressing (default: on for endpoints that are not AWS)."),
        Option("auto-create-folders", "bool", True, "Create a missing destination bucket."),
        Option("s3-part-size", "size", 5 * MiB, "Multipart part size, at least 5MiB; grows to stay under 10,000 parts.", minimum=MIN_PART),
        Option("s3-parts-in-flight", "int", 4, "Parts one process uploads at once."),
        Option("s3-upload-cutoff", "size", 200 * MiB, "Files from a local disk up to this size (at most 5GiB) go in one streamed PUT, larger ones in parts (rclone's option and default)."),
        Option("s3-multipart-blake3", "bool", True, "Add x-amz-meta-blake3 to multipart objects up to 5 GiB (one server-side copy each)."),
        Option("s3-native", "bool", True, "Small objects through awscrt's native client (when installed); probes, listings and streamed PUTs signed here over kept-alive connections. false: boto3 for everything."),
        Option("s3-concurrency", "int", None, "Jobs one worker process runs at once (default: 32 with s3-native, else 8)."),
        Option("s3-sign-payload", "bool", None, "SHA-256 every request body into the signature (default: false; TLS and BLAKE3 guard the bytes)."),
        Option("s3-disable-payload-signing", "bool", None, "Duplicati's inverse of s3-sign-payload, which wins over it: false signs every body, true does not."),
        Option("s3-disable-chunk-encoding", "bool", False, "Send no aws-chunked bodies (botocore's trailing checksums), for servers that refuse them; always so on endpoints that are not AWS."),
        # Duplicati's options that have no counterpart here: accepted, so a
        # Duplicati script runs unchanged, and said to do nothing.
        Option("s3-client", "text", None, f"{NO_EFFECT} synctool talks to S3 through botocore and awscrt, not Duplicati's choice of .NET library."),
        Option("s3-list-api-version", "text", None, f"{NO_EFFECT} the listing always uses ListObjectsV2."),
        Option("s3-recursive-list", "text", None, f"{NO_EFFECT} a mirror lists the whole prefix, always recursively."),
        Option("s3-archive-classes", "text", None, f"{NO_EFFECT} every object is listed and read alike; one in an archive class must be restored before a run reads it."),
        Option("s3-lock-mode", "text", None, f"{NO_EFFECT} synctool sets no object lock (Duplicati locks its backup volumes)."),
        *TIMEOUT_OPTIONS,
        Option("s3-ext-*", "text", None, f"{NO_EFFECT} settings of the AWS .NET SDK's client (all but s3-ext-forcepathstyle), which synctool does not use."),
    )
    # Small objects cost one round trip each: overlap several per process.
    # An instance sets its own from s3-concurrency (see __init__).
    concurrency = 8
    mtime_precision = 1.0
    keeps_mtime = False
    verifies_before_commit = False
    # S3 itself takes 1,024-byte keys, but servers that keep objects as files
    # (MinIO, rclone serve s3) fail a longer segment with a bare InternalError.
    max_segment_bytes = 255
    #: Largest object one CopyObject may copy; above it, a multipart copy.
    copy_limit = 5 * GiB

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        v = self.values
        self.bucket = _bucket_name(spec.url)
        self.prefix = object_prefix(self.location.path)
        self.endpoint, self.is_aws = _endpoint(v, tls_default=self.location.scheme == "s3s")
        self.storage_name = "aws" if self.endpoint is None or self.is_aws else storage_name(self.endpoint, "s3-server-name")
        self.region = v["s3-location-constraint"] or None
        self.signing_region = v["s3-authentication-region"] or self.region
        self.storage_class = v["s3-storage-class"] or None
        self.auto_create = v["auto-create-folders"]
        # 5 MiB (S3's smallest, rclone's default) measured as fast as 8 MiB on
        # 4 x 256 MiB, with ~40 MiB less peak memory per worker.
        self.part_size = v["s3-part-size"]
        self.parts_in_flight = max(1, v["s3-parts-in-flight"])
        self.upload_cutoff = v["s3-upload-cutoff"]
        if self.upload_cutoff > MAX_PUT:
            raise FatalBackendError(f"s3-upload-cutoff must be at most 5GiB, S3's largest single PUT")
        self.multipart_blake3 = v["s3-multipart-blake3"]
        sign, unsigned = v["s3-sign-payload"], v["s3-disable-payload-signing"]
        self.sign_payload = sign if sign is not None else unsigned is False
        self.chunk_encoding = not v["s3-disable-chunk-encoding"]
        self._credentials = _credentials(v, self.location)
        path_style = v["s3-ext-forcepathstyle"]
        self.path_style = not self.is_aws if path_style is None else path_style
        # On AWS without a region, boto3 finds a bucket's region by following
        # its redirects; the native client does not, so it stays out there.
        self.native = v["s3-native"] and s3_http.CRT_AVAILABLE and (not self.is_aws or self.region is not None)
        # Measured on 2 cores, 5,000 x 4 KiB: the native client keeps gaining
        # up to ~32 jobs in flight per process; botocore's CPU cost flattens
        # out at ~8 threads, and more only add contention for the GIL.
        concurrency = v["s3-concurrency"]
        self.concurrency = max(1, (32 if self.native else 8) if concurrency is None else concurrency)
        self._config_obj: Config | None = None
        self._pid = -1  # the process that opened the client, pool and slots below
        self._client_obj = None
        self._native_obj: s3_native.NativeS3 | None = None
        self._native_pid = -1
        self._http_obj: s3_http.S3Http | None = None
        self._http_pid = -1
        self._bucket_seen = False  # a probe found the bucket: creating the root is then a no-op
        # The root's first page, which the probe listed: the journal lookup
        # and the listing start from it instead of asking again.
        self._probed: key_ranges.Page | None = None
        self._pool_obj: ThreadPoolExecutor | None = None
        self._budget_obj: ByteBudget | None = None
        self._budget_pid = -1

    # -- connection ------------------------------------------------------
    @property
    def _config(self) -> Config:
        if self._config_obj is None:
            self._config_obj = self._client_config(self.path_style)
        return self._config_obj

    def _client_config(self, path_style: bool) -> Config:
        from botocore.config import Config

        extra = {}
        if not self.is_aws or not self.chunk_encoding:
            # botocore >= 1.36 sends CRC checksums by default, as a trailer of
            # an aws-chunked body, which many S3-compatible servers reject;
            # they ask only when required.
            extra = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
        return Config(
            region_name=self.signing_region or ("us-east-1" if not self.is_aws else None),
            signature_version="s3v4",
            s3={
                "addressing_style": "path" if path_style else "auto",
                # Over plain http botocore would SHA-256 every body to sign it
                # (~1 s of CPU per GiB); UNSIGNED-PAYLOAD is what it sends over
                # TLS anyway, and our BLAKE3 (and --verify-get-after-put) checks
                # the content end to end.
                "payload_signing_enabled": self.sign_payload,
            },
            # standard mode backs off on 503 SlowDown, 5xx and connection resets.
            # Two retries (under 3 s) bridge a blip such as a dropped keep-alive
            # connection; a longer outage is for the coordinator's --retry and
            # its delay. botocore's default (5 retries, backing off up to 16 s)
            # made each request to a dead server take ~20 s, even with --retry 0.
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=self.concurrency + self.parts_in_flight + 2,
            connect_timeout=10,
            read_timeout=60,
            tcp_keepalive=True,
            **extra,
        )

    def _new_client(self, config: Config):
        import boto3

        session = boto3.session.Session(**self._credentials)
        return without_expect_continue(session.client("s3", endpoint_url=self.endpoint, config=config))

    def _ensure_open(self) -> None:
        """Open the client and part pool once per process.

        A forked child opens its own: the parent's connections and threads
        mean nothing there.
        """
        if self._pid == os.getpid():
            return
        with _open_lock:
            if self._pid != os.getpid():
                self._client_obj = self._new_client(self._config)
                self._pool_obj = ThreadPoolExecutor(self.parts_in_flight, thread_name_prefix="s3-part")
                self._pid = os.getpid()

    @property
    def _client(self):
        self._ensure_open()
        return self._client_obj

    @property
    def _native(self) -> s3_native.NativeS3 | None:
        """The native client of this process for reads and writes, made on first use; None when off.

        The coordinator, which lists and may fork workers afterwards, uses
        :attr:`_http` instead and never keeps native threads running.
        """
        if not self.native:
            return None
        if self._native_pid != os.getpid():
            args = self._native_args()  # may open the boto3 client, which takes the lock too
            with _open_lock:
                if self._native_pid != os.getpid():
                    # A parent's client copied by fork stays referenced in
                    # s3_native (never freed here): this process makes its own.
                    from synctool.backends import s3_native  # awscrt: loaded where it is used

                    self._native_obj = s3_native.NativeS3(**args) if args else None
                    self._native_pid = os.getpid()
        return self._native_obj

    @property
    def _http(self) -> s3_http.S3Http | None:
        """This process's client for the probe, the listings and streamed PUTs,
        made on first use; None: use boto3. It runs no thread, so the
        coordinator keeps it for the whole run."""
        if self._http_pid != os.getpid():
            args = self._native_args() if self.native else None
            self._http_obj = s3_http.S3Http(**args) if args else None
            self._http_pid = os.getpid()
        return self._http_obj

    def connect_ahead(self) -> None:
        """A kept-alive connection for the streamed GETs and PUTs of large
        files (small ones go through awscrt, which connects on its own)."""
        http = self._http
        if http is not None:
            http.connect_ahead()

    def _native_args(self) -> dict | None:
        """How the native client reaches the bucket; None when it cannot (boto3 then).

        boto3 is asked only what we cannot know without it: credentials from
        its chain when no keys are given, and AWS's endpoint for a region.
        """
        if self._credentials:
            creds = (
                self._credentials["aws_access_key_id"],
                self._credentials["aws_secret_access_key"],
                self._credentials.get("aws_session_token"),
            )
        else:
            import boto3

            chain = boto3.session.Session().get_credentials()
            if chain is None:
                self.native = False  # boto3 reports the missing credentials clearly
                return None

            def creds():
                frozen = chain.get_frozen_credentials()
                return frozen.access_key, frozen.secret_key, frozen.token

        endpoint, region = self.endpoint, self.signing_region
        if endpoint is None:
            meta = self._client.meta
            endpoint, region = meta.endpoint_url, region or meta.region_name
        return {
            "endpoint_url": endpoint,
            "region": region or "us-east-1",
            "bucket": self.bucket,
            "path_style": self.path_style or not _dns_bucket(self.bucket),
            "credentials": creds,
            "connections": self.concurrency,
        }

    @property
    def _pool(self) -> ThreadPoolExecutor:
        self._ensure_open()
        assert self._pool_obj is not None
        return self._pool_obj

    @property
    def _budget(self) -> ByteBudget:
        """This process's memory budget for writes (see the module notes).

        Apart from the boto3 client: small objects written natively need no
        client. A forked child starts with its own, the parent's takes being
        by threads it does not have.
        """
        if self._budget_pid != os.getpid():
            with _open_lock:
                if self._budget_pid != os.getpid():
                    self._budget_obj = ByteBudget(self.parts_in_flight * self.part_size)
                    self._budget_pid = os.getpid()
        assert self._budget_obj is not None
        return self._budget_obj

    def close(self) -> None:
        if self._http_pid == os.getpid():
            if self._http_obj is not None:
                self._http_obj.close()
            self._http_obj = None
            self._http_pid = -1
        if self._native_pid == os.getpid():
            if self._native_obj is not None:
                self._native_obj.close()
            self._native_obj = None
            self._native_pid = -1
        if self._pid != os.getpid():
            return  # never touch a parent's connections from a forked child
        if self._pool_obj is not None:
            self._pool_obj.shutdown(wait=True)
        if self._client_obj is not None and hasattr(self._client_obj, "close"):
            self._client_obj.close()
        self._client_obj = self._pool_obj = None
        self._pid = -1

    def display_url(self) -> str:
        return f"{self.location.scheme}://{self.bucket}/{self.prefix}"

    def root_place(self) -> Place:
        # Every AWS endpoint is one storage: bucket names are global there.
        path = self.prefix[:-1]  # without the '/' that _prefix adds
        return Place(("s3", self.storage_name, self.bucket), path, f"{self.display_url()} at {self._where()}")

    def details(self) -> dict[str, str]:
        user = {"user": self.location.user} if self.location.user else {}  # the access key id, not a secret
        where = {"endpoint": self._where(), **user, "bucket": self.bucket, "prefix": self.prefix}
        return {"scheme": self.location.scheme, **where}

    def _where(self) -> str:
        return self.endpoint or "AWS S3"

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    # -- Backend ---------------------------------------------------------
    def prepare(self, create: bool) -> None:
        if create and self._bucket_seen:
            return  # a prefix needs no creating on S3, and the bucket was there
        # Prefixes do not exist on S3 apart from their objects. A source
        # prefix that holds nothing is almost always a typo, and mirroring it
        # would empty the destination: it counts as a missing folder.
        probe_prefix = not create and bool(self.prefix)
        native = self._http
        if native is None:
            self._probe_bucket(create)
            has_objects = probe_prefix and self._prefix_has_objects()
        else:
            has_objects = self._native_probe(native, create, probe_prefix)
        self._bucket_seen = True
        if probe_prefix and not has_objects:
            raise NotFound(
                f"nothing under s3://{self.bucket}/{self.prefix} at {self._where()} (empty or mistyped prefix?)"
            )

    def _native_probe(self, native: s3_http.S3Http, create: bool, probe_prefix: bool) -> bool:
        """One request: the first page of the prefix's listing, which fails as
        HeadBucket does on a missing bucket (and which the listing then
        starts from), or HeadBucket when there is no prefix to look into.
        Returns whether the prefix holds an object."""
        try:
            if probe_prefix:
                objects, token, _ = native.list_page(self.prefix)
                self._probed = key_ranges.Page(objects, [], token)
                return bool(objects)
            native.head_bucket()
            return False
        except s3_http.NativeError as exc:
            if exc.status != 404:
                raise self._error(exc, f"bucket {self.bucket}", first_contact=True) from exc
        self._missing_bucket(None, create)
        return False

    def _probe_bucket(self, create: bool) -> None:
        """HeadBucket through boto3; a missing bucket is created (``create``) or NotFound."""
        import botocore.exceptions
        from botocore.config import Config

        # Fail fast on a wrong endpoint: the standard retries would take ~15 s.
        probe = self._new_client(self._config.merge(Config(retries={"mode": "standard", "max_attempts": 2})))
        try:
            probe.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) != 404 and _code(exc) != "NoSuchBucket":
                raise self._error(exc, f"bucket {self.bucket}", first_contact=True) from exc
            self._missing_bucket(probe, create)
        except Exception as exc:
            raise self._error(exc, f"bucket {self.bucket}", first_contact=True) from exc
        finally:
            probe.close()

    def _missing_bucket(self, client, create: bool) -> None:
        """A missing bucket: NotFound, or created through ``client`` (None: this process's boto3 client)."""
        missing = f"bucket {self.bucket} does not exist at {self._where()}"
        if not create:
            raise NotFound(missing)
        if not self.auto_create:
            raise FatalBackendError(f"{missing} (and auto-create-folders is off)")
        args: dict = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            (client or self._client).create_bucket(**args)
        except Exception as exc:
            raise self._error(exc, f"creating bucket {self.bucket}", first_contact=True) from exc
        log.info("created bucket %s at %s", self.bucket, self._where())

    def _prefix_has_objects(self) -> bool:
        try:
            page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            raise self._error(exc, f"listing s3://{self.bucket}/{self.prefix}") from exc
        return bool(page.get("KeyCount") or page.get("Contents"))

    def list(self, start_after: str | None = None) -> Iterator[Entry]:
        return self._listed(self.prefix, start_after)

    def journals(self) -> list[str]:
        start = self.prefix + JOURNAL_START
        probed = self._probed
        if probed is not None and _holds_every_key_of(probed, start):
            found = (self._entry(obj) for obj in probed.objects if obj["Key"].startswith(start))
            return [e.name for e in found if e is not None and is_journal(e.name)]
        return [e.name for e in self._listed(start) if is_journal(e.name)]

    def _listed(self, prefix: str, start_after: str | None = None) -> Iterator[Entry]:
        """Every object below the root whose key starts with ``prefix`` (and whose name sorts after ``start_after``)."""
        after = None if start_after is None else self.prefix + start_after
        native = self._http
        page = self._native_page(native) if native else self._boto3_page
        if self._probed is not None and prefix == self.prefix and after is None:
            page, self._probed = _starting_with(self._probed, page), None  # a later listing asks anew
        try:
            # A few pages per key range at a time (see key_ranges): the plan holds the rest.
            for obj in key_ranges.ordered_keys(page, prefix, after, LIST_THREADS):
                entry = self._entry(obj)
                if entry is not None:
                    yield entry
        except Exception as exc:
            raise self._error(exc, f"listing s3://{self.bucket}/{self.prefix}") from exc

    @staticmethod
    def _native_page(native: s3_http.S3Http) -> key_ranges.PageOf:
        def page(prefix: str, start_after: str | None, token: str | None, delimited: bool) -> key_ranges.Page:
            objects, token, prefixes = native.list_page(prefix, token, start_after=start_after, delimited=delimited)
            return key_ranges.Page(objects, prefixes, token)

        return page

    def _boto3_page(self, prefix: str, start_after: str | None, token: str | None, delimited: bool) -> key_ranges.Page:
        given = {"ContinuationToken": token, "StartAfter": start_after, "Delimiter": "/" if delimited else None}
        got = self._client.list_objects_v2(
            Bucket=self.bucket, Prefix=prefix, **{key: value for key, value in given.items() if value}
        )
        prefixes = [p["Prefix"] for p in got.get("CommonPrefixes", ())]
        token = got.get("NextContinuationToken") if got.get("IsTruncated") else None
        return key_ranges.Page(got.get("Contents", []), prefixes, token)

    def _entry(self, obj: dict) -> Entry | None:
        key, size = obj["Key"], obj["Size"]
        if size == 0 and key.endswith("/"):
            return None  # a folder marker made by consoles and other tools
        name = key[len(self.prefix) :]
        if not name:
            return None  # the prefix itself stored as an object: not below the root
        # Unsafe names (../x, a//b) are passed on: the coordinator refuses them by name.
        return Entry(name, size, obj["LastModified"].timestamp())

    def read(self, name: str) -> Iterator[bytes]:
        return self.read_sized(name, -1)

    def read_sized(self, name: str, size: int) -> Iterator[bytes]:
        """Stream an object; ``size``, the listed size (-1: not known), picks the way.

        An object larger than ``s3_http.SMALL_GET`` is streamed in one GET
        (the native probe would be a second request for its first
        megabyte), signed here where the native client is in use, so that a
        worker that only reads large objects never loads boto3.
        """
        key = self._key(name)
        args: dict = {}
        if size > s3_http.SMALL_GET and (http := self._http) is not None:
            try:
                yield from http.get_stream(key, READ_CHUNK)
            except s3_http.NativeError as exc:
                raise self._error(exc, name) from exc
            return
        native = self._native if size <= s3_http.SMALL_GET else None
        if native is not None:
            # One native ranged GET brings a small object whole; a larger
            # one continues through boto3's stream from where it stopped,
            # pinned by If-Match to the very object we started reading.
            try:
                start, total, etag = native.get_start(key)
            except s3_http.NativeError as exc:
                raise self._error(exc, name) from exc
            if total >= 0 and len(start) >= total:
                if start:
                    yield start
                return
            if start:
                yield start
                args = {"Range": f"bytes={len(start)}-", **({"IfMatch": etag} if etag else {})}
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key, **args)
        except Exception as exc:
            raise self._error(exc, name) from exc
        body = answer["Body"]
        if args.get("IfMatch") and answer.get("ETag") != args["IfMatch"]:
            # Servers that ignore If-Match (rclone serve s3) still name the
            # version they send: never splice two versions into one stream.
            body.close()
            err = BackendError(f"{name}: the object changed while being read")
            err.retryable = True
            raise err
        try:
            yield from body.iter_chunks(READ_CHUNK)
        except Exception as exc:
            raise self._error(exc, name) from exc
        finally:
            body.close()

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
        digest: str | None = None,
    ) -> None:
        key = self._key(name)
        put = _Put(
            key,
            name,
            old_key=self._key(keep_old_as) if keep_old_as is not None else None,
            old_name=keep_old_as,
            metadata={"mtime": f"{mtime:.9f}"} if mtime is not None else {},
            conditions={"IfNoneMatch": "*"} if not overwrite else {},
            digest=digest,
        )
        self._store(put, chunks, size)
        if check is None:
            return
        try:
            check(self.read_sized(name, size))
        except BaseException:
            # Nothing that failed its read-back stays under the name: the old
            # version, if it was to be kept, is already under keep_old_as.
            with contextlib.suppress(Exception):
                self._client.delete_object(Bucket=self.bucket, Key=key)
            raise

    def digest_first(self, size: int) -> bool:
        # A multipart upload takes its metadata when it begins; see the module notes.
        return size > self._part_size_for(size)

    def _store(self, put: "_Put", chunks: Iterable[bytes], size: int) -> None:
        if put.digest is not None and size <= self.upload_cutoff:
            # Its BLAKE3 is known before its bytes: one request, streamed
            # from the source, with no part to hold in memory or assemble.
            return self._put_streamed(put, chunks, size)
        store(chunks, size, self._part_size_for(size), self._budget, functools.partial(self._put_whole, put),
              functools.partial(self._put_multipart, put))  # fmt: skip

    def abort_unfinished_writes(self, names: Sequence[str]) -> None:
        """Abort the open multipart uploads of ``names``: a worker killed mid-upload
        leaves its parts stored (and, on AWS, billed) until someone aborts them."""
        keys = {self._key(name) for name in names}
        if not keys:
            return
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            uploads = [u for page in pages for u in page.get("Uploads", ()) if u["Key"] in keys]
        except Exception as exc:
            if getattr(exc, "response", None) and _code(exc) == "NoSuchUpload":
                return  # rclone serve s3's answer when it holds no upload for the bucket
            raise self._error(exc, "listing unfinished multipart uploads") from exc
        for upload in uploads:
            log.info("aborting the multipart upload of %s left by a dead worker", upload["Key"])
            self._abort(upload["Key"], upload["UploadId"])

    def rename(self, old: str, new: str) -> None:
        old_key, new_key = self._key(old), self._key(new)
        try:
            if not self._copy_to_new(old_key, new_key, new):
                raise NotFound(f"{old}: no such object")
            self._client.delete_object(Bucket=self.bucket, Key=old_key)
        except BackendError:
            raise
        except Exception as exc:
            raise self._error(exc, old) from exc

    def stored_mtime(self, name: str) -> float | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            err = self._error(exc, name)
            if isinstance(err, NotFound):
                return None
            raise err from exc
        # Header names are case-blind, and servers spell the key as they like.
        stored = {k.lower(): v for k, v in head.get("Metadata", {}).items()}.get("mtime", "")
        try:
            return float(stored)
        except ValueError:
            return None  # written by another tool, or by an older synctool

    def read_small(self, name: str) -> bytes:
        # boto3, not the native client: the coordinator forks workers later.
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except Exception as exc:
            raise self._error(exc, name) from exc

    def delete(self, names: Sequence[str]) -> None:
        delete_in_batches(names, self._key, DELETE_BATCH, self._delete_batch)

    # -- writing ---------------------------------------------------------
    def _part_size_for(self, size: int) -> int:
        """The configured part size, grown (in whole MiB) to keep under 10,000 parts."""
        return block_size_for(size, self.part_size, PART_HEADROOM)

    def _object_args(self) -> dict:
        return {"StorageClass": self.storage_class} if self.storage_class else {}

    def _keep_old(self, put: "_Put") -> None:
        if put.old_key is not None:
            self._copy_to_new(put.key, put.old_key, put.old_name)

    def _copy_to_new(self, src: str, dst: str, dst_name: str | None) -> bool:
        """Copy ``src`` to ``dst``, which must not exist (:class:`AlreadyExists`);
        False when ``src`` does not exist."""
        if self._exists(dst):
            raise AlreadyExists(f"{dst_name} exists already: not replaced", dst_name or dst)
        try:
            return self._copy(src, dst, {"IfNoneMatch": "*"})
        except Exception as exc:
            if _precondition_failed(exc):
                raise AlreadyExists(f"{dst_name} exists already: not replaced", dst_name or dst) from exc
            raise

    def _exists(self, key: str) -> bool:
        import botocore.exceptions

        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    def _refused(self, exc: BaseException, put: "_Put") -> BackendError:
        """The BackendError for a failed PUT or completion of ``put``."""
        if put.conditions and _precondition_failed(exc):
            return AlreadyExists(
                f"{put.name} appeared at the destination during the run: not replaced", put.name
            )
        return self._error(exc, put.name)

    def _put_whole(self, put: "_Put", data: bytearray, digest: str) -> None:
        self._put(put, s3_http.BlockReader(data), len(data), digest)

    def _put_streamed(self, put: "_Put", chunks: Iterable[bytes], size: int) -> None:
        assert put.digest is not None
        before_commit = functools.partial(self.refuse_commit_when_stopped, put.name)
        body = _StreamedBody(chunks, size, put.digest, put.name, before_commit)
        try:
            self._put(put, body, size, put.digest, streamed=True)
        except Exception as exc:
            # What the body raised (the source changed, the run stopped)
            # comes back wrapped in the client's error: say it as it was.
            if body.failure is not None and exc is not body.failure:
                raise body.failure from exc
            raise

    def _put(self, put: "_Put", body, size: int, digest: str, streamed: bool = False) -> None:
        """One PutObject of ``size`` bytes read from ``body``: all or nothing."""
        try:
            self._keep_old(put)
            self.refuse_commit_when_stopped(put.name)
            # A streamed body goes over a plain connection (see s3_http); a
            # whole one through awscrt, which is faster for many small ones.
            client = (self._http if streamed else self._native) if self.native else None
            if client is not None:
                headers = {f"x-amz-meta-{k}": v for k, v in {"blake3": digest, **put.metadata}.items()}
                if self.storage_class:
                    headers["x-amz-storage-class"] = self.storage_class
                if put.conditions:
                    headers["If-None-Match"] = "*"
                (client.put_stream if streamed else client.put)(put.key, body, size, headers)
                return
            self._client.put_object(
                Bucket=self.bucket,
                Key=put.key,
                Body=body,
                ContentLength=size,
                Metadata={"blake3": digest, **put.metadata},
                **put.conditions,
                **self._object_args(),
            )
        except BackendError:
            raise
        except Exception as exc:
            raise self._refused(exc, put) from exc

    def _put_multipart(self, put: "_Put", first: tuple[list[bytes], int], blocks, hasher) -> None:
        """``first``: the first block (in a list, see write) and the budget it holds, handed over to its part."""
        key = put.key
        metadata = {"blake3": put.digest, **put.metadata} if put.digest else put.metadata
        try:
            created = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, Metadata=metadata, **self._object_args()
            )
        except Exception as exc:
            self._budget.give(first[1])
            raise self._error(exc, put.name) from exc
        upload_id = created["UploadId"]
        try:
            parts, size = send_blocks(
                first, blocks, self._budget, self._pool, functools.partial(self._upload_part, key, upload_id), MAX_PARTS
            )
            if put.digest and hasher.hexdigest() != put.digest:
                raise BackendError(f"{put.name}: the bytes sent do not have the BLAKE3 given for them")
            self._keep_old(put)
            self.refuse_commit_when_stopped(put.name)
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **put.conditions
            )
        except BaseException as exc:
            # Interrupted, the source failed, or a part failed: leave no parts behind.
            self._abort(key, upload_id)
            if isinstance(exc, Exception) and _is_s3_error(exc):
                raise self._refused(exc, put) from exc
            raise  # the caller's own exception (it aborted us): hand it back unchanged
        if not put.digest:
            self._add_blake3(key, hasher.hexdigest(), size, put.metadata)

    def _upload_part(self, key: str, upload_id: str, number: int, block: bytearray) -> dict:
        answer = self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=s3_http.BlockReader(block)
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # the original error matters more
            log.warning("could not abort the multipart upload of %s: %s", key, _describe(exc))

    def _add_blake3(self, key: str, digest: str, size: int, metadata: dict[str, str]) -> None:
        """Rewrite a multipart object's metadata in place; see the module notes."""
        if not self.multipart_blake3 or size > self.copy_limit:
            return
        if (self.storage_class or "").upper() in ARCHIVE_CLASSES:
            return
        try:
            self._client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                Metadata={"blake3": digest, **metadata},
                **self._object_args(),
            )
        except Exception as exc:  # the content is complete and correct without it
            log.warning("could not add the blake3 metadata to %s: %s", key, _describe(exc))

    # -- server-side copy and delete ---------------------------------------
    def _copy(self, src: str, dst: str, conditions: dict[str, str]) -> bool:
        """Copy ``src`` to ``dst`` on the server; False when ``src`` does not exist.

        ``conditions`` (If-None-Match) go with a single CopyObject; a larger
        object's multipart copy is checked only by the caller's look-up.
        """
        import botocore.exceptions

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=src)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        storage = self.storage_class or head.get("StorageClass")
        extra = {"StorageClass": storage} if storage else {}
        if head["ContentLength"] <= self.copy_limit:
            self._client.copy_object(
                Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": src}, **conditions, **extra
            )
        else:
            self._multipart_copy(src, dst, head, extra)
        return True

    def _multipart_copy(self, src: str, dst: str, head: dict, extra: dict) -> None:
        """CopyObject stops at 5 GiB; larger objects are copied range by range."""
        size = head["ContentLength"]
        part = max(self._part_size_for(size), min(self.copy_limit, 512 * MiB))
        upload_id = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=dst, Metadata=head.get("Metadata", {}), **extra
        )["UploadId"]
        try:
            ranges = [(n + 1, start, min(start + part, size) - 1) for n, start in enumerate(range(0, size, part))]
            parts = list(self._pool.map(lambda r: self._copy_part(src, dst, upload_id, *r), ranges))
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=dst, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._abort(dst, upload_id)
            raise

    def _copy_part(self, src: str, dst: str, upload_id: str, number: int, first: int, last: int) -> dict:
        answer = self._client.upload_part_copy(
            Bucket=self.bucket,
            Key=dst,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": src},
            CopySourceRange=f"bytes={first}-{last}",
        )
        etag = answer.get("CopyPartResult", {}).get("ETag")
        if not etag:
            raise FatalBackendError("the server does not support multipart copy (UploadPartCopy)")
        return {"PartNumber": number, "ETag": etag}

    def _delete_batch(self, keys: list[str], names: dict[str, str]) -> dict[str, str]:
        """Delete up to 1,000 keys in one request; return name -> reason for each failure."""
        request = {"Objects": [{"Key": k} for k in keys], "Quiet": True}
        try:
            answer = self._client.delete_objects(Bucket=self.bucket, Delete=request)
        except Exception as exc:
            reason = str(self._error(exc, "delete"))
            return {names[k]: reason for k in keys}
        return _delete_failures(answer, names)

    # -- errors ------------------------------------------------------------
    def _error(self, exc: BaseException, what: str, first_contact: bool = False) -> BackendError:
        """Turn a boto3 error into a BackendError that says what is wrong (never a secret)."""
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, s3_http.NativeError):
            if exc.status:
                return self._client_error(exc.code, exc.status, str(exc), what)
            return self._unreachable(str(exc), first_contact)
        import botocore.exceptions

        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return FatalBackendError(
                "no S3 credentials: give aws-access-key-id and aws-secret-access-key, "
                "or set up boto3's credential chain (environment, profile, instance role)"
            )
        if isinstance(exc, botocore.exceptions.ClientError):
            return self._client_error(_code(exc), _status(exc), _describe(exc), what)
        if isinstance(exc, _connection_errors()):
            return self._unreachable(_describe(exc), first_contact)
        return BackendError(f"{what}: {_describe(exc)}")

    def _unreachable(self, described: str, first_contact: bool) -> BackendError:
        """No answer from the endpoint: at first contact a setting to fix; later, a blip to retry."""
        if not first_contact:
            return BackendError(f"cannot reach the S3 endpoint {self._where()}: {described}")
        # A TLS handshake with a plain-HTTP server (rclone serve s3, MinIO
        # without certificates) fails with no word of why; one plain request
        # tells that case apart.
        if self.endpoint and self.endpoint.startswith("https://") and _speaks_plain_http_only(self.endpoint):
            host = self.endpoint.removeprefix("https://")
            server_name = self.values["s3-server-name"] or ""
            fix = (
                f"write s3-server-name=http://{host} (use-ssl=false does not change a URL's https://)"
                if "://" in server_name
                else "set use-ssl=false"
            )
            return FatalBackendError(f"the S3 endpoint {host} speaks plain HTTP, not TLS: {fix}")
        return FatalBackendError(f"cannot reach the S3 endpoint {self._where()}: {described}")

    def _client_error(self, code: str, status: int, described: str, what: str) -> BackendError:
        if code == "NoSuchBucket":
            # NotFound is the contract's word for a missing root: a dry run reads
            # it as an empty destination, a source as a fatal error.
            return NotFound(f"bucket {self.bucket} does not exist at {self._where()}")
        if code in AUTH_CODES or status == 403:
            return FatalBackendError(
                f"access to bucket {self.bucket} at {self._where()} was refused ({code}): "
                "check aws-access-key-id, aws-secret-access-key and the bucket's permissions"
            )
        if code == "NoSuchUpload":
            # The server forgot the upload (it restarted, or expired it): the
            # object itself is fine to write again from its first part.
            return BackendError(f"{what}: the server lost the multipart upload ({described}); it starts over")
        if code in ("NoSuchKey", "404") or status == 404:
            return NotFound(f"{what}: no such object")
        if code == "PreconditionFailed" or status == 412:
            # If-Match refused: the object was replaced while we read it.
            err = BackendError(f"{what}: the object changed while being read")
            err.retryable = True
            return err
        err = BackendError(f"{what}: {described}")
        err.retryable = status >= 500 or code in RETRY_CODES
        return err


# -- helpers -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Put:
    """One object being written, and what goes with it."""

    key: str
    name: str
    old_key: str | None  # keep the object now under ``key`` here first
    old_name: str | None
    metadata: dict[str, str]  # x-amz-meta-* besides blake3
    conditions: dict[str, str]  # {"IfNoneMatch": "*"}: never over an existing object
    digest: str | None = None  # the content's BLAKE3, known before its bytes (see digest_first)


class _StreamedBody:
    """The chunks of one streamed PUT, as the file botocore sends.

    A PUT cut short of its Content-Length stores nothing, so the last chunk
    is held back until the stream has ended cleanly: exactly ``size`` bytes,
    hashing to ``digest`` (the source's own checks, run as its iteration
    ends, passed too), and the run was not stopped (``before_commit``). Not
    seekable: a connection lost mid-way fails the request, and the job is
    tried again from the start of the file. (It has ``seek`` and ``tell``
    all the same, for botocore's signer, which takes only what has them for
    a stream; they move nowhere.)
    """

    def __init__(self, chunks: Iterable[bytes], size: int, digest: str, name: str, before_commit: Callable[[], None]):
        self._chunks = iter(chunks)
        self._size = size
        self._digest = digest
        self._name = name
        self._before_commit = before_commit
        self._hasher = blake3.blake3(max_threads=1)
        self._count = 0
        self._view = memoryview(b"")
        #: What this body raised, should the HTTP stack wrap it.
        self.failure: BaseException | None = None
        self._ahead = self._pull()  # the next chunk, read before the current one goes out

    def read(self, n: int = -1) -> bytes:
        try:
            if not self._view:
                if self._ahead is None:
                    return b""
                self._view = memoryview(self._ahead)
                self._ahead = self._pull()
            n = len(self._view) if n is None or n < 0 else n
            piece, self._view = self._view[:n], self._view[n:]
            return bytes(piece)
        except BaseException as exc:
            self.failure = exc
            raise

    def tell(self) -> int:
        return self._count - len(self._view) - len(self._ahead or b"")

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        here = self.tell()
        if (whence, offset) not in ((os.SEEK_SET, here), (os.SEEK_CUR, 0)):
            raise io.UnsupportedOperation("a streamed body cannot go back")
        return here

    def _pull(self) -> bytes | None:
        chunk = next(self._chunks, None)
        if chunk is None:
            if self._count != self._size or self._hasher.hexdigest() != self._digest:
                raise BackendError(f"{self._name}: the bytes read do not have the size and BLAKE3 given for them")
            self._before_commit()
            return None
        self._count += len(chunk)
        if self._count > self._size:
            raise BackendError(f"{self._name}: more bytes than the {self._size} given for it")
        self._hasher.update(chunk)
        return chunk


def _precondition_failed(exc: BaseException) -> bool:
    """A conditional request refused (412): the name exists."""
    if isinstance(exc, s3_http.NativeError):
        return exc.status == 412
    response = getattr(exc, "response", None)
    return bool(response) and (_status(exc) == 412 or _code(exc) == "PreconditionFailed")


def without_expect_continue(client):
    """Send PutObject without ``Expect: 100-continue``; returns ``client``.

    Waiting for the server's go-ahead costs a round trip per object (a
    streamed PUT's refusal comes all the same, only after its body). Worse,
    after an empty PUT with that header, rclone serve s3 leaves a stray
    response on the connection and the next request hangs until the read
    timeout.
    Parts (UploadPart) keep the header.
    """

    def drop(request, **_):
        if "Expect" in request.headers:
            del request.headers["Expect"]

    client.meta.events.register("before-send.s3.PutObject", drop)
    return client


def _delete_failures(answer: dict, names: dict[str, str]) -> dict[str, str]:
    """name -> reason for each key a DeleteObjects answer reports as not deleted."""
    failures = {}
    for err in answer.get("Errors", ()):
        if err.get("Code") == "NoSuchKey":
            continue  # already gone: what we wanted
        key = err.get("Key", "")
        failures[names.get(key, key)] = f"{err.get('Code')}: {err.get('Message', '')}".strip()
    return failures


def _is_s3_error(exc: BaseException) -> bool:
    import botocore.exceptions

    return isinstance(exc, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, *_connection_errors()))


def _code(exc) -> str:
    """S3's error code of a botocore ClientError."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc) -> int:
    """The HTTP status of a botocore ClientError."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _describe(exc: BaseException) -> str:
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return str(exc) or type(exc).__name__


def _bucket_name(url: str) -> str:
    """The bucket as written: urlsplit lowercases hosts, legacy buckets may not be."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    bucket = unquote(re.sub(r":\d*$", "", netloc))
    if not bucket:
        raise FatalBackendError("an S3 backend needs a bucket: s3://BUCKET/PREFIX")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", bucket):
        # A '/' or '%' here could reach the server as part of the request
        # path and name another bucket or a prefix in it.
        raise FatalBackendError(f"{bucket!r} is not a bucket name: letters, digits, '.', '-' and '_' only")
    return bucket


def _speaks_plain_http_only(endpoint: str) -> bool:
    """Whether the server at ``endpoint`` refuses a TLS handshake but answers a plain HTTP request."""
    import ssl

    parts = urlsplit(endpoint)
    address = (parts.hostname, parts.port or 443)
    # Certificates are not checked here: a server whose TLS works, with a
    # certificate we would refuse, is not the plain-HTTP case.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(address, timeout=2) as sock:
            try:
                context.wrap_socket(sock, server_hostname=parts.hostname).close()
                return False
            except ssl.SSLError:
                pass
        with socket.create_connection(address, timeout=2) as sock:
            sock.sendall(f"HEAD / HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
            head = b""
            while len(head) < 5 and (chunk := sock.recv(5 - len(head))):
                head += chunk
            return head == b"HTTP/"
    except OSError:
        return False


def _endpoint(values: dict[str, Any], tls_default: bool) -> tuple[str | None, bool]:
    """(endpoint URL or None for AWS's own, whether it is AWS)."""
    server = (values["s3-server-name"] or "").strip()
    if not server:
        return None, True
    if "://" in server:
        parts = urlsplit(server)
        # Drop any user:password so the endpoint can appear in messages.
        host = parts.netloc.rpartition("@")[2]
        url = f"{parts.scheme}://{host}{parts.path.rstrip('/')}"
    else:
        host = server.rstrip("/")
        is_aws = _is_aws_host(host)
        # Duplicati leaves TLS off unless asked; AWS hosts get it anyway.
        tls = values["use-ssl"]
        if tls is None:
            tls = tls_default or is_aws
        url = f"{'https' if tls else 'http'}://{host}"
    return url, _is_aws_host(host)


def _dns_bucket(bucket: str) -> bool:
    """Whether a bucket name can lead a host name (virtual-host addressing)."""
    return re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket) is not None


def _is_aws_host(host: str) -> bool:
    name = re.sub(r":\d*$", "", host).lower()
    return name == "amazonaws.com" or name.endswith(".amazonaws.com")


def _credentials(values: dict[str, Any], location) -> dict[str, str]:
    """Keys for boto3's Session; empty means boto3's own credential chain."""
    key = values["aws-access-key-id"] or values["auth-username"] or location.user
    secret = values["aws-secret-access-key"] or values["auth-password"] or location.password
    token = values["aws-session-token"]
    if bool(key) != bool(secret):
        raise FatalBackendError("give both aws-access-key-id and aws-secret-access-key, or neither")
    if not key:
        return {}
    creds = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    if token:
        creds["aws_session_token"] = token
    return creds
