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
