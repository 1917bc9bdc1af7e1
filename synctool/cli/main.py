"""``synctool SOURCE DESTINATION [options]``: the command line, on click.

Parsing ends in a :class:`SyncOptions`; the work is :func:`synctool.api.run`;
every exception becomes an exit code here and nowhere else.
"""

from __future__ import annotations

import contextlib
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
from synctool.backends import BackendError, Location, backend_class, optiontable
from synctool.backends.registry import backend_classes
from synctool.cli.args import expand_bool_options, expand_option_lists
from synctool.cli.helptext import COMMANDS, help_command, schemes_line
from synctool.cli.console import entry  # noqa: F401 - what console scripts installed before synctool.cli.console run
from synctool.coordinator import Env
from synctool.preflight import open_side, refuse_overlap
from synctool.errors import ExitCode, SyncError, UsageError
from synctool.options import SyncOptions, default_workers, parse_log_level, parse_option_list, read_tool_option

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
Boolean options take a value too: --dry-run=false, --force false.
"""

class _Count(click.IntRange):
    """An integer with a lower bound: click's IntRange, whose errors would call it an "integer range"."""

    name = "integer"


class _Bool(click.ParamType):
    """true or false, read as backend options are; args.expand_bool_options
    gives a bare flag its value (--force is --force=true)."""

    name = "boolean"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        try:
            return optiontable.parse_bool(value)  # type: ignore[arg-type]
        except ValueError:
            self.fail(f"{value!r} is not true or false", param, ctx)


# Boolean options, as in Duplicati: alone they mean true, and they take an
# explicit value (--auto-create-folders=false).
_BOOL = {"type": _Bool(), "default": None, "metavar": "[true|false]"}


def _tool_options(f):
    options = [
        click.option("-y", "--confirm", "--yes", "confirm", **_BOOL, help="Run without asking for confirmation."),
        click.option("-d", "--dry-run", **_BOOL, help="List and plan, but write, delete and read no file content."),
        click.option("-f", "--force", **_BOOL, help="Copy every source file and delete every extra destination file, without comparing."),
        click.option("--src-options", multiple=True, metavar="KEY=VALUE...", help="Options for the source backend."),
        click.option("--dst-options", multiple=True, metavar="KEY=VALUE...", help="Options for the destination backend."),
        click.option("--global-options", multiple=True, metavar="KEY=VALUE...", help="Options for both backends (and dry-run, log-file, log-level, max-delete); backend lists and URL query parameters win."),
        click.option("--log-file", type=str, default=None, help="Append log lines to this file."),
        click.option("--log-level", type=str, default="Information", show_default=True, help="ExplicitOnly, Profiling, Verbose, Retry, Information, DryRun, Warning, Error (or Debug, Info)."),
        click.option("--parse-arguments-only", **_BOOL, help="Only parse the arguments, print the result and exit."),
        click.option("--progress", **_BOOL, help="Show progress on stdout."),
        click.option("--retention", **_BOOL, help="Rename instead of delete: keep old files as <UTC yyyyMMddHHmmss>.old.<name>."),
        click.option("--retry", type=_Count(min=0), default=3, show_default=True, help="Times to retry a failed file."),
        click.option("--verify-contents", **_BOOL, help="Hash both sides of seemingly equal files and copy those that differ."),
        click.option("--verify-get-after-put", **_BOOL, help="Read every copied file back and compare its BLAKE3 hash."),
        click.option("--workers", type=_Count(min=1), default=None, help=f"Worker processes [default: CPUs, at least 2; here {default_workers()}]."),
        click.option("--scheduler", type=str, default=None, envvar="DASK_SCHEDULER_ADDRESS", metavar="ADDRESS", help="Run the copies on the Dask cluster of this scheduler (tcp://host:8786, tls://...) [env: DASK_SCHEDULER_ADDRESS]."),
        click.option("--max-delete", type=_Count(min=0), default=None, help="Delete or rename nothing when the plan would remove more than this many files."),
        click.option("--report", "report_file", type=str, default=None, help="Write the run's figures as JSON to this file."),
        click.option("--backend-retries", type=_Count(min=0), default=None, help="Duplicati name for --retry."),
        click.option("--backend-retry-delay", type=str, default=None, help="Base delay between retries: a plain number is milliseconds, as in Duplicati (1000), or with a unit (500ms, 5s, 1m) [default: 1s]."),
        click.option("--backend-retry-with-exponential-backoff", **_BOOL, help="Double the delay at each retry [default: true]."),
        click.option("--auto-create-folders", **_BOOL, help="Create a missing destination folder or bucket [default: true]."),
        click.version_option(__version__, "--version", prog_name="synctool", message="%(prog)s %(version)s"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class SyncCommand(click.Command):
    """Answers ``synctool help ...`` and ``synctool backends``, and expands the
    multi-token option lists and the boolean options, before click parses the line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in COMMANDS:
            # The first word only: a folder named help is ./help.
            click.echo(help_command(ctx, args))
            ctx.exit(ExitCode.SUCCESS)
        try:
            args = expand_bool_options(expand_option_lists(args))
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx) from None
        return super().parse_args(ctx, args)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        with formatter.indentation():
            formatter.write_text("\b\n" + schemes_line())


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
            scheme = Location.parse(url).scheme
        except Exception as exc:
            raise UsageError(f"{side}: {exc}") from None
        # Loaded now, so that their option tables' secret keys are known
        # before the option lists are read; an unknown scheme is told later.
        with contextlib.suppress(BackendError):
            backend_class(scheme)
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
        scheduler=kw["scheduler"] or None,
    )
    if kw["workers"] is not None:
        opts.workers = kw["workers"]
    chosen = {name for name in ("dry_run", "log_file", "log_level", "max_delete", "retry") if explicit(name)}
    if kw["backend_retries"] is not None:
        opts.retry = kw["backend_retries"] if not explicit("retry") else opts.retry
        chosen.add("retry")
    if kw["backend_retry_delay"] is not None:
        opts.retry_delay = read_tool_option("backend-retry-delay", kw["backend_retry_delay"])
        chosen.add("retry_delay")
    if kw["backend_retry_with_exponential_backoff"] is not None:
        opts.exponential_backoff = kw["backend_retry_with_exponential_backoff"]
        chosen.add("exponential_backoff")
    if kw["auto_create_folders"] is not None:
        opts.auto_create_folders = kw["auto_create_folders"]
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
    # Every backend's secret keys, so that one given to a side that does not
    # know it is masked too.
    backend_classes()
    backends = {side: open_side(opts.spec(side), side) for side in ("source", "destination")}
    try:
        refuse_overlap(backends["source"], backends["destination"])
        for side, backend in backends.items():
            lines += [f"{side} {key}: {value}" for key, value in backend.details().items()]
            for key, value in sorted(backend.spec.options.items()):
                secret = secrets.is_secret_key(key)
                lines.append(f"{side} option: {key}={secrets.MASK if secret else value}")
    finally:
        for backend in backends.values():
            backend.close()
    for field in ("dry_run", "force", "retention", "retry", "retry_delay", "verify_contents",
                  "verify_get_after_put", "workers", "max_delete", "log_file", "report_file", "quota_disable", "scheduler"):
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

