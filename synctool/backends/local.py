"""Local folders: ``file:///abs/path`` or a plain path."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from stat import S_ISDIR, S_ISLNK, S_ISREG

from synctool.backends.base import (
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

log = logging.getLogger("synctool.backends.local")

CHUNK = 1 << 20  # 1 MiB: large enough that Python's per-call cost vanishes
TEMP_PREFIX = ".synctool-"
TEMP_SUFFIX = ".tmp"


def default_file_mode() -> int:
    """The mode a new file gets from this process's umask: what a finished copy gets."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class LocalBackend(Backend):
    schemes = ("file",)
    options: dict[str, str] = {}
    concurrency = 1
    mtime_precision = 1e-6
    waits_on_network = False

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        # file://host/path is not a thing here: Location reads file://rel/path as rel/path.
        path = self.location.path
        if not path:
            raise FatalBackendError("a local backend needs a folder path")
        self.root = os.path.abspath(os.path.expanduser(path))
        self._file_mode = default_file_mode()

    def display_url(self) -> str:
        return self.root

    def root_place(self) -> Place:
        # Symbolic links resolved, also where the folder does not exist yet:
        # two spellings of one folder must compare equal.
        real = os.path.realpath(self.root)
        return Place(("file",), real.replace(os.sep, "/").strip("/"), real)

    def details(self) -> dict[str, str]:
        return {"scheme": "file", "path": self.root}

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *check_name(name).split("/"))

    # -- Backend ---------------------------------------------------------
    def prepare(self, create: bool) -> None:
        if os.path.isdir(self.root):
            return
        if os.path.exists(self.root):
            raise FatalBackendError(f"{self.root} exists but is not a folder")
        if not create:
            raise NotFound(f"folder {self.root} does not exist")
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise FatalBackendError(f"cannot create folder {self.root}: {exc.strerror}") from exc

    def list(self) -> Iterator[Entry]:
        if not os.path.isdir(self.root):
            raise NotFound(f"folder {self.root} does not exist")
        stack = [("", self.root)]
        while stack:
            prefix, folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    items = list(it)
            except OSError as exc:
                raise BackendError(f"cannot list {folder}: {exc.strerror}") from exc
            for item in items:
                st = item.stat(follow_symlinks=False)
                mode = st.st_mode
                if S_ISREG(mode):
                    yield Entry(prefix + item.name, st.st_size, st.st_mtime_ns / 1e9)
                elif S_ISDIR(mode):
                    stack.append((prefix + item.name + "/", item.path))
                elif S_ISLNK(mode):
                    log.warning("skipping symbolic link %s (links are never followed)", prefix + item.name)
                else:
                    log.warning("skipping %s: not a regular file", prefix + item.name)

    def read(self, name: str) -> Iterator[bytes]:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as exc:
            raise NotFound(f"{name}: no such file") from exc
        except OSError as exc:
            raise _os_error(name, exc) from exc
        try:
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        size: int,
        mtime: float | None = None,
        keep_old_as: str | None = None,
    ) -> None:
        final = self._path(name)
        folder = os.path.dirname(final)
        temp = os.path.join(folder, f"{TEMP_PREFIX}{os.urandom(6).hex()}{TEMP_SUFFIX}")
        try:
            # Inside the cleanup's reach: a stop signal (SystemExit) can land
            # right after os.open has created the file, before `fd` is set.
            try:
                os.makedirs(folder, exist_ok=True)
                # 0600 until complete: a half-written file is nobody else's business.
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                raise _os_error(name, exc) from exc
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            if mtime is not None:
                ns = int(round(mtime * 1e9))
                os.utime(temp, ns=(ns, ns))
            os.chmod(temp, self._file_mode)
            if keep_old_as is not None:
                try:
                    os.rename(final, self._path(keep_old_as))
                except FileNotFoundError:
                    pass
            os.replace(temp, final)
        except BaseException as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _os_error(name, exc) from exc
            raise

    def rename(self, old: str, new: str) -> None:
        target = self._path(new)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(self._path(old), target)
        except OSError as exc:
            raise _os_error(old, exc) from exc

    def delete(self, names: Sequence[str]) -> None:
        failures: dict[str, str] = {}
        folders: set[str] = set()
        for name in names:
            try:
                path = self._path(name)
                os.unlink(path)
                folders.add(os.path.dirname(path))
            except FileNotFoundError:
                pass
            except (OSError, BackendError) as exc:
                failures[name] = getattr(exc, "strerror", None) or str(exc)
        self._prune(folders)
        if failures:
            raise DeleteError(failures)

    def _prune(self, folders: set[str]) -> None:
        """Remove folders the deletes left empty, deepest first, never the root."""
        for folder in sorted(folders, key=len, reverse=True):
            while folder != self.root and folder.startswith(self.root + os.sep):
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                folder = os.path.dirname(folder)


def _os_error(name: str, exc: OSError) -> BackendError:
    """Turn an OSError into a BackendError with a message a person can act on."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        err: BackendError = FatalBackendError(f"{name}: {reason} (the destination is full)")
    elif exc.errno in (errno.EACCES, errno.EPERM):
        err = FatalBackendError(f"{name}: {reason}")
    else:
        err = BackendError(f"{name}: {reason}")
    return err
