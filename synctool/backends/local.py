"""Local folders: ``file:///abs/path`` or a plain path.

Below the root, every path is walked one folder at a time, each opened with
O_NOFOLLOW, and files are created, renamed and removed relative to their
folder's descriptor (the *at() system calls). A symbolic link below the root,
even one made while a run goes on, is never followed: nothing is written,
renamed or deleted outside the root through one. The root itself is the
user's own path, links and all.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from stat import S_ISDIR, S_ISLNK, S_ISREG

from synctool.backends.walk import ordered_walk
from synctool.backends.base import (
    AlreadyExists,
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
from synctool.backends.optiontable import table

log = logging.getLogger("synctool.backends.local")

CHUNK = 1 << 20  # 1 MiB: large enough that Python's per-call cost vanishes
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
RENAME_NOREPLACE = 1  # linux/fs.h
LIST_THREADS = 1  # folders listed at once


def default_file_mode() -> int:
    """The mode a new file gets from this process's umask: what a finished copy gets."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _find_renameat2() -> Callable | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


_renameat2 = _find_renameat2()


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename ``src`` to ``dst`` (each relative to its folder's descriptor); an
    existing ``dst`` raises FileExistsError and is left as it is.

    renameat2's RENAME_NOREPLACE does it in one step. Where the kernel or
    the file system lacks it, a hard link refuses an existing name just the
    same, and the old name goes after. A file system without hard links
    either (FAT, some network mounts) gets a look before the rename: a name
    created between the two is the one race left.
    """
    if _renameat2 is not None:
        if _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), dst)
    try:
        os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if S_ISDIR(os.stat(src, dir_fd=src_dir, follow_symlinks=False).st_mode):
            raise
        if _exists(dst_dir, dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        return
    os.unlink(src, dir_fd=src_dir)


def _rename_new(folder: int, temp: str, base: str) -> None:
    """Give ``temp`` the name ``base``, which must not exist (FileExistsError);
    a folder in the way is IsADirectoryError, as it is when replacing."""
    try:
        rename_noreplace(folder, temp, folder, base)
    except FileExistsError:
        if S_ISDIR(os.stat(base, dir_fd=folder, follow_symlinks=False).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), base) from None
        raise


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class LocalBackend(Backend):
    schemes = ("file",)
    description = "A local folder: a plain path, or file:///abs/path"
    options = table()  # none: the folder is the whole setting
    concurrency = 1
    mtime_precision = 1e-6
    rereads_cheaply = True
    waits_on_network = False
    max_segment_bytes = 255  # NAME_MAX of every common Linux file system

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        # file://host/path is not a thing here: Location reads file://rel/path as rel/path.
        path = self.location.path
        if not path:
            raise FatalBackendError("a local backend needs a folder path")
        path = os.path.expanduser(path)
        # '..' after a symbolic link is the parent of the link's target, as the
        # system reads the path; abspath would drop the link with it, as text.
        self.root = os.path.realpath(path) if ".." in path.split(os.sep) else os.path.abspath(path)
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

    @contextlib.contextmanager
    def _folder(self, name: str, create: bool) -> Iterator[tuple[int, str]]:
        """(descriptor of ``name``'s folder, ``name``'s last segment).

        Each folder on the way is opened without following a link; with
        ``create`` missing ones are made. A link on the way raises ELOOP (or
        ENOTDIR), a missing folder FileNotFoundError.
        """
        *folders, base = check_name(name).split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in folders:
                try:
                    inner = os.open(part, FOLDER_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):  # another job made it meanwhile
                        os.mkdir(part, 0o777, dir_fd=fd)
                    inner = os.open(part, FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
            yield fd, base
        finally:
            os.close(fd)

    # -- Backend ---------------------------------------------------------
    def free_bytes(self) -> int | None:
        # A root still to be created gets its room from the nearest folder that exists.
        folder = self.root
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        try:
            st = os.statvfs(folder)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

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

    def list(self, start_after: str | None = None) -> Iterator[Entry]:
        if not os.path.isdir(self.root):
            raise NotFound(f"folder {self.root} does not exist")
        return ordered_walk(self._scan, self.root, LIST_THREADS, start_after)

    def _scan(self, prefix: str, folder: str) -> Iterator[Entry | tuple[str, str]]:
        """One folder as it is read: its files and links, and its subfolders as (name prefix, path)."""
        try:
            with os.scandir(folder) as it:
                for item in it:
                    found = self._item(prefix, item)
                    if found is not None:
                        yield found
        except OSError as exc:
            raise BackendError(f"cannot list {folder}: {exc.strerror}") from exc

    @staticmethod
    def _item(prefix: str, item: os.DirEntry) -> Entry | tuple[str, str] | None:
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed since the folder was read
        except OSError as exc:  # a folder that can be read but not entered, say
            raise _os_error("listing", prefix + item.name, exc) from exc
        mode = st.st_mode
        if S_ISREG(mode):
            return Entry(prefix + item.name, st.st_size, st.st_mtime_ns / 1e9)
        if S_ISDIR(mode):
            return prefix + item.name + "/", item.path
        if S_ISLNK(mode):
            return Entry(prefix + item.name, 0, st.st_mtime_ns / 1e9, link=True)
        log.warning("skipping %s: not a regular file", prefix + item.name)
        return None

    def read(self, name: str) -> Iterator[bytes]:
        try:
            with self._folder(name, create=False) as (folder, base):
                fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
        except FileNotFoundError as exc:
            raise NotFound(f"{name}: no such file") from exc
        except OSError as exc:
            raise _os_error("reading", name, exc) from exc
        try:
            yield from _chunks_of(fd)
        finally:
            os.close(fd)

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
        try:
            with self._folder(name, create=True) as (folder, base):
                temp = self.temp_name("")
                # Inside the cleanup's reach: a stop signal (SystemExit) can land
                # right after os.open has created the file, before `fd` is set.
                try:
                    # 0600 until complete: a half-written file is nobody else's business.
                    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
                    try:
                        for chunk in chunks:
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view) :]
                        if mtime is not None:
                            ns = int(round(mtime * 1e9))
                            os.utime(fd, ns=(ns, ns))
                        os.fchmod(fd, self._file_mode)
                    finally:
                        os.close(fd)
                    if check is not None:
                        check(self._read_at(folder, temp))
                    if keep_old_as is not None:
                        self._keep_old(folder, base, keep_old_as)
                    if overwrite:
                        os.replace(temp, base, src_dir_fd=folder, dst_dir_fd=folder)
                    else:
                        _rename_new(folder, temp, base)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temp, dir_fd=folder)
                    raise
        except FileExistsError as exc:
            raise AlreadyExists(f"{name} appeared at the destination during the run: not replaced", name) from exc
        except OSError as exc:
            raise _os_error("writing", name, exc) from exc

    def _read_at(self, folder: int, base: str) -> Iterator[bytes]:
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
        try:
            yield from _chunks_of(fd)
        finally:
            os.close(fd)

    def _keep_old(self, folder: int, base: str, keep_old_as: str) -> None:
        """Give the file about to be replaced a second name, ``keep_old_as``.

        A hard link keeps ``base`` in place until the new content replaces it
        in one step; where links are not to be had, the old file is renamed.
        Neither ever replaces an existing ``keep_old_as``.
        """
        try:
            with self._folder(keep_old_as, create=True) as (old_folder, old_base):
                try:
                    os.link(base, old_base, src_dir_fd=folder, dst_dir_fd=old_folder, follow_symlinks=False)
                except FileNotFoundError:
                    return  # nothing there to keep
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    rename_noreplace(folder, base, old_folder, old_base)
        except FileExistsError as exc:
            raise AlreadyExists(f"{keep_old_as} exists already: the old version was not moved there", keep_old_as) from exc

    def rename(self, old: str, new: str) -> None:
        try:
            with self._folder(old, create=False) as (old_folder, old_base):
                with self._folder(new, create=True) as (new_folder, new_base):
                    rename_noreplace(old_folder, old_base, new_folder, new_base)
        except FileExistsError as exc:
            raise AlreadyExists(f"{new} exists already: {old} was not renamed over it", new) from exc
        except OSError as exc:
            raise _os_error("renaming", old, exc) from exc
        if (old_folder_name := old.rpartition("/")[0]) != new.rpartition("/")[0]:
            self._prune({old_folder_name})  # a file this rename moved out of its folder

    def delete(self, names: Sequence[str]) -> None:
        failures: dict[str, str] = {}
        folders: set[str] = set()
        for name in names:
            try:
                with self._folder(name, create=False) as (folder, base):
                    os.unlink(base, dir_fd=folder)
                folders.add(name.rpartition("/")[0])
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures[name] = str(_os_error("deleting", name, exc))
            except BackendError as exc:
                failures[name] = str(exc)
        self._prune(folders)
        if failures:
            raise DeleteError(failures)

    def _prune(self, folders: set[str]) -> None:
        """Remove folders the deletes (or renames) left empty, deepest first, never the root."""
        for folder in sorted(folders, key=len, reverse=True):
            while folder:
                try:
                    with self._folder(folder, create=False) as (parent, base):
                        os.rmdir(base, dir_fd=parent)
                except OSError:
                    break
                folder = folder.rpartition("/")[0]


def _chunks_of(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, CHUNK):
        yield chunk


# errno -> what a person reads; each is final: trying again cannot help.
_FINAL_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EISDIR: "a folder of that name is in the way",
    errno.ENOTDIR: "a file or a symbolic link stands where a folder is needed (links are never followed)",
    errno.ELOOP: "a symbolic link is in the way (links are never followed)",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}


def _os_error(doing: str, name: str, exc: OSError) -> BackendError:
    """One plain sentence naming the file; final where trying again cannot help."""
    reason = _FINAL_ERRORS.get(exc.errno or 0)
    if reason is not None:
        return FatalBackendError(f"{doing} {name} failed: {reason}")
    return BackendError(f"{doing} {name} failed: {exc.strerror or exc}")
