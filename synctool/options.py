"""The settings of one sync run, and the parsing rules shared by the CLI and the library.

Option precedence, lowest first: ``--global-options``, then ``--src-options`` /
``--dst-options``, then the backend URL's query parameters. A few global keys
steer the tool itself (``dry-run``, ``log-file``, ``log-level``, ``max-delete``,
...); an explicit command-line flag wins over them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping

from synctool.backends.base import BackendError, BackendSpec, Location, parse_bool
from synctool.errors import UsageError
from synctool.secrets import SECRET_KEYS

# Duplicati's log levels, mapped onto Python logging numbers.
LOG_LEVELS: dict[str, int] = {
    "explicitonly": 1,
    "profiling": 5,
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "retry": 15,
    "information": logging.INFO,
    "info": logging.INFO,
    "dryrun": 25,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: Keys of --global-options (or a side's list) that the tool reads itself and
#: never hands to a backend as unknown.
TOOL_KEYS = frozenset(
    {
        "dry-run",
        "log-file",
        "log-level",
        "max-delete",
        "backend-retries",
        "backend-retry-delay",
        "backend-retry-with-exponential-backoff",
        "auto-create-folders",
    }
)


def default_workers() -> int:
    # os rather than psutil: the same logical count, without psutil's import
    # on every start.
    return max(2, os.cpu_count() or 2)


def parse_log_level(text: str) -> int:
    try:
        return LOG_LEVELS[text.strip().lower()]
    except KeyError:
        raise UsageError(
            f"unknown log level {text!r}; use one of: "
            "ExplicitOnly, Profiling, Verbose, Retry, Information, DryRun, Warning, Error "
            "(or Debug, Info)"
        ) from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str, what: str) -> float:
    """``10s``, ``500ms``, ``2m``, ``1.5`` (seconds) or Duplicati's ``hh:mm:ss``."""
    m = _DURATION.match(str(text))
    if m:
        unit = m.group(2).lower() if m.group(2) else None
        return float(m.group(1)) * _UNIT_SECONDS[unit]
    parts = str(text).strip().split(":")
    if len(parts) == 3 and all(p.replace(".", "", 1).isdigit() for p in parts):
        h, mi, s = (float(p) for p in parts)
        return h * 3600 + mi * 60 + s
    raise UsageError(f"{what}: {text!r} is not a duration (for example 10s, 500ms, 2m)")


def parse_int(text: str | int, what: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: {text!r} is not a whole number") from None
    if value < minimum:
        raise UsageError(f"{what}: must be at least {minimum}, not {value}")
    return value


def parse_flag(text: str | bool, what: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not true or false") from None


def parse_option_list(tokens: Iterable[str], list_name: str) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; bad tokens name the list."""
    out: dict[str, str] = {}
    previous = ""
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            if previous.lower() in SECRET_KEYS and not out[previous]:
                # "aws-secret-access-key= SECRET": the token is most likely the
                # secret itself, split off by a space. It is not echoed.
                raise UsageError(
                    f"{list_name}: {previous} is empty and a lone value follows it; "
                    f"write {previous}=VALUE as one token"
                )
            raise UsageError(f"{list_name}: {token!r} is not of the form key=value")
        if key in out:
            raise UsageError(f"{list_name}: the key {key!r} is given twice")
        out[key] = value
        previous = key
    return out


@dataclasses.dataclass
class SyncOptions:
    """Everything one run needs; built by the CLI or by :func:`synctool.sync`."""

    source: str
    destination: str
    src_options: dict[str, str] = dataclasses.field(default_factory=dict)
    dst_options: dict[str, str] = dataclasses.field(default_factory=dict)
    global_options: dict[str, str] = dataclasses.field(default_factory=dict)
    confirm: bool = True
    dry_run: bool = False
    force: bool = False
    retention: bool = False
    retry: int = 3
    retry_delay: float = 1.0
    exponential_backoff: bool = True
    auto_create_folders: bool = True
    verify_contents: bool = False
    verify_get_after_put: bool = False
    progress: bool = False
    log_file: str | None = None
    log_level: int = logging.INFO
    workers: int = dataclasses.field(default_factory=default_workers)
    max_delete: int | None = None
    report_file: str | None = None

    def apply_global_keys(self, explicit: set[str]) -> None:
        """Read tool settings carried in --global-options, unless set explicitly.

        ``explicit`` names the fields the caller set on purpose (a CLI flag, a
        keyword argument); those win.
        """
        g = self.global_options
        readers = {
            "dry_run": ("dry-run", lambda v: parse_flag(v, "dry-run")),
            "log_file": ("log-file", str),
            "log_level": ("log-level", parse_log_level),
            "max_delete": ("max-delete", lambda v: parse_int(v, "max-delete")),
            "retry": ("backend-retries", lambda v: parse_int(v, "backend-retries")),
            "retry_delay": ("backend-retry-delay", lambda v: parse_duration(v, "backend-retry-delay")),
            "exponential_backoff": (
                "backend-retry-with-exponential-backoff",
                lambda v: parse_flag(v, "backend-retry-with-exponential-backoff"),
            ),
            "auto_create_folders": ("auto-create-folders", lambda v: parse_flag(v, "auto-create-folders")),
        }
        for field, (key, read) in readers.items():
            if key in g and field not in explicit:
                setattr(self, field, read(g[key]))
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")

    def spec(self, side: str) -> BackendSpec:
        """The merged backend spec of ``side`` ("source" or "destination")."""
        url = self.source if side == "source" else self.destination
        own = self.src_options if side == "source" else self.dst_options
        try:
            query = Location.parse(url).query
        except (ValueError, BackendError) as exc:
            raise UsageError(f"{side}: {exc}") from None
        merged = merge_options(self.global_options, own, query)
        return BackendSpec(url, {k: v for k, v in merged.items() if k not in TOOL_KEYS})


def merge_options(*layers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for layer in layers:
        out.update(layer)
    return out
