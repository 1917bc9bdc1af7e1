"""Azure Blob Storage: ``azure://CONTAINER/PREFIX``.

Option names are Duplicati's (azure-account-name, azure-access-key,
azure-access-sas-token, ...), so its scripts keep working; ``azure-endpoint``
points at another blob service than ``https://ACCOUNT.blob.core.windows.net``
(Azurite: ``http://127.0.0.1:10000/ACCOUNT``), and a few ``azure-*`` options of
our own tune the block upload. Listing, small writes, reads and look-ups go
over plain HTTP (:mod:`synctool.backends.azure_rest`); blocks, copies, batch
deletes and containers through azure-storage-blob (the ``azure`` extra).

Writes: a small file is one Put Blob. A larger one is staged block by block,
several at once, and becomes visible only when its block list is committed
at the end: nothing shows under the name before the content is complete,
and a write that fails leaves only uncommitted blocks, which no listing shows
and Azure drops after a week (there is no call that removes them sooner).
Memory: what one process's writes hold is bounded in bytes,
``azure-blocks-in-flight x azure-block-size`` (see
:mod:`synctool.backends.budget`); a read holds one chunk of its single
streamed GET. The BLAKE3 of the content and the source's mtime (``mtime``, in
rclone's RFC 3339 form) travel as blob metadata; Azure lists the upload
time, and ``stored_mtime`` reads the source's back.

What is atomic, and what is not:

* Nothing is written over a name the caller did not mean to replace. A new
  file's Put Blob or Put Block List carries ``If-None-Match: *``, and so does
  every server-side copy to a retention or renamed name: Azure (and
  Azurite) refuse it with 409 when the name exists. No race remains there.
* ``keep_old_as`` copies the old blob to its retention name (Copy Blob,
  pinned to the version it read) before the new content is committed, and
  the commit is pinned to that same version: if another writer replaced the
  blob in between, the commit is refused and nothing of theirs is lost. If
  our write fails after the copy, the old blob stays as it was and a spare
  copy remains under the retention name.
* A rename is a copy then a delete, both pinned to the version copied: a
  blob replaced between the two is left in place. A copy within one account
  usually completes at once (on Azurite always); one that stays pending is
  waited for, and a run killed during that wait leaves the new name holding
  a copy still in progress.
* ``write``'s ``check`` (--verify-get-after-put) can only read a blob once
  committed: a rejected blob is deleted (only the version we wrote), and the
  worker keeps a journal of what it has written but not yet read back (see
  ``workers/journal.py``).

Containers: a missing container is created for the destination
(``prepare(create=True)`` with auto-create-folders, on by default) and is an
error for the source. A source prefix with no blob under it counts as
missing too: a mistyped prefix would otherwise mirror as "delete everything".

Blobs in the Archive tier cannot be read until rehydrated: reading one fails
for that file with a message that says so. azure-archive-classes and
azure-blob-immutability-policy-mode are taken for Duplicati's scripts and
have no effect here (synctool locks no file and lists every tier).
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import functools
import importlib.util
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import urllib3

from synctool.backends.base import (
    AlreadyExists,
    Backend,
    BackendError,
    BackendSpec,
    JOURNAL_START,
    Entry,
    FatalBackendError,
    NotFound,
    Place,
    check_name,
    is_journal,
)
from synctool.backends import key_ranges
from synctool.backends.azure_rest import BlobREST, RESTError
from synctool.backends.budget import ByteBudget, block_size_for, send_blocks, store
from synctool.backends.objectstore import delete_in_batches, object_prefix, storage_name
from synctool.backends.optiontable import Option, table

log = logging.getLogger("synctool.backends.azure")

# The client library (0.3 s to import, azure-core included) is imported where
# blocks, copies, deletes or errors first need it: a sync with nothing to copy
# never does. Without it the registry's message names the extra to install.
if importlib.util.find_spec("azure.storage.blob") is None:
    raise ImportError("No module named 'azure.storage.blob'", name="azure.storage.blob")

MiB = 1 << 20
READ_CHUNK = MiB
MAX_BLOCKS = 50_000  # Azure's most committed blocks in one blob
BLOCK_HEADROOM = 45_000  # size blocks for this many, in case the file grew since listing
MAX_BLOCK = 4000 * MiB  # Azure's largest block
DELETE_BATCH = 256  # Azure's most sub-requests in one blob batch
LIST_PAGE = 5000  # Azure's most blobs in one listing page
LIST_THREADS = 4  # key ranges listed at once
COPY_POLL = 0.2  # seconds between looks at a copy still pending
#: Error codes that mean "these credentials are not accepted here".
AUTH_CODES = frozenset(
    {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch", "InvalidAuthenticationInfo"}
)
RETRY_CODES = frozenset({"ServerBusy", "OperationTimedOut", "InternalError"})
_CONTAINER_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", re.IGNORECASE)

# Guards opening a backend's client; a child process gets a fresh one, since a
# fork may copy it locked by a thread that does not exist in the child.
_open_lock = threading.RLock()


def _new_open_lock() -> None:
    global _open_lock
    _open_lock = threading.RLock()


os.register_at_fork(after_in_child=_new_open_lock)


class AzureBackend(Backend):
    schemes = ("azure",)
    options = table(
        Option("azure-account-name", "text", None, "storage account name (or the URL's user name, or auth-username)"),
        Option("azure-access-key", "text", None, "the account's access key (or the URL's password, or auth-password)",
               secret=True),
        Option("azure-access-sas-token", "text", None, "a shared access signature (SAS) token instead of the key",
               secret=True),
        Option("auth-username", "text", None, "alias of azure-account-name"),
        Option("auth-password", "text", None, "alias of azure-access-key", secret=True),
        Option("azure-endpoint", "text", None,
               "blob service URL (default https://ACCOUNT.blob.core.windows.net; Azurite: http://127.0.0.1:10000/ACCOUNT)"),
        Option("azure-access-tier", "choice", None, "access tier of new blobs (default: the account's)",
               choices=("Hot", "Cool", "Cold", "Archive")),
        Option("azure-archive-classes", "text", "Cold,Archive",
               "Duplicati's tiers it keeps away from; taken and ignored (synctool lists every tier, and an "
               "Archive blob fails to read with a message that says so)"),
        Option("azure-blob-immutability-policy-mode", "choice", "Unlocked",
               "Duplicati's mode for locking files; taken and ignored (synctool locks no file)",
               choices=("Unlocked", "Locked", "Mutable")),
        Option("azure-internal-retries", "int", 3, "retries of one request within the client (0: none)", minimum=0),
        Option("short-timeout", "duration", 30.0, "time to connect to the blob service", minimum=0.001),
        Option("read-write-timeout", "duration", 30.0, "time one read or write may wait for the service",
               minimum=0.001),
        Option("list-timeout", "duration", 600.0, "time one page of a listing may take", minimum=0.001),
        Option("auto-create-folders", "bool", True, "create a missing destination container"),
        Option("azure-block-size", "size", 4 * MiB,
               "block size of large blobs, also the largest blob sent in one request (grows to stay under "
               "50,000 blocks)", minimum=64 << 10),
        Option("azure-blocks-in-flight", "int", 4, "blocks one process sends at once: with the block size, its "
               "memory for writes", minimum=1),
        Option("azure-concurrency", "int", 8, "jobs one worker process runs at once", minimum=1),
    )  # fmt: skip
    concurrency = 8
    mtime_precision = 1.0
    keeps_mtime = False
    verifies_before_commit = False
    # Azure takes 1,024-character names with no limit per segment, but a
    # mirror is there to come back to a file system, where a segment stops
    # at 255 bytes: retention names are kept within that.
    max_segment_bytes = 255

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        v = self.values
        self.container = _container_name(self.location.host)
        self.prefix = object_prefix(self.location.path)
        self.account = v["azure-account-name"] or self.location.user or v["auth-username"]
        if not self.account:
            raise FatalBackendError(
                "no Azure storage account name: give azure-account-name (or azure://ACCOUNT@CONTAINER)"
            )
        self.key = v["azure-access-key"] or self.location.password or v["auth-password"]
        self.sas_token = (v["azure-access-sas-token"] or "").lstrip("?") or None
        if not self.key and not self.sas_token:
            raise FatalBackendError("no Azure access key or SAS token: give azure-access-key or azure-access-sas-token")
        if self.key and not self.sas_token:
            try:
                base64.b64decode(self.key, validate=True)
            except ValueError:
                raise FatalBackendError("azure-access-key is no Azure access key: those are base64 text") from None
        self.endpoint = _endpoint(v["azure-endpoint"], self.account)
        self.block_size = min(v["azure-block-size"], MAX_BLOCK)
        self.blocks_in_flight = v["azure-blocks-in-flight"]
        self.concurrency = v["azure-concurrency"]
        self.tier = v["azure-access-tier"]
        self._pid = -1  # the process that opened the clients, pool and budget below
        self._rest_obj: BlobREST | None = None
        self._sdk_obj = None
        self._pool_obj: ThreadPoolExecutor | None = None
        self._budget_obj: ByteBudget | None = None

    # -- connection ------------------------------------------------------
    def _ensure_open(self) -> None:
        """Open the HTTP pool, block pool and budget once per process.

        A forked child opens its own: the parent's connections and threads
        mean nothing there.
        """
        if self._pid == os.getpid():
            return
        with _open_lock:
            if self._pid != os.getpid():
                self._rest_obj = BlobREST(
                    self.endpoint, self.account, self.container, key=self.key, sas_token=self.sas_token,
                    connections=self.concurrency + 2, retries=self.values["azure-internal-retries"],
                    timeout=urllib3.Timeout(connect=self.values["short-timeout"],
                                            read=self.values["read-write-timeout"]),
                )  # fmt: skip
                self._sdk_obj = None
                self._pool_obj = ThreadPoolExecutor(self.blocks_in_flight, thread_name_prefix="azure-block")
                self._budget_obj = ByteBudget(self.blocks_in_flight * self.block_size)
                self._pid = os.getpid()

    @property
    def _rest(self) -> BlobREST:
        self._ensure_open()
        assert self._rest_obj is not None
        return self._rest_obj

    @property
    def _sdk(self):
        """The client library's client for the container: blocks, copies, batch deletes; made on first use."""
        self._ensure_open()
        if self._sdk_obj is None:
            with _open_lock:
                if self._sdk_obj is None:
                    self._sdk_obj = self._new_sdk_client(self.blocks_in_flight + 4)
        return self._sdk_obj

    def _new_sdk_client(self, connections: int):
        """A client for the container with its own connection pool, big enough for ``connections``."""
        import requests
        from azure.storage.blob import ContainerClient, LinearRetry

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=connections)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        credential = self.sas_token or {"account_name": self.account, "account_key": self.key}
        return ContainerClient(
            self.endpoint,
            self.container,
            credential=credential,
            session=session,
            # The client's default backs off from 15 s: each request to a dead
            # server would take minutes. Half a second between tries bridges a
            # blip such as a dropped keep-alive connection; a longer outage is
            # for the coordinator's --retry and its delay.
            retry_policy=LinearRetry(backoff=0.5, random_jitter_range=0,
                                     retry_total=self.values["azure-internal-retries"]),
            connection_timeout=self.values["short-timeout"],
            read_timeout=self.values["read-write-timeout"],
        )  # fmt: skip

    @property
    def _pool(self) -> ThreadPoolExecutor:
        self._ensure_open()
        assert self._pool_obj is not None
        return self._pool_obj

    @property
    def _budget(self) -> ByteBudget:
        self._ensure_open()
        assert self._budget_obj is not None
        return self._budget_obj

    def close(self) -> None:
        if self._pid != os.getpid():
            return  # never touch a parent's connections from a forked child
        if self._pool_obj is not None:
            self._pool_obj.shutdown(wait=True)
        if self._sdk_obj is not None:
            self._sdk_obj.close()
        if self._rest_obj is not None:
            self._rest_obj.close()
        self._rest_obj = self._sdk_obj = self._pool_obj = self._budget_obj = None
        self._pid = -1

    def display_url(self) -> str:
        return f"azure://{self.container}/{self.prefix}"

    def root_place(self) -> Place:
        path = self.prefix[:-1]  # without the '/' that _prefix adds
        return Place(("azure", storage_name(self.endpoint, "azure-endpoint"), self.container), path,
                     f"{self.display_url()} at {self.endpoint}")  # fmt: skip

    def details(self) -> dict[str, str]:
        return {"scheme": "azure", "endpoint": self.endpoint, "account": self.account, "container": self.container,
                "prefix": self.prefix, "authentication": "SAS token" if self.sas_token else "access key"}  # fmt: skip

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    # -- Backend ---------------------------------------------------------
    def prepare(self, create: bool) -> None:
        try:
            exists = self._rest.container_exists()
        except Exception as exc:
            raise self._error(exc, f"container {self.container}", first_contact=True) from exc
        if not exists:
            self._missing_container(create)
        elif not create and self.prefix and not self._prefix_has_blobs():
            raise NotFound(
                f"nothing under azure://{self.container}/{self.prefix} at {self.endpoint} (empty or mistyped prefix?)"
            )

    def _missing_container(self, create: bool) -> None:
        missing = f"container {self.container} does not exist at {self.endpoint}"
        if not create:
            # NotFound is the contract's word for a missing root: a dry run
            # reads it as an empty destination, a source as a fatal error.
            raise NotFound(missing)
        if not self.values["auto-create-folders"]:
            raise FatalBackendError(f"{missing} (and auto-create-folders is off)")
        from azure.core.exceptions import ResourceExistsError

        try:
            self._sdk.create_container()
        except ResourceExistsError:
            return  # created by someone else meanwhile: as good
        except Exception as exc:
            raise self._error(exc, f"creating container {self.container}", first_contact=True) from exc
        log.info("created container %s at %s", self.container, self.endpoint)

    def _prefix_has_blobs(self) -> bool:
        try:
            return bool(self._rest.list_page(self.prefix, None, 1)[0])
        except Exception as exc:
            raise self._error(exc, f"listing {self.display_url()}") from exc

    def list(self, start_after: str | None = None, starting: str = "") -> Iterator[Entry]:
        """Every blob below the root; ``starting``: only names that start so."""
        after = None if start_after is None else self.prefix + start_after
        try:
            # A few pages per key range at a time (see key_ranges): the plan holds the rest.
            for blob in key_ranges.ordered_keys(self._page, self.prefix + starting, after, LIST_THREADS):
                name = blob["Key"][len(self.prefix) :]
                if not name or (blob["Size"] == 0 and name.endswith("/")):
                    continue  # the prefix itself, or a folder marker made by other tools
                # Unsafe names (../x, a//b) are passed on: the plan refuses them by name.
                yield Entry(name, blob["Size"], blob["Mtime"])
        except Exception as exc:
            raise self._error(exc, f"listing {self.display_url()}") from exc

    def _page(self, prefix: str, start_after: str | None, marker: str | None, delimited: bool) -> key_ranges.Page:
        """One page of a key range. Blob storage has no start-after: a listing
        resumed after a name lists the names before it again, and skips them."""
        blobs, marker, prefixes = self._rest.list_page(prefix, marker, LIST_PAGE, self.values["list-timeout"], delimited)
        objects = [{"Key": key, "Size": size, "Mtime": mtime} for key, size, mtime in blobs]
        if start_after is not None:
            objects = [o for o in objects if o["Key"] > start_after]
            prefixes = [p for p in prefixes if p > start_after or start_after.startswith(p)]
        return key_ranges.Page(objects, prefixes, marker)

    def journals(self) -> list[str]:
        return [e.name for e in self.list(starting=JOURNAL_START) if is_journal(e.name)]

    def read(self, name: str) -> Iterator[bytes]:
        try:
            # One request, streamed: a single answer cannot splice two versions.
            yield from self._rest.get_blob(self._key(name), READ_CHUNK)
        except Exception as exc:
            raise self._error(exc, name) from exc

    def stored_mtime(self, name: str) -> float | None:
        try:
            headers = self._rest.properties(self._key(name))
        except Exception as exc:
            raise self._error(exc, name) from exc
        return None if headers is None else _parse_mtime(headers.get("x-ms-meta-mtime", ""))

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
        put = _Put(
            self._key(name),
            name,
            self._key(keep_old_as) if keep_old_as is not None else None,
            keep_old_as,
            {"mtime": _format_mtime(mtime)} if mtime is not None else {},
            overwrite,
        )
        etag = self._store(put, chunks, size)
        if check is None:
            return
        try:
            check(self.read(name))
        except BaseException:
            # Nothing that failed its read-back stays under the name (only the
            # version we wrote goes): the old version, if it was to be kept,
            # is already under keep_old_as.
            with contextlib.suppress(Exception):
                self._sdk.delete_blob(put.key, **_sdk_conditions(etag))
            raise

    def rename(self, old: str, new: str) -> None:
        from azure.core.exceptions import ResourceModifiedError

        old_key, new_key = self._key(old), self._key(new)
        try:
            etag = self._copy_to_new(old_key, new_key, new)
            if etag is None:
                raise NotFound(f"{old}: no such blob")
            try:
                self._sdk.delete_blob(old_key, **_sdk_conditions(etag))
            except ResourceModifiedError:
                log.warning("%s was replaced while being renamed to %s: the new version stays under %s", old, new, old)
        except BackendError:
            raise
        except Exception as exc:
            raise self._error(exc, old) from exc

    def delete(self, names: Sequence[str]) -> None:
        delete_in_batches(names, self._key, DELETE_BATCH, self._delete_batch)

    # -- writing ---------------------------------------------------------
    def _store(self, put: "_Put", chunks: Iterable[bytes], size: int) -> str:
        """Write ``put`` from ``chunks``; returns the new blob's ETag."""
        block_size = min(MAX_BLOCK, block_size_for(size, self.block_size, BLOCK_HEADROOM))
        return store(chunks, size, block_size, self._budget, functools.partial(self._put_whole, put),
                     functools.partial(self._put_blocks, put))  # fmt: skip

    def _put_whole(self, put: "_Put", data: bytearray, digest: str) -> str:
        try:
            condition = self._keep_old(put)
            self.refuse_commit_when_stopped(put.name)
            body = bytes(data)
            data.clear()  # the copy is what goes out
            headers = {f"x-ms-meta-{k}": v for k, v in {"blake3": digest, **put.metadata}.items()}
            if self.tier:
                headers["x-ms-access-tier"] = self.tier
            return self._rest.put_blob(put.key, body, {**headers, **_rest_conditions(condition)})
        except BackendError:
            raise
        except Exception as exc:
            raise self._refused(exc, put) from exc

    def _put_blocks(self, put: "_Put", first: tuple[list[bytearray], int], blocks, hasher) -> str:
        """Stage every block, several at once, then commit the list; ``first`` as in :func:`send_blocks`."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import BlobBlock

        blob = self._sdk.get_blob_client(put.key)
        write_id = os.urandom(9).hex()  # a blob's block ids must all be as long: 18 + 6 characters
        try:
            ids, _size = send_blocks(
                first, blocks, self._budget, self._pool, functools.partial(_stage, blob, write_id), MAX_BLOCKS
            )
            condition = self._keep_old(put)
            self.refuse_commit_when_stopped(put.name)
            answer = blob.commit_block_list(
                [BlobBlock(block_id=i) for i in ids], metadata={"blake3": hasher.hexdigest(), **put.metadata},
                standard_blob_tier=self.tier, **_sdk_conditions(condition),
            )  # fmt: skip
        except BackendError:
            raise
        except Exception as exc:
            if isinstance(exc, AzureError):
                # Staged blocks that are never committed show nowhere; Azure drops them.
                raise self._refused(exc, put) from exc
            raise  # the caller's own exception (it aborted us): hand it back unchanged
        return answer["etag"]

    def _keep_old(self, put: "_Put") -> str | None:
        """Copy the blob now under the name to ``keep_old_as``, if asked.

        Returns the condition for the write: the ETag of the version kept
        (or "*" when there was none) so that nothing written meanwhile is
        replaced unkept; "*" when the name must be new; None: no condition.
        """
        if put.old_key is not None:
            etag = self._copy_to_new(put.key, put.old_key, put.old_name)
            return etag if etag is not None else "*"
        return None if put.overwrite else "*"

    def _copy_to_new(self, source_key: str, target_key: str, target_name: str | None) -> str | None:
        """Copy ``source_key`` to ``target_key``, which must not exist (:class:`AlreadyExists`).

        Returns the ETag of the source version copied; None when the source
        does not exist.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        headers = self._rest.properties(source_key)
        if headers is None:
            return None
        etag = headers["ETag"]
        source, target = self._sdk.get_blob_client(source_key), self._sdk.get_blob_client(target_key)
        try:
            answer = target.start_copy_from_url(
                source.url, source_etag=etag, source_match_condition=MatchConditions.IfNotModified,
                **_sdk_conditions("*"),
            )  # fmt: skip
        except ResourceExistsError as exc:
            raise AlreadyExists(f"{target_name} exists already: not replaced", target_name or target_key) from exc
        except ResourceModifiedError as exc:
            raise self._changed(target_name or "", "while being copied") from exc
        self._wait_for_copy(target, answer)
        return etag

    def _wait_for_copy(self, target, answer: dict) -> None:
        """Return once a copy has completed; see the module notes."""
        status = answer.get("copy_status")
        while status == "pending":
            time.sleep(COPY_POLL)
            status = target.get_blob_properties().copy.status
        if status not in (None, "success"):
            with contextlib.suppress(Exception):
                target.delete_blob()
            raise BackendError(f"{target.blob_name}: the server-side copy ended as {status}")

    def _delete_batch(self, keys: list[str], names: dict[str, str]) -> dict[str, str]:
        """Delete up to 256 blobs in one batch request; return name -> reason for each failure."""
        try:
            answers = list(self._sdk.delete_blobs(*keys, raise_on_any_failure=False))
        except Exception as exc:
            reason = str(self._error(exc, "delete"))
            return {names[k]: reason for k in keys}
        failures = {}
        for key, answer in zip(keys, answers):
            if answer.status_code not in (200, 202, 404):  # 404: already gone, as wanted
                failures[names[key]] = f"{answer.status_code} {answer.reason or ''}".strip()
        return failures

    # -- errors ------------------------------------------------------------
    def _refused(self, exc: BaseException, put: "_Put") -> BackendError:
        """The BackendError for a failed Put Blob or Put Block List of ``put``."""
        code, status = getattr(exc, "error_code", None), getattr(exc, "status_code", None)
        if status == 409 and code == "BlobAlreadyExists":
            return AlreadyExists(f"{put.name} appeared at the destination during the run: not replaced", put.name)
        if status == 412 and put.old_key is not None:
            return self._changed(put.name, "after its old version was kept: its new version is not replaced")
        return self._error(exc, put.name)

    def _changed(self, name: str, when: str) -> BackendError:
        err = BackendError(f"{name}: the blob changed {when}")
        err.retryable = True
        return err

    def _error(self, exc: BaseException, what: str, first_contact: bool = False) -> BackendError:
        """Turn an Azure error into a BackendError that says what is wrong (never a secret)."""
        if isinstance(exc, BackendError):
            return exc
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        if isinstance(exc, (HttpResponseError, RESTError)) and exc.status_code:
            return self._http_error(exc, what)
        if isinstance(exc, (ServiceRequestError, ServiceResponseError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            # At first contact a dead endpoint is a setting to fix; later, a blip to retry.
            unreachable = FatalBackendError if first_contact else BackendError
            return unreachable(f"cannot reach the Azure endpoint {self.endpoint}: {_describe(exc)}")
        return BackendError(f"{what}: {_describe(exc)}")

    def _http_error(self, exc, what: str) -> BackendError:
        code, status = str(exc.error_code or ""), int(exc.status_code)
        if code == "ContainerNotFound":
            return NotFound(f"container {self.container} does not exist at {self.endpoint}")
        if code in AUTH_CODES or status in (401, 403):
            return FatalBackendError(
                f"access to container {self.container} of account {self.account} at {self.endpoint} was refused "
                f"({code or status}): check azure-access-key or azure-access-sas-token and its permissions"
            )
        if status == 404:
            return NotFound(f"{what}: no such blob")
        if status == 412:
            return self._changed(what, "while being read")
        if code == "BlobArchived":
            return BackendError(f"{what}: the blob is in the Archive tier: rehydrate it to read it")
        err = BackendError(f"{what}: {_describe(exc)}")
        err.retryable = status >= 500 or status in (408, 429) or code in RETRY_CODES
        return err


# -- helpers -----------------------------------------------------------------
class _Put:
    """One blob being written, and what goes with it."""

    def __init__(self, key: str, name: str, old_key: str | None, old_name: str | None, metadata: dict[str, str],
                 overwrite: bool):  # fmt: skip
        self.key, self.name = key, name
        self.old_key, self.old_name = old_key, old_name  # keep the blob now under the name here first
        self.metadata = metadata  # besides blake3
        self.overwrite = overwrite  # False: never over an existing blob (If-None-Match: *)


def _stage(blob, write_id: str, number: int, block: bytearray) -> str:
    """Stage one block of ``blob``; returns its id for the block list."""
    block_id = f"{write_id}{number:06d}"
    body = bytes(block)
    block.clear()  # the copy is what goes out
    blob.stage_block(block_id, body, length=len(body))
    return block_id


def _sdk_conditions(condition: str | None) -> dict:
    """A write's condition for the client library: None (none), "*" (no blob
    holds the name: If-None-Match) or an ETag (that version: If-Match)."""
    from azure.core import MatchConditions

    if condition is None:
        return {}
    if condition == "*":
        return {"match_condition": MatchConditions.IfMissing}
    return {"etag": condition, "match_condition": MatchConditions.IfNotModified}


def _rest_conditions(condition: str | None) -> dict[str, str]:
    """The same condition as request headers."""
    if condition is None:
        return {}
    return {"If-None-Match": "*"} if condition == "*" else {"If-Match": condition}


def _describe(exc: BaseException) -> str:
    """An error in one line, without the request URL: with a SAS token its query is a secret."""
    code = getattr(exc, "error_code", None)
    text = str(getattr(exc, "reason", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"\?\S*", "?...", text)
    return f"{code}: {text}" if code else text


def _format_mtime(mtime: float) -> str:
    """rclone's form of a blob's mtime: RFC 3339 in UTC with nanoseconds."""
    whole = math.floor(mtime)
    nanos = round((mtime - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


def _parse_mtime(text: str) -> float | None:
    """Seconds in an RFC 3339 time (rclone's and ours) or a plain number; None for anything else."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        try:
            return float(text)
        except ValueError:
            return None  # written by another tool
    stamp, fraction, zone = match.groups()
    seconds = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")
    if zone.upper() != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def _container_name(host: str | None) -> str:
    """The container as Duplicati reads it: the URL's host, in lower case (urlsplit lowers it)."""
    name = host or ""
    if not _CONTAINER_RE.fullmatch(name):
        raise FatalBackendError(
            f"{name!r} is not an Azure container name: azure://CONTAINER/PREFIX, with 3 to 63 lower-case letters, "
            "digits and single '-' between them"
        )
    return name


def _endpoint(given: str | None, account: str) -> str:
    """The blob service URL, without a trailing '/' (and never a user or password in it)."""
    if not given:
        return f"https://{account}.blob.core.windows.net"
    parts = urlsplit(given.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise FatalBackendError("azure-endpoint takes an http:// or https:// URL with no query, such as "
                                "http://127.0.0.1:10000/devstoreaccount1")  # fmt: skip
    if "@" in parts.netloc:
        raise FatalBackendError("azure-endpoint takes no user name or password: give them as options")
    storage_name(given, "azure-endpoint")  # refuses a bad port
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
