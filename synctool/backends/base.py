"""The contract every storage backend fulfils.

A backend is one module under ``synctool/backends/`` holding one subclass of
:class:`Backend`. The coordinator and the workers only ever see this class and
:class:`BackendSpec`; they never import a concrete backend (the registry in
``synctool.backends`` does, lazily, by URL scheme).

To add a backend: write ``synctool/backends/NAME.py`` with a ``Backend``
subclass, list its schemes in ``synctool.backends.registry.BUILTIN`` (or
publish it under the ``synctool.backends`` entry-point group), and make it
pass ``tests/backend_contract.py``.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from synctool import secrets
from synctool.backends.optiontable import Option, OptionError, declares, read_options, secrets_of


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One file as a listing reports it."""

    name: str  # path relative to the backend root, '/'-separated, no leading '/'
    size: int
    mtime: float  # seconds since the epoch (UTC)
    #: A symbolic link. Listed so that the plan keeps clear of it: nothing is
    #: ever written, renamed or deleted through one, nor is it followed.
    link: bool = False


#: Every name synctool itself creates at a destination starts with this; the
#: plan never takes one of the forms below for a user's file.
INTERNAL_PREFIX = ".synctool-"
#: A temporary file, the content of a write that is not complete yet, as
#: :meth:`Backend.temp_name` names it by default.
TEMP_RE = re.compile(r"^\.synctool-[0-9a-f]+\.tmp$")
#: A list of files written but not yet read back (--verify-get-after-put on
#: a backend that cannot verify before a name becomes visible): at the root.
JOURNAL_RE = re.compile(r"^\.synctool-unverified-[0-9a-f]+\.json$")
#: What every journal's name starts with: a listing by prefix finds them all.
JOURNAL_START = INTERNAL_PREFIX + "unverified-"


def journal_name() -> str:
    return f"{JOURNAL_START}{os.urandom(6).hex()}.json"


def is_journal(name: str) -> bool:
    """Whether ``name`` is one of synctool's journals: at the root only; elsewhere
    the same form is a user's file."""
    return "/" not in name and bool(JOURNAL_RE.match(name))


@dataclasses.dataclass(frozen=True)
class Location:
    """A backend URL taken apart. ``path``, ``user``, ``password`` and the query are percent-decoded.

    URL syntax must never change which folder a run mirrors into: a ``#``
    would cut the URL short (``s3://b/rel#2`` is ``s3://b/rel``), and a
    query part that is really part of a name would do the same. So a ``#``
    is refused, and the query must be ``key=value`` pairs (whether the
    backend knows the keys is for :class:`Backend` to say). A plain path
    (no ``scheme://``) is no URL: every character in it is literal.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str | None
    port: int | None
    path: str
    query: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> "Location":
        """Parse a backend string; a plain path (no ``scheme://``) is ``file``."""
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
            return cls("file", None, None, None, None, url, {})
        if "#" in url:
            # Not echoed: the '#' may stand in a password.
            raise BackendError(
                "a '#' in a backend URL would cut it short: write a '#' that is part of a name, "
                "user name or password as %23"
            )
        scheme, _, rest = url.partition("://")
        before, question, after = rest.partition("?")
        if "@" in after and "/" not in before:
            # Most likely a '?' in a password, which would end the host part
            # there. Not echoed, for the same reason.
            raise BackendError(
                "a '?' comes before the '@' in the backend URL: write a '?' in a user name or "
                "password as %3F (and an '@' in a query value as %40)"
            )
        query = _parse_query(after) if question else {}
        if scheme.lower() == "file":
            # No host, user or port in a folder path: everything up to the
            # query is the path, letter case included (file://Rel/x is Rel/x).
            return cls("file", None, None, None, None, _decode(before), query)
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            # Not echoed: with an unencoded '/' in a password, what urlsplit
            # takes for the port is part of the password.
            raise BackendError(
                "the port in the backend URL is not a number from 0 to 65535 "
                "(URL-encode any '/', '?', '#' or '@' in a user name or password)"
            ) from None
        return cls(
            scheme=parts.scheme.lower(),
            user=_decode(parts.username) if parts.username is not None else None,
            password=_decode(parts.password) if parts.password is not None else None,
            host=parts.hostname,
            port=port,
            path=_decode(parts.path),
            query=query,
        )


#: How to write a '?' that is part of a name, said with every refused query.
_LITERAL_QUESTION_MARK = "write a '?' that is part of a name as %3F"


def _parse_query(text: str) -> dict[str, str]:
    """``a=1&b=2`` -> ``{"a": "1", "b": "2"}``; anything else is refused, never guessed at."""
    if not text:
        raise BackendError(f"the backend URL has a '?' with nothing after it: {_LITERAL_QUESTION_MARK}")
    out: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            raise BackendError(
                f"the backend URL's query has an empty part ('&&', or '&' at an end): {_LITERAL_QUESTION_MARK}"
            )
        raw_key, sep, raw_value = pair.partition("=")
        key = _decode(raw_key.replace("+", " "))
        if not sep or not key:
            raise BackendError(
                f"{_decode(pair)!r} in the backend URL's query is not key=value: {_LITERAL_QUESTION_MARK}"
            )
        if key in out:
            raise BackendError(f"the key {key!r} is given twice in the backend URL's query")
        out[key] = _decode(raw_value.replace("+", " "))
    return out


def _decode(text: str) -> str:
    """Percent-decode ``text``; bytes that are not UTF-8, and NUL, are refused rather than passed on."""
    try:
        decoded = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise BackendError(
            "a percent-encoded part of the backend URL is not UTF-8 text: encode names as UTF-8"
        ) from None
    if "\x00" in decoded:
        # No file system or server takes it; some would cut the name there.
        raise BackendError("the backend URL has a NUL character (%00), which no name may hold")
    return decoded


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a backend's root lives: which storage, and the path on it.

    ``storage`` names the storage: ("file",), ("s3", endpoint, bucket),
    ("sftp", host, port), normalized so that two spellings of one storage
    are equal. ``path`` is '/'-separated with no '/' at either end; "" is
    the whole storage. ``shown`` is for messages only.
    """

    storage: tuple[str | int, ...]
    path: str
    shown: str = dataclasses.field(compare=False)

    def contains(self, other: "Place") -> bool:
        """Whether ``other`` is this place or below it, on whole segments: ``a/b`` is in ``a``, ``a/bc`` is not."""
        if self.storage != other.storage:
            return False
        return not self.path or other.path == self.path or other.path.startswith(self.path + "/")


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """Everything a process needs to open a backend: small and picklable.

    ``options`` is already merged: --global-options, then the side's own
    option list, then the URL's query parameters, each winning over the last.
    """

    url: str
    options: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def location(self) -> Location:
        return Location.parse(self.url)


class BackendError(Exception):
    """A backend operation failed. ``retryable`` says whether trying again may help."""

    retryable = True


class FatalBackendError(BackendError):
    """Trying again will not help: wrong credentials, missing bucket, refused host key."""

    retryable = False


class NotFound(BackendError):
    """The named file or folder does not exist."""

    retryable = False


class UnsafeName(BackendError):
    """A name that could escape the root: refused, never retried."""

    retryable = False


class Stopped(BackendError):
    """The process was told to stop: the write in progress is abandoned, not committed."""

    retryable = True


class AlreadyExists(BackendError):
    """The name to write or rename to exists, and the caller did not mean to replace it."""

    retryable = False

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe relative path, else raise :class:`UnsafeName`.

    Listings from S3 or an SFTP server may carry keys like ``../x``, ``/etc/x``,
    ``a//b`` or a NUL byte; written naively they land outside the destination.
    """
    if not name:
        raise UnsafeName("refusing an empty file name")
    if "\x00" in name:
        raise UnsafeName(f"refusing a name with a NUL byte: {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # A local name of undecodable bytes arrives with lone surrogates.
        raise UnsafeName(f"refusing a name that is not valid UTF-8: {name!r}") from None
    if name.startswith("/"):
        raise UnsafeName(f"refusing an absolute name: {name!r}")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeName(f"refusing a name with an empty, '.' or '..' segment: {name!r}")
    return name


class Backend(abc.ABC):
    """One storage location, opened once per process and reused for every job.

    Names passed in and returned are always relative to the root of the
    backend URL, with '/' separators. Every method may be called from several
    threads of one process at once.
    """

    #: URL schemes served by this class, e.g. ("s3", "s3s").
    schemes: ClassVar[tuple[str, ...]] = ()
    #: What it is and its URL form, one line, for ``synctool backends``.
    description: ClassVar[str] = ""
    #: The options this backend understands, declared once (see
    #: :mod:`synctool.backends.optiontable`): ``table(Option(...), ...)``.
    #: Their parsed values are in ``self.values`` once constructed. A key it
    #: does not know is a warning in an option list, and an error in the
    #: URL's query.
    options: ClassVar[dict[str, Option]] = {}
    #: Option keys whose values are secrets, shown as *** everywhere:
    #: derived from the table's ``secret`` flags, never set by hand.
    secret_options: ClassVar[frozenset[str]] = frozenset()
    #: How many jobs one worker process may run against this backend at once.
    concurrency: ClassVar[int] = 4
    #: Resolution of the modification times this backend lists, in seconds.
    mtime_precision: ClassVar[float] = 1.0
    #: Whether connecting and listing spend their time waiting on a server.
    #: Such waits overlap well in threads; work that only makes system calls
    #: (a local folder) runs faster on one thread, free of GIL contention.
    waits_on_network: ClassVar[bool] = True
    #: Whether the listing reports the mtime a write was given. S3 lists the
    #: upload time instead, and keeps the source's time where
    #: :meth:`stored_mtime` can read it back.
    keeps_mtime: ClassVar[bool] = True
    #: Whether ``write``'s ``check`` runs before the name becomes visible
    #: (a temporary name renamed into place) rather than right after.
    verifies_before_commit: ClassVar[bool] = True
    #: The longest name of one folder entry, in UTF-8 bytes; None: no limit known.
    max_segment_bytes: ClassVar[int | None] = None
    #: Whether reading a file a second time costs little (a local disk, not a
    #: network): a destination that wants a file's BLAKE3 before its bytes
    #: (:meth:`digest_first`) then gets it from a reading ahead of the copy.
    rereads_cheaply: ClassVar[bool] = False
    #: Set when this process is told to stop: a worker hands in its own event
    #: (see :meth:`refuse_commit_when_stopped`). None elsewhere, and in a
    #: pickled copy, since an event does not cross processes.
    stopping: threading.Event | None = None

    def __init__(self, spec: BackendSpec):
        """Read the URL and the options; never connect (``prepare`` does).

        A subclass raises :class:`BackendError` for a value it cannot use
        (a missing bucket name, ``use-ssl=maybe``): a usage error, exit code 2.
        """
        self.spec = spec
        self.location = spec.location
        secrets.register(self.location.password)
        given = {**spec.options, **self.location.query}
        secrets.register_options(given)
        try:
            self.values = read_options(self.options, given)
        except OptionError as exc:
            raise FatalBackendError(str(exc)) from None
        for key in self.location.query:
            # In an option list an unknown key is only a warning (Duplicati
            # scripts hand one set to every backend); in a URL it is likelier
            # part of a name, and ignoring it would mirror somewhere else.
            if not self.declares(key):
                raise FatalBackendError(
                    f"the {self.location.scheme}:// backend knows no option {key!r}, named in the URL's "
                    f"query: {_LITERAL_QUESTION_MARK}"
                )

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "options" in cls.__dict__:
            if not all(isinstance(o, Option) and o.name == k for k, o in cls.options.items()):
                raise TypeError(f"{cls.__name__}.options must be a table of Option: optiontable.table(Option(...), ...)")
            cls.secret_options = secrets_of(cls.options)
            # Known from the moment the class exists, before any of its
            # options is parsed or printed.
            secrets.add_secret_keys(cls.secret_options)

    @classmethod
    def declares(cls, key: str) -> bool:
        """Whether ``key`` is one of this backend's options (case-blind)."""
        return declares(cls.options, key)

    # -- synctool's temporary names -----------------------------------------
    # A write goes to a temporary name first. The plan removes what a killed
    # run left under such names and never takes them for a user's files
    # (nor copies them from a source), so a backend that names its
    # temporaries otherwise overrides both methods together.
    @classmethod
    def temp_name(cls, folder: str) -> str:
        """A fresh temporary name in ``folder`` ('/'-separated; "" is the root)."""
        return f"{folder}{'/' if folder else ''}{INTERNAL_PREFIX}{os.urandom(6).hex()}.tmp"

    @classmethod
    def is_temporary(cls, name: str) -> bool:
        """Whether ``name`` (anywhere below the root) is one that :meth:`temp_name` gives."""
        return bool(TEMP_RE.match(name.rpartition("/")[2]))

    # -- required -------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, create: bool) -> None:
        """Check that the root exists and can be reached.

        With ``create`` a missing root is created (the destination);
        without it a missing root raises :class:`NotFound` (the source).
        Unreachable servers and bad credentials raise :class:`FatalBackendError`.
        """

    @abc.abstractmethod
    def list(self, start_after: str | None = None) -> Iterator[Entry]:
        """Every file below the root, recursively, in the order of their full
        names: UTF-8 byte order, S3's ListObjectsV2 order (see walk.py, which
        folder-by-folder backends list through). The plan merges both sides'
        listings as they stream, and stops at the first name out of order.

        With ``start_after``, only the files whose names sort after it: a
        listing that failed midway resumes after the last name it yielded,
        without listing again what it already did.

        Folders are not entries; empty folders do not show. A symbolic link
        is an entry with ``link=True`` and is never descended into.
        """

    @abc.abstractmethod
    def read(self, name: str) -> Iterator[bytes]:
        """Stream a file's content as chunks. Closing the iterator releases it."""

    @abc.abstractmethod
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
        """Store ``chunks`` as ``name``, all or nothing.

        The iterator must be consumed to its end before the file becomes
        visible under ``name``: the caller raises from it to abort (the
        source changed, the run was interrupted), and then nothing is left
        behind. A write whose commit comes well after the last chunk (blocks
        still being sent) calls :meth:`refuse_commit_when_stopped` before it.
        ``mtime`` is applied where the backend can store it. Missing parent
        folders are created; none is created or entered through a symbolic
        link.

        Nothing is replaced that the caller did not name: without
        ``overwrite`` an existing ``name`` is left as it is and
        :class:`AlreadyExists` raised. With ``keep_old_as``, an existing
        ``name`` is kept under that name before being replaced, and if that
        name is taken, :class:`AlreadyExists` names it and nothing changes.

        ``check`` is called with the stored content as a stream of chunks;
        it raises to reject it. Where ``verifies_before_commit``, it runs
        before the content becomes visible under ``name`` and a rejected
        write leaves nothing; elsewhere it runs right after, and a rejected
        write leaves no object under ``name``.

        A keyword ``digest`` (the content's BLAKE3) comes only to a backend
        whose :meth:`digest_first` asked for it; see there.
        """

    @abc.abstractmethod
    def rename(self, old: str, new: str) -> None:
        """Rename a file on the server side, never over an existing ``new``
        (:class:`AlreadyExists`); missing parent folders of ``new`` are created."""

    @abc.abstractmethod
    def delete(self, names: Sequence[str]) -> None:
        """Delete files. Raises :class:`DeleteError` naming every file that failed."""

    def read_sized(self, name: str, size: int) -> Iterator[bytes]:
        """:meth:`read` a file whose size the listing reported.

        ``size`` is a hint a backend may use to read in fewer requests (S3
        reads a large object without first probing it with a small ranged
        GET); the stream still ends where the file does.
        """
        return self.read(name)

    def digest_first(self, size: int) -> bool:
        """Whether a write of ``size`` bytes is cheaper when given the content's
        BLAKE3 before its bytes (``write(..., digest=...)``).

        Only a backend that answers True takes ``digest``. It stores the hash
        with the file from the start (S3 takes metadata when an upload
        begins, and a hash known only at the end costs a server-side copy),
        and never completes a write whose bytes hash otherwise.
        """
        return False

    def stored_mtime(self, name: str) -> float | None:
        """The source mtime a write stored with ``name``, where the listing
        does not show it (``keeps_mtime`` is False); None when unknown."""
        return None

    def free_bytes(self) -> int | None:
        """Bytes free for new files below the root; None when the backend cannot tell."""
        return None

    def journals(self) -> list[str]:
        """The names of synctool's journals at the root (see workers/journal.py).

        Only a backend that reads a write back after it became visible
        (``verifies_before_commit`` False) has any; such a backend lists
        them by their common start instead of listing everything.
        """
        if self.verifies_before_commit:
            return []
        return [e.name for e in self.list() if is_journal(e.name)]

    def read_small(self, name: str) -> bytes:
        """A small file whole, read by the coordinator (which forks workers
        later: a backend keeps no threads running for it)."""
        return b"".join(self.read(name))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def connect_ahead(self) -> None:  # noqa: B027 - optional hook
        """Open now the connection that the first job would open, so that
        it does not wait for it: a worker calls this, in a thread of its own,
        once the coordinator has logged in to both sides (the credentials
        work) and while it lists. Connections otherwise open at first use."""

    def abort_unfinished_writes(self, names: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Remove what writes of ``names`` left when their process died mid-way.

        Called once no write of the run is in flight. Temporary files show in
        listings and the coordinator removes them by name; a backend whose
        unfinished writes do not show there (S3's multipart uploads) aborts
        them here.
        """

    def root_place(self) -> Place | None:
        """Where the root lives, to refuse a source and destination that overlap.

        None when the backend cannot tell (yet): SFTP knows a relative root
        only once connected, so the coordinator asks after ``prepare``.
        """
        return None

    def details(self) -> dict[str, str]:
        """What the backend will use, decoded, for --parse-arguments-only."""
        return {"scheme": self.location.scheme, "path": self.location.path}

    # -- helpers --------------------------------------------------------
    def refuse_commit_when_stopped(self, name: str) -> None:
        """Raise :class:`Stopped` once ``stopping`` is set; a write calls it
        right before the request that makes its content visible under ``name``.

        The caller stops a write by raising from its chunks, but a write that
        sends blocks several at once has read the last chunk while blocks are
        still on their way: a stop that comes then must still keep the commit
        (CompleteMultipartUpload, Put Block List) from happening.
        """
        if self.stopping is not None and self.stopping.is_set():
            raise Stopped(f"{name}: stopped before the write was complete; nothing was committed")

    def display_url(self) -> str:
        """The URL with its secrets masked, for messages."""
        return secrets.redact(self.spec.url)

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeleteError(BackendError):
    """Some files of a batch delete failed: ``failures`` maps name to reason."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        names = ", ".join(sorted(failures)[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(f"could not delete {len(failures)} file(s): {names}{more}")
