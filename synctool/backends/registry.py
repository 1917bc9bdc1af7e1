"""Find the backend class for a URL scheme, importing it only when first used.

Built-in backends are listed here by module path so that ``synctool --help``
does not pay for importing boto3 or paramiko. Third-party packages add
backends through the ``synctool.backends`` entry-point group, each entry
named by scheme and pointing at a :class:`~synctool.backends.base.Backend`
subclass.
"""

from __future__ import annotations

import importlib

from synctool.backends.base import Backend, BackendError, BackendSpec

#: scheme -> "module:Class"
BUILTIN: dict[str, str] = {
    "file": "synctool.backends.local:LocalBackend",
    "s3": "synctool.backends.s3:S3Backend",
    "s3s": "synctool.backends.s3:S3Backend",
    "ssh": "synctool.backends.sftp:SFTPBackend",
    "sftp": "synctool.backends.sftp:SFTPBackend",
    "ftp": "synctool.backends.ftp:FTPBackend",
    "ftps": "synctool.backends.ftp:FTPBackend",
    "aftp": "synctool.backends.ftp:AlternativeFTPBackend",
    "webdav": "synctool.backends.webdav:WebDAVBackend",
    "webdavs": "synctool.backends.webdav:WebDAVBackend",
    "azure": "synctool.backends.azure:AzureBackend",
}

#: What to install when a backend's module fails to import.
EXTRAS: dict[str, str] = {
    "synctool.backends.s3": "boto3",
    "synctool.backends.sftp": "paramiko",
    "synctool.backends.webdav": "'synctool[webdav]'",
    "synctool.backends.azure": "'synctool[azure]'",
}


class UnknownScheme(BackendError):
    retryable = False


def _plugins() -> dict[str, str]:
    # Scanning the installed packages' entry points costs tens of
    # milliseconds, so it happens only for a scheme that is not built in
    # (built-in schemes win anyway).
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="synctool.backends")}


def schemes() -> list[str]:
    """Every scheme that can be opened, sorted."""
    return sorted({**_plugins(), **BUILTIN})


def backend_class(scheme: str) -> type[Backend]:
    target = BUILTIN.get(scheme.lower()) or _plugins().get(scheme.lower())
    if target is None:
        raise UnknownScheme(
            f"unknown backend scheme {scheme!r}; supported: "
            + ", ".join(f"{s}://" for s in schemes())
            + " (or a plain folder path)"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        need = EXTRAS.get(module_name, exc.name or module_name)
        raise UnknownScheme(f"the {scheme}:// backend needs {need}: pip install {need} ({exc})") from exc
    return getattr(module, class_name)


def backend_classes() -> dict[str, type[Backend] | UnknownScheme]:
    """Every scheme's class, imported now; the error instead for one whose module does not import.

    Loading every class also makes every table's secret keys known.
    """
    found: dict[str, type[Backend] | UnknownScheme] = {}
    for scheme in schemes():
        try:
            found[scheme] = backend_class(scheme)
        except UnknownScheme as exc:
            found[scheme] = exc
    return found


def open_backend(spec: BackendSpec) -> Backend:
    """Instantiate the backend for ``spec``; connections open lazily or in ``prepare``."""
    return backend_class(spec.location.scheme)(spec)
