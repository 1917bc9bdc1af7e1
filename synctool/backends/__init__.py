"""Storage backends behind one small interface, found by URL scheme."""

from synctool.backends.base import (
    AlreadyExists,
    Backend,
    BackendError,
    BackendSpec,
    DeleteError,
    Entry,
    FatalBackendError,
    Location,
    NotFound,
)
from synctool.backends.registry import backend_class, open_backend, schemes

__all__ = [
    "AlreadyExists",
    "Backend",
    "BackendError",
    "BackendSpec",
    "DeleteError",
    "Entry",
    "FatalBackendError",
    "Location",
    "NotFound",
    "backend_class",
    "open_backend",
    "schemes",
]
