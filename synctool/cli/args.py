"""Pre-parsing of the three option lists, which take several tokens after one flag.

``--dst-options a=1 b=2 --retry 5`` becomes ``--dst-options a=1 --dst-options b=2
--retry 5`` before click sees it (click gives an option a fixed number of
values). A list runs until the next token that starts with '-' or looks like a
URL (a '://' before any '='), so ``--dst-options a=1 s3://bucket/x?k=v`` still sees
the URL as an argument while ``s3-server-name=https://host`` stays a value.
"""

from __future__ import annotations

from synctool.errors import UsageError

LIST_OPTIONS = ("--src-options", "--dst-options", "--global-options")


def _ends_list(token: str) -> bool:
    # "s3-server-name=https://host" is a value; "s3://bucket/x?k=v" is a URL.
    return token.startswith("-") or "://" in token.partition("=")[0]


def expand_option_lists(args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        name, eq, inline = token.partition("=")
        if name not in LIST_OPTIONS:
            out.append(token)
            i += 1
            continue
        values = [inline] if eq else []
        i += 1
        while i < len(args) and not _ends_list(args[i]):
            values.append(args[i])
            i += 1
        if not values:
            raise UsageError(f"{name} needs at least one key=value")
        for value in values:
            out += [name, value]
    return out


#: Boolean options, as Duplicati's parser takes them: alone (true), with a
#: value (--force=false, --force:false), or followed by the word true or false
#: (--force false). Short names map onto the long ones.
BOOL_OPTIONS = (
    "--confirm", "--yes", "--dry-run", "--force", "--parse-arguments-only", "--progress", "--retention",
    "--verify-contents", "--verify-get-after-put", "--backend-retry-with-exponential-backoff",
    "--auto-create-folders",
)  # fmt: skip
SHORT_BOOL = {"-y": "--confirm", "-d": "--dry-run", "-f": "--force"}
#: Only these words are taken from the next token: any other is the next
#: argument (``--force ./src ./dst``), so a folder named ``true`` is ``./true``.
_VALUE_WORDS = ("true", "false")


def expand_bool_options(args: list[str]) -> list[str]:
    """Give every boolean option its value in one token, ``--name=value``, so
    that a bare flag is never mistaken for one taking the next argument.

    ``-yd`` is ``-y -d``; a value after ``=`` is checked when click parses it.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            out.extend(args[i - 1 :])
            break
        name, sep, value = _split(token)
        if name in SHORT_BOOL:
            names = [SHORT_BOOL[name]]
        elif name in BOOL_OPTIONS:
            names = [name]
        elif not sep and _is_short_bundle(token):
            names = [SHORT_BOOL[f"-{c}"] for c in token[1:]]
        else:
            out.append(token)
            continue
        if not sep and i < len(args) and args[i].lower() in _VALUE_WORDS:
            value, sep = args[i], "="
            i += 1
        out += [f"{n}={value if sep else 'true'}" for n in names]
    return out


def _split(token: str) -> tuple[str, str, str]:
    """``--force=false`` or ``--force:false`` -> ("--force", "=", "false")."""
    if not token.startswith("-"):
        return token, "", ""
    cut = min((token.find(c) for c in "=:" if c in token), default=-1)
    if cut < 0:
        return token, "", ""
    return token[:cut], "=", token[cut + 1 :]


def _is_short_bundle(token: str) -> bool:
    return len(token) > 2 and token[0] == "-" and token[1] != "-" and all(f"-{c}" in SHORT_BOOL for c in token[1:])
