"""Small helpers shared by the tests: build folder trees and read them back."""

from __future__ import annotations

import os
import pathlib


def make_tree(root: pathlib.Path, files: dict[str, bytes], mtime: float | None = None) -> None:
    """Write ``files`` (relative name -> content) below ``root``."""
    for name, data in files.items():
        path = root.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def read_tree(root: pathlib.Path) -> dict[str, bytes]:
    """Every regular file below ``root`` as relative name -> content."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out
