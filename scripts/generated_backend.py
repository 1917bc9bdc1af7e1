"""A backend whose listing is made up as it is read: planning at 10M and 100M entries.

Planning a mirror of a hundred million objects should need no more memory
than planning one of a hundred thousand. Making that many files or objects
to prove it would take hours and hundreds of GB, so this backend invents
its listing instead, and only ``scripts/scale.py`` registers it (scheme
``generated://``). It can be listed and nothing else: a dry run is all it
is for.

``generated://source?count=N`` lists N empty files in folders of 1,000,
named so that the order they are made in is their byte order.
``generated://mirror?count=N&differ-every=K`` lists the same, except that
every K-th file has an older time (the plan copies it) and every K-th
file, offset by half of K, is left out of the listing and replaced by one
of its own (the plan deletes it). So the dry run has a little to print and
a mirror's worth of pairs to compare.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from synctool.backends.base import Backend, Entry, FatalBackendError
from synctool.backends.optiontable import Option, table

SCHEME = "generated"
MTIME = 1_500_000_000.0
PER_FOLDER = 1_000


def name(i: int) -> str:
    """The i-th name: fixed-width digits, so numeric order is byte order."""
    return f"d{i // PER_FOLDER:07}/f{i % PER_FOLDER:04}"


class GeneratedBackend(Backend):
    schemes = (SCHEME,)
    description = "made-up listing for planning benchmarks: generated://NAME?count=N[&differ-every=K]"
    options = table(
        Option("count", "int", 0, "files in the listing", minimum=0),
        Option("differ-every", "int", 0, "every K-th file older, another K-th replaced (0: none)", minimum=0),
    )
    waits_on_network = False

    def prepare(self, create: bool) -> None:
        pass

    def list(self, start_after: str | None = None) -> Iterator[Entry]:
        count, every = self.values["count"], self.values["differ-every"]
        first = 0
        if start_after is not None:  # resume after a name this listing gave
            folder, _, file = start_after.partition("/")
            first = int(folder[1:]) * PER_FOLDER + int(file[1:]) + 1
        for i in range(first, count):
            if every and i % every == every // 2:
                yield Entry(name(i) + ".gone", 0, MTIME)
            else:
                yield Entry(name(i), 0, MTIME - 60 if every and i % every == 0 else MTIME)

    def _listing_only(self, *args: object, **kwargs: object):
        raise FatalBackendError("a generated:// listing has no contents: use it with --dry-run only")

    read = write = rename = delete = _listing_only


def run_synctool(argv: list[str]) -> None:
    """Run the command line in this process with ``generated://`` known to it."""
    from synctool.backends import registry

    registry.BUILTIN[SCHEME] = f"{__name__}:GeneratedBackend"
    sys.argv = ["synctool", *argv]
    from synctool.cli.console import entry

    entry()
