"""The library entry point: ``synctool.sync(source, destination, **options)``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from synctool import __version__, logs
from synctool.coordinator import Coordinator, Env
from synctool.errors import ExitCode, SyncError, UsageError
from synctool.options import SyncOptions, parse_log_level
from synctool.report import Report

_FIELDS = {f.name for f in dataclasses.fields(SyncOptions)} - {"source", "destination"}

log = logging.getLogger("synctool")
output_log = logging.getLogger(logs.OUTPUT)


def sync(
    source: str,
    destination: str,
    *,
    src_options: Mapping[str, Any] | None = None,
    dst_options: Mapping[str, Any] | None = None,
    global_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Report:
    """Make ``destination`` an exact mirror of ``source`` and return the run's :class:`Report`.

    Keyword options are the command line's, in Python spelling: ``dry_run``,
    ``force``, ``retention``, ``retry``, ``verify_contents``,
    ``verify_get_after_put``, ``workers``, ``max_delete``, ``retry_delay``
    (seconds), ``log_level`` ("Information", "Verbose", ...), ``log_file``,
    ``progress``, ``report_file``, ``scheduler`` (a Dask scheduler's address:
    its workers run the copies). Log records go to the ``synctool`` logger
    (and to ``log_file``), not to stderr: the caller's logging set-up decides
    what is shown. Nothing is asked: a library call is its own confirmation.
    A failed run does not raise; look at ``report.exit_code`` or call
    ``report.raise_for_status()``. Bad arguments raise :class:`UsageError`,
    and so does a ``log_file`` or ``report_file`` that cannot be written
    (before anything is listed).
    """
    unknown = set(options) - _FIELDS
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if "log_level" in options and isinstance(options["log_level"], str):
        options["log_level"] = parse_log_level(options["log_level"])
    if options.get("retry_delay") is None:
        options.pop("retry_delay", None)
    if options.get("workers") is None:
        options.pop("workers", None)
    opts = SyncOptions(
        source=str(source),
        destination=str(destination),
        src_options={str(k): str(v) for k, v in (src_options or {}).items()},
        dst_options={str(k): str(v) for k, v in (dst_options or {}).items()},
        global_options={str(k): str(v) for k, v in (global_options or {}).items()},
        **{"confirm": True, **options},
    )
    opts.apply_global_keys(explicit=set(options))
    level = opts.log_level if "log_level" in options or "log-level" in opts.global_options else None
    handler = logs.log_file_handler(opts.log_file) if opts.log_file else None
    with logs.for_library_call(level, handler):
        return run(opts, Env())


def run(opts: SyncOptions, env: Env) -> Report:
    """Run one sync with fully parsed options (shared by the CLI and :func:`sync`).

    Raises :class:`UsageError` when the report file cannot be written, before
    anything is listed. The log file gets the run's summary and exit code.
    """
    if opts.report_file:
        logs.create_private_file(opts.report_file, "report file")
    output_log.info("synctool %s: %s -> %s%s", __version__, opts.source, opts.destination,
                    " (dry run)" if opts.dry_run else "")  # fmt: skip
    report = Coordinator(opts, env).run()
    if opts.report_file:
        try:
            report.write(opts.report_file)
        except SyncError as exc:  # the disk filled up since it was checked, say
            log.error("%s", exc)
            report.errors.append(str(exc))
            report.exit_code = report.exit_code or ExitCode.FATAL
    for line in report.summary_lines():
        output_log.info("%s", line)
    output_log.info("exit code %d", report.exit_code)
    return report
