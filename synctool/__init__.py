"""synctool: make one storage backend an exact mirror of another.

    >>> import synctool
    >>> report = synctool.sync("/data/backup", "s3://bucket/backup", dst_options={...})
    >>> report.raise_for_status()
"""

__version__ = "0.1.0"

from synctool.api import sync  # noqa: E402
from synctool.errors import ExitCode  # noqa: E402
from synctool.report import Report, SyncFailed  # noqa: E402

__all__ = ["ExitCode", "Report", "SyncFailed", "__version__", "sync"]
