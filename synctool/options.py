"""The settings of one sync run, and the parsing rules shared by the CLI and the library.

Option precedence, lowest first: ``--global-options``, then ``--src-options`` /
``--dst-options``, then the backend URL's query parameters. A few global keys
steer the tool itself (``dry-run``, ``log-file``, ``log-level``, ``max-delete``,
...); an explicit command-line flag wins over them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from synctool.backends.base import BackendError, BackendSpec, Location
from synctool.backends.optiontable import Option, OptionError, table
from synctool.backends.registry import backend_classes
from synctool.errors import UsageError
from synctool.secrets import is_secret_key

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
#: never hands to a backend as unknown, parsed as backend options are.
#: quota-disable is the destination's, as in Duplicati: read from
#: --global-options and --dst-options.
TOOL_OPTIONS = table(
    Option("dry-run", "bool", False, "List and plan, but write, delete and read no file content."),
    Option("log-file", "text", None, "Append log lines to this file."),
    Option("log-level", "text", "Information", "Duplicati's level names, or Python's (Debug, Info)."),
    Option("max-delete", "int", None, "Delete or rename nothing when the plan would remove more files.", minimum=0),
    Option("backend-retries", "int", 3, "Times to retry a failed file (Duplicati's name for --retry).", minimum=0),
    Option("backend-retry-delay", "duration", 1.0, "Base delay between retries; as in Duplicati a plain number is in milliseconds.",
           unit="ms", minimum=0),  # fmt: skip
    Option("backend-retry-with-exponential-backoff", "bool", True, "Double the delay at each retry."),
    Option("auto-create-folders", "bool", True, "Create a missing destination folder or bucket."),
    Option("quota-disable", "bool", False, "Skip the check that the destination has room for the copies (destination only)."),
)
TOOL_KEYS = frozenset(TOOL_OPTIONS)


def read_tool_option(key: str, value: str | bool) -> Any:
    """The typed value of one of :data:`TOOL_OPTIONS`; a bad value is a usage error."""
    if isinstance(value, bool):
        return value
    try:
        return TOOL_OPTIONS[key].parse(value)
    except OptionError as exc:
        raise UsageError(str(exc)) from None


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


def parse_option_list(tokens: Iterable[str], list_name: str) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; bad tokens name the list."""
    out: dict[str, str] = {}
    previous = ""
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            if not out.get(previous) and _secret_key(previous):
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


def _secret_key(key: str) -> bool:
    """Whether any backend that can be loaded flags ``key`` as a secret."""
    backend_classes()  # loads every table: this is an error path, its cost does not matter
    return is_secret_key(key)


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
    quota_disable: bool = False
    #: A Dask scheduler (tcp://host:8786, tls://...) whose workers run the shards.
    scheduler: str | None = None

    def apply_global_keys(self, explicit: set[str]) -> None:
        """Read tool settings carried in --global-options, unless set explicitly.

        ``explicit`` names the fields the caller set on purpose (a CLI flag, a
        keyword argument); those win.
        """
        g = self.global_options
        fields = {
            "dry_run": "dry-run",
            "log_file": "log-file",
            "log_level": "log-level",
            "max_delete": "max-delete",
            "retry": "backend-retries",
            "retry_delay": "backend-retry-delay",
            "exponential_backoff": "backend-retry-with-exponential-backoff",
            "auto_create_folders": "auto-create-folders",
        }
        for field, key in fields.items():
            if key in g and field not in explicit:
                value = read_tool_option(key, g[key])
                setattr(self, field, parse_log_level(value) if key == "log-level" else value)
        dst = merge_options(g, self.dst_options)
        if "quota-disable" in dst and "quota_disable" not in explicit:
            self.quota_disable = read_tool_option("quota-disable", dst["quota-disable"])
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")
        if self.scheduler and importlib.util.find_spec("distributed") is None:
            raise UsageError("--scheduler needs Dask's distributed package: pip install 'synctool[dask]'")

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
