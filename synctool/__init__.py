"""synctool: make one storage backend an exact mirror of another.

    >>> import synctool
    >>> report = synctool.sync("/data/backup", "s3://bucket/backup", dst_options={...})
    >>> report.raise_for_status()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ExitCode", "Report", "SyncFailed", "__version__", "sync"]

if TYPE_CHECKING:
    from synctool.api import sync
    from synctool.errors import ExitCode
    from synctool.report import Report, SyncFailed

# Loaded on first use: importing any part of synctool runs this file first,
# and the console script must reach its signal handling before the heavy
# imports (see synctool/cli/console.py).
_LAZY = {"sync": "synctool.api", "ExitCode": "synctool.errors", "Report": "synctool.report", "SyncFailed": "synctool.report"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'synctool' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
