"""``synctool SOURCE DESTINATION [options]``: the command line, on click.

Parsing ends in a :class:`SyncOptions`; the work is :func:`synctool.api.run`;
every exception becomes an exit code here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import click
from click.core import ParameterSource

from synctool import __version__, secrets
from synctool import logs
from synctool.api import run
from synctool.backends import Location
from synctool.cli.args import expand_option_lists
from synctool.cli.console import entry  # noqa: F401 - what console scripts installed before synctool.cli.console run
from synctool.coordinator import Env, open_side, refuse_overlap
from synctool.errors import ExitCode, SyncError, UsageError
from synctool.options import (
    SyncOptions,
    default_workers,
    parse_duration,
    parse_flag,
    parse_log_level,
    parse_option_list,
)

EXIT_CODES_HELP = """\b
Exit codes:
  0    success (also a dry run and --parse-arguments-only)
  1    fatal error: a listing failed, a backend unreachable,
       or --max-delete refused the deletes
  2    usage error: bad arguments or option values, a source and
       destination of which one holds the other, or a --report or
       --log-file that cannot be written
  3    finished, but some files failed (each is named on stderr)
  4    declined at the confirmation prompt
  130  interrupted (Ctrl-C or SIGTERM)

\b
Backends: a folder path or file:///path, s3://bucket/prefix,
ssh://user@host:port/path; in a URL, write a '#' or '?' of a name
as %23 or %3F. Option lists take key=value tokens:
  --dst-options aws-access-key-id=KEY aws-secret-access-key=SECRET
"""

class _Count(click.IntRange):
    """An integer with a lower bound: click's IntRange, whose errors would call it an "integer range"."""

    name = "integer"


# Options whose value is "true"/"false" but which may also stand alone, as in
# Duplicati: --auto-create-folders means --auto-create-folders=true.
_OPTIONAL_BOOL = {"is_flag": False, "flag_value": "true", "default": None, "metavar": "[true|false]"}


def _tool_options(f):
    options = [
        click.option("-y", "--confirm", "--yes", "confirm", is_flag=True, help="Run without asking for confirmation."),
        click.option("-d", "--dry-run", is_flag=True, help="List and plan, but write, delete and read no file content."),
        click.option("-f", "--force", is_flag=True, help="Copy every source file and delete every extra destination file, without comparing."),
        click.option("--src-options", multiple=True, metavar="KEY=VALUE...", help="Options for the source backend."),
        click.option("--dst-options", multiple=True, metavar="KEY=VALUE...", help="Options for the destination backend."),
        click.option("--global-options", multiple=True, metavar="KEY=VALUE...", help="Options for both backends (and dry-run, log-file, log-level, max-delete); backend lists and URL query parameters win."),
        click.option("--log-file", type=str, default=None, help="Append log lines to this file."),
        click.option("--log-level", type=str, default="Information", show_default=True, help="ExplicitOnly, Profiling, Verbose, Retry, Information, DryRun, Warning, Error (or Debug, Info)."),
        click.option("--parse-arguments-only", is_flag=True, help="Only parse the arguments, print the result and exit."),
        click.option("--progress", is_flag=True, help="Show progress on stdout."),
        click.option("--retention", is_flag=True, help="Rename instead of delete: keep old files as <UTC yyyyMMddHHmmss>.old.<name>."),
        click.option("--retry", type=_Count(min=0), default=3, show_default=True, help="Times to retry a failed file."),
        click.option("--verify-contents", is_flag=True, help="Hash both sides of seemingly equal files and copy those that differ."),
        click.option("--verify-get-after-put", is_flag=True, help="Read every copied file back and compare its BLAKE3 hash."),
        click.option("--workers", type=_Count(min=1), default=None, help=f"Worker processes [default: CPUs, at least 2; here {default_workers()}]."),
        click.option("--max-delete", type=_Count(min=0), default=None, help="Delete or rename nothing when the plan would remove more than this many files."),
        click.option("--report", "report_file", type=str, default=None, help="Write the run's figures as JSON to this file."),
        click.option("--backend-retries", type=_Count(min=0), default=None, help="Duplicati name for --retry."),
        click.option("--backend-retry-delay", type=str, default=None, help="Base delay between retries (10s, 500ms) [default: 1s]."),
        click.option("--backend-retry-with-exponential-backoff", **_OPTIONAL_BOOL, help="Double the delay at each retry [default: true]."),
        click.option("--auto-create-folders", **_OPTIONAL_BOOL, help="Create a missing destination folder or bucket [default: true]."),
        click.version_option(__version__, "--version", prog_name="synctool", message="%(prog)s %(version)s"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class SyncCommand(click.Command):
    """Expands the multi-token option lists before click parses the line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            args = expand_option_lists(args)
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx) from None
        return super().parse_args(ctx, args)


class ExitError(click.ClickException):
    """A SyncError on its way out: click prints it and exits with its code."""

    def __init__(self, exc: SyncError):
        super().__init__(secrets.redact(exc))
        self.exit_code = int(exc.exit_code)

    def format_message(self) -> str:
        return self.message


@click.command(
    cls=SyncCommand,
    context_settings={"help_option_names": ["-h", "--help", "-?"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.argument("source")
@click.argument("destination")
@_tool_options
@click.pass_context
def command(ctx: click.Context, source: str, destination: str, **kw: object) -> None:
    """Make DESTINATION an exact mirror of SOURCE.

    Files missing at the destination, of another size, or older there are
    copied; files only at the destination are deleted (renamed with
    --retention).
    """
    try:
        opts = build_options(ctx, source, destination, kw)
        description = describe(opts) if kw["parse_arguments_only"] else None
    except UsageError as exc:
        raise click.UsageError(secrets.redact(exc), ctx) from None
    env: Env = ctx.obj if isinstance(ctx.obj, Env) else Env.from_process()
    env = dataclasses.replace(env, stdout=ReaderMayLeave(env.stdout or sys.stdout))
    if description is not None:
        click.echo(secrets.redact(description), file=env.stdout)
        ctx.exit(ExitCode.SUCCESS)
    # A log file or report file that cannot be written is a usage error,
    # found before anything is listed.
    try:
        handlers = logs.setup(opts.log_level, opts.log_file)
    except SyncError as exc:
        raise ExitError(exc) from None
    try:
        report = run(opts, env)
    except SyncError as exc:
        raise ExitError(exc) from None
    finally:
        logs.teardown(handlers)
    for line in report.summary_lines():
        env.stdout.write(line + "\n")
    env.stdout.flush()
    ctx.exit(int(report.exit_code))


class ReaderMayLeave:
    """stdout, whose reader may stop reading (``synctool ... --dry-run | head -1``).

    Once the pipe is closed, further output is dropped, and the run goes on
    to its end and its exit code: a sync is not cut short because nobody
    reads its output any more.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.closed_by_reader = False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_left()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def _reader_left(self) -> None:
        self.closed_by_reader = True
        # What is still buffered would fail again when Python flushes stdout
        # at exit, with an "Exception ignored" message: let it go nowhere.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor (tests)
            pass


def build_options(ctx: click.Context, source: str, destination: str, kw: dict) -> SyncOptions:
    """Turn parsed click values into SyncOptions, applying the precedence rules."""

    def explicit(name: str) -> bool:
        return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE

    for side, url in (("source", source), ("destination", destination)):
        try:
            Location.parse(url)
        except Exception as exc:
            raise UsageError(f"{side}: {exc}") from None
    opts = SyncOptions(
        source=source,
        destination=destination,
        src_options=parse_option_list(kw["src_options"], "--src-options"),
        dst_options=parse_option_list(kw["dst_options"], "--dst-options"),
        global_options=parse_option_list(kw["global_options"], "--global-options"),
        confirm=bool(kw["confirm"]),
        dry_run=bool(kw["dry_run"]),
        force=bool(kw["force"]),
        retention=bool(kw["retention"]),
        retry=kw["retry"],
        verify_contents=bool(kw["verify_contents"]),
        verify_get_after_put=bool(kw["verify_get_after_put"]),
        progress=bool(kw["progress"]),
        log_file=kw["log_file"],
        log_level=parse_log_level(kw["log_level"]),
        max_delete=kw["max_delete"],
        report_file=kw["report_file"],
    )
    if kw["workers"] is not None:
        opts.workers = kw["workers"]
    chosen = {name for name in ("dry_run", "log_file", "log_level", "max_delete", "retry") if explicit(name)}
    if kw["backend_retries"] is not None:
        opts.retry = kw["backend_retries"] if not explicit("retry") else opts.retry
        chosen.add("retry")
    if kw["backend_retry_delay"] is not None:
        opts.retry_delay = parse_duration(kw["backend_retry_delay"], "--backend-retry-delay")
        chosen.add("retry_delay")
    if kw["backend_retry_with_exponential_backoff"] is not None:
        opts.exponential_backoff = parse_flag(kw["backend_retry_with_exponential_backoff"], "--backend-retry-with-exponential-backoff")
        chosen.add("exponential_backoff")
    if kw["auto_create_folders"] is not None:
        opts.auto_create_folders = parse_flag(kw["auto_create_folders"], "--auto-create-folders")
        chosen.add("auto_create_folders")
    opts.apply_global_keys(explicit=chosen)
    # Secrets must be known before anything can print them: the merged
    # options include the URL's query (s3://b/p?aws-secret-access-key=...).
    for side in ("source", "destination"):
        spec = opts.spec(side)
        secrets.register(spec.location.password)
        secrets.register_options(spec.options)
    return opts


def describe(opts: SyncOptions) -> str:
    """What a run would use: each side as its backend reads it (decoded), and the settings.

    Opening a backend does not connect; a source and destination that
    overlap are refused here already where that is known without connecting.
    """
    lines = [f"source: {opts.source}", f"destination: {opts.destination}"]
    backends = {side: open_side(opts.spec(side), side) for side in ("source", "destination")}
    try:
        refuse_overlap(backends["source"], backends["destination"])
        for side, backend in backends.items():
            lines += [f"{side} {key}: {value}" for key, value in backend.details().items()]
            for key, value in sorted(backend.spec.options.items()):
                secret = key.lower() in secrets.SECRET_KEYS or key in backend.secret_options
                lines.append(f"{side} option: {key}={secrets.MASK if secret else value}")
    finally:
        for backend in backends.values():
            backend.close()
    for field in ("dry_run", "force", "retention", "retry", "retry_delay", "verify_contents",
                  "verify_get_after_put", "workers", "max_delete", "log_file", "report_file"):
        lines.append(f"{field.replace('_', '-')}: {getattr(opts, field)}")
    lines.append(f"log-level: {logging.getLevelName(opts.log_level)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    """Run the command line; returns the exit code (never raises, never exits)."""
    env = env or Env.from_process()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode, click returns the code given to ctx.exit().
        return int(command.main(args, prog_name="synctool", standalone_mode=False, obj=env) or 0)
    except click.exceptions.Exit as exc:  # --help, --version, and every finished run
        return int(exc.exit_code)
    except click.UsageError as exc:
        # One line that says what is wrong and where to look (click would
        # print the usage synopsis around it).
        sys.stderr.write(f"Error: {exc.format_message()} (synctool --help lists the options)\n")
        return ExitCode.USAGE
    except click.ClickException as exc:
        exc.show(file=sys.stderr)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        return ExitCode.INTERRUPTED

