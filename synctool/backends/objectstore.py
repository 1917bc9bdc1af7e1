"""What the object-store backends (S3, Azure Blob Storage) share: prefixes,
names of endpoints, and deletes in batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from synctool.backends.base import BackendError, DeleteError, FatalBackendError


def object_prefix(path: str) -> str:
    """``/backup/`` -> ``backup/``: a trailing slash so ``backup`` never matches ``backup2``."""
    path = path.strip("/")
    if path and any(part in ("", ".", "..") for part in path.split("/")):
        # Object stores keep "a/../b" and "a//b" as they are, but a server over
        # a file system (or an HTTP client) may resolve them into another
        # prefix: where the run writes would not be what the URL (and the
        # check against an overlapping source) says.
        raise FatalBackendError(f"the prefix {path!r} has an empty, '.' or '..' segment: write it without them")
    return path + "/" if path else ""


def storage_name(endpoint: str, option: str) -> str:
    """One name per service, whatever the spelling of its ``endpoint`` (given as ``option``).

    Host (lowercase), port and path, the scheme's default port filled in;
    the scheme itself is left out, as one port serves one protocol.
    """
    parts = urlsplit(endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FatalBackendError(f"the port of {option} {endpoint} is not a number from 0 to 65535") from None
    return f"{parts.hostname}:{port}{parts.path.rstrip('/')}"


def delete_in_batches(
    names: Sequence[str],
    key_of: Callable[[str], str],
    size: int,
    delete_batch: Callable[[list[str], dict[str, str]], dict[str, str]],
) -> None:
    """Delete ``names`` ``size`` keys a request; raises :class:`DeleteError` naming every failure.

    ``delete_batch(keys, names)`` deletes one batch and returns name -> reason
    for each key it could not delete (``names`` maps key -> name).
    """
    failures: dict[str, str] = {}
    keys: dict[str, str] = {}
    for name in names:
        try:
            keys[key_of(name)] = name
        except BackendError as exc:
            failures[name] = str(exc)
    batch = list(keys)
    for start in range(0, len(batch), size):
        failures.update(delete_batch(batch[start : start + size], keys))
    if failures:
        raise DeleteError(failures)
