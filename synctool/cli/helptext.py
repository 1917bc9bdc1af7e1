"""``synctool help [SCHEME]`` and ``synctool backends``: what each backend is and the options it takes.

Both are recognised as the first word of the command line, before click
parses it, because the main command's two arguments are free-form: a folder
literally named ``help`` or ``backends`` is given as ``./help``.
"""

from __future__ import annotations

import click

from synctool.backends import optiontable
from synctool.backends.registry import UnknownScheme, backend_class, backend_classes, schemes

COMMANDS = ("help", "backends")
WIDTH = 100


def help_command(ctx: click.Context, args: list[str]) -> str:
    """The text for ``args`` (whose first word is one of :data:`COMMANDS`)."""
    word, rest = args[0], args[1:]
    if word == "backends" and not rest:
        return backends_text()
    if word == "help" and not rest:
        return ctx.get_help() + "\n\n" + tool_keys_text()
    if word == "help" and len(rest) == 1:
        return scheme_text(rest[0], ctx)
    raise click.UsageError(
        f"'synctool {word}' takes {'one scheme at most' if word == 'help' else 'no argument'}; "
        f"to mirror a folder named {word}, write ./{word}",
        ctx,
    )


def schemes_line() -> str:
    """Every scheme that can be opened, for ``synctool --help``."""
    listed = ", ".join(f"{s}://" for s in schemes())
    return (
        f"Schemes: {listed}.\nsynctool backends says what each is; synctool help SCHEME lists\n"
        "its options with their defaults (a folder named help: ./help)."
    )


def backends_text() -> str:
    """One line per backend class: its schemes and what it is (or why it cannot be loaded)."""
    rows: dict[object, tuple[list[str], str]] = {}
    for scheme, found in backend_classes().items():
        if isinstance(found, UnknownScheme):
            rows[scheme] = ([scheme], f"cannot be loaded: {found}")
        else:
            rows.setdefault(found, ([], found.description))[0].append(scheme)
    left = {key: ", ".join(f"{n}://" for n in names) for key, (names, _) in rows.items()}
    width = max(map(len, left.values()))
    lines = ["Backends (synctool help SCHEME lists a backend's options):"]
    lines += [f"  {left[key].ljust(width)}  {what}" for key, (_, what) in rows.items()]
    return "\n".join(lines)


def scheme_text(word: str, ctx: click.Context) -> str:
    scheme = word.partition("://")[0].lower()
    try:
        cls = backend_class(scheme)
    except UnknownScheme as exc:
        raise click.UsageError(
            f"{exc}; synctool backends lists them (to mirror a folder named help, write ./help)", ctx
        ) from None
    names = " and ".join(f"{s}://" for s in cls.schemes) or f"{scheme}://"
    lines = [f"{names}: {cls.description}", ""]
    if not cls.options:
        lines.append("This backend takes no options.")
    else:
        lines += [
            "Options, as key=value in --src-options, --dst-options or --global-options, or in the",
            f"URL's query ({scheme}://...?key=value); an option list wins over --global-options,",
            "the URL over both:",
            "",
            *optiontable.describe(cls.options.values(), WIDTH),
        ]
    lines += ["", "synctool help lists the keys of --global-options that synctool itself reads."]
    return "\n".join(lines)


def tool_keys_text() -> str:
    from synctool.options import TOOL_OPTIONS

    return "\n".join(
        [
            "Keys that synctool itself reads from --global-options (quota-disable also from",
            "--dst-options), never handed to a backend; a command-line flag wins over them:",
            "",
            *optiontable.describe(TOOL_OPTIONS.values(), WIDTH),
        ]
    )
