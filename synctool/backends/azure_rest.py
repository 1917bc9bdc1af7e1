"""The Blob service's most frequent calls, made directly over HTTP.

azure-storage-blob costs about 10 ms of CPU per request and 2 ms per blob
it lists (its generic XML model layer); with many small files that, not the
network, set the pace. Listing pages, Put Blob, Get Blob and Get Blob
Properties are made here with urllib3 and Shared Key (or SAS) signing as
the REST API describes them; everything else (blocks, copies, batch
deletes, containers) stays with the client library.
"""

from __future__ import annotations

import base64
import calendar
import email.utils
import functools
import hashlib
import hmac
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from urllib.parse import quote, unquote

import urllib3

API_VERSION = "2021-12-02"
RETRY_DELAY = 0.5  # seconds
#: Headers that take their own line in the string to sign, in its order.
_SIGNED = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
           "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")  # fmt: skip


class _MaskSecrets(logging.Filter):
    """urllib3 logs every request's URL (at debug level), and a SAS token is
    part of it: its records are masked as synctool's own are, for a caller
    whose handlers take them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from synctool.secrets import redact

        record.msg, record.args = redact(record.getMessage()), None
        return True


_MASK = _MaskSecrets()


class RESTError(Exception):
    """The service answered with an error: its HTTP status and error code."""

    def __init__(self, status_code: int, error_code: str, reason: str):
        super().__init__(f"{error_code or status_code}: {reason}")
        self.status_code, self.error_code, self.reason = status_code, error_code, reason


class BlobREST:
    """Blob calls on one container, over a pool of ``connections`` keep-alive connections."""

    def __init__(
        self,
        endpoint: str,
        account: str,
        container: str,
        *,
        key: str | None,
        sas_token: str | None,
        connections: int,
        timeout: urllib3.Timeout,
        retries: int,
    ):
        self.account, self.sas_token = account, sas_token
        self._key = base64.b64decode(key) if key and not sas_token else None
        self._base = f"{endpoint}/{quote(container)}"
        self._path = urllib3.util.parse_url(self._base).path or ""
        self._timeout, self._retries = timeout, retries
        logging.getLogger("urllib3.connectionpool").addFilter(_MASK)  # once: the same filter is added once
        # No retries of urllib3's own: it logs each with the request's URL,
        # a SAS token included (see _send).
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=connections, timeout=timeout, retries=False)

    def close(self) -> None:
        self._pool.clear()

    # -- calls -----------------------------------------------------------------
    def container_exists(self) -> bool:
        response = self._call("GET", None, {"restype": "container"}, allow=(404,))
        return response.status != 404

    def list_page(self, prefix: str, marker: str | None, size: int, timeout: float | None = None,
                  delimited: bool = False):  # fmt: skip
        """One page of the blobs whose names start with ``prefix``:
        [(name, size, mtime)], next marker or None, and with ``delimited``
        the names' common prefixes up to the next '/'."""
        query = {"restype": "container", "comp": "list", "prefix": prefix, "maxresults": str(size)}
        if delimited:
            query["delimiter"] = "/"
        if marker:
            query["marker"] = marker
        response = self._call("GET", None, query, timeout=timeout)
        root = ET.fromstring(response.data)
        blobs = []
        for blob in root.iterfind("Blobs/Blob"):
            props = blob.find("Properties")
            modified = _http_time(props.findtext("Last-Modified"))
            blobs.append((_name(blob), int(props.findtext("Content-Length") or 0), modified))
        prefixes = [_name(p) for p in root.iterfind("Blobs/BlobPrefix")]
        return blobs, root.findtext("NextMarker") or None, prefixes

    def put_blob(self, name: str, data: bytes, headers: Mapping[str, str]) -> str:
        """Put Blob: the whole content in one request; returns the new ETag."""
        response = self._call("PUT", name, {}, {"x-ms-blob-type": "BlockBlob", **headers}, body=data)
        return response.headers["ETag"]

    def get_blob(self, name: str, chunk: int) -> Iterator[bytes]:
        """Get Blob as a stream of chunks: one request, whatever the size."""
        response = self._call("GET", name, {}, preload=False)
        try:
            yield from response.stream(chunk)
        finally:
            response.release_conn()

    def properties(self, name: str) -> Mapping[str, str] | None:
        """The headers of Get Blob Properties (x-ms-meta-* included); None when there is no such blob."""
        response = self._call("HEAD", name, {}, allow=(404,))
        return None if response.status == 404 else response.headers

    # -- one request -------------------------------------------------------------
    def _call(self, method: str, name: str | None, query: dict[str, str], headers: Mapping[str, str] = {},
              body: bytes | None = None, preload: bool = True, allow: tuple[int, ...] = (),
              timeout: float | None = None) -> urllib3.BaseHTTPResponse:  # fmt: skip
        path = self._path + ("/" + quote(name, safe="~/") if name is not None else "")
        sent = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": API_VERSION, **headers}
        if body is not None:
            sent["Content-Length"] = str(len(body))
        search = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        if self._key is not None:
            sent["Authorization"] = self._sign(method, path, query, sent)
        elif self.sas_token:
            search = f"{search}&{self.sas_token}" if search else self.sas_token
        url = self._base + path[len(self._path) :] + (f"?{search}" if search else "")
        limit = urllib3.Timeout(connect=self._timeout.connect_timeout, read=timeout) if timeout else self._timeout
        response = self._send(method, url, headers=sent, body=body, preload_content=preload, timeout=limit)
        if response.status >= 300 and response.status not in allow:
            raise _error(response)
        return response

    def _send(self, method: str, url: str, **request) -> urllib3.BaseHTTPResponse:
        """Send a request, and again after a failed connection or a broken
        answer, half a second apart, as the client library is set up."""
        for attempt in range(self._retries + 1):
            try:
                return self._pool.request(method, url, **request)
            except urllib3.exceptions.HTTPError:
                if attempt == self._retries:
                    raise
                time.sleep(RETRY_DELAY)
        raise AssertionError("unreachable")

    def _sign(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> str:
        """Shared Key: an HMAC of the request's canonical form, keyed with the account key."""
        lower = {k.lower(): v for k, v in headers.items()}
        if lower.get("content-length") == "0":
            lower["content-length"] = ""  # the form since version 2015-02-21
        lines = [method, *(lower.get(h, "") for h in _SIGNED)]
        lines += [f"{k}:{v.strip()}" for k, v in sorted(lower.items()) if k.startswith("x-ms-")]
        resource = f"/{self.account}{path}"
        for k, v in sorted((k.lower(), v) for k, v in query.items()):
            resource += f"\n{k}:{v}"
        lines.append(resource)
        digest = hmac.new(self._key, "\n".join(lines).encode(), hashlib.sha256).digest()
        return f"SharedKey {self.account}:{base64.b64encode(digest).decode()}"


def _name(element: ET.Element) -> str:
    """A Blob's or BlobPrefix's name, decoded when XML could not carry it as it is."""
    name_element = element.find("Name")
    if name_element is None:
        return ""
    name = name_element.text or ""
    return unquote(name) if name_element.get("Encoded") == "true" else name


@functools.lru_cache(maxsize=4096)
def _http_time(text: str) -> float:
    """Seconds in an HTTP date: blobs written in the same second share one."""
    return float(calendar.timegm(email.utils.parsedate(text)))


def _error(response: urllib3.BaseHTTPResponse) -> RESTError:
    """The service's error code (header, or the XML body), and its message's first line."""
    body = response.data if response.status != 304 else b""
    code, message = response.headers.get("x-ms-error-code", ""), ""
    if body:
        try:
            root = ET.fromstring(body)
            code = code or root.findtext("Code") or ""
            message = (root.findtext("Message") or "").splitlines()[0] if root.findtext("Message") else ""
        except ET.ParseError:
            pass
    response.release_conn()
    return RESTError(response.status, code, message or response.reason or "")

