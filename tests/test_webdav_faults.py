"""Faults against real WebDAV servers: the server killed in the middle of a sync,
back within the run's retries or only after the run.

Each test starts a server of its own (scripts/servers_webdav.py), free to be
killed and started again on the same port. Whatever happens, no file under a
final name differs from its source, and a second run makes an exact mirror
with no temporary file left.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

import synctool
from scripts.servers_webdav import rclone_webdav, wsgidav
from synctool.errors import ExitCode
from tests.fixtures.webdav import DAV
from tests.helpers import kill_when, make_tree, ok, read_tree, temp_debris, write_big_file

MiB = 1 << 20
SERVERS = {"rclone": rclone_webdav, "wsgidav": wsgidav}


@pytest.fixture(params=sorted(SERVERS))
def own_dav(request, tmp_path):
    """A WebDAV server of this test alone."""
    with SERVERS[request.param](tmp_path / "dav") as server:
        yield DAV(server)


@pytest.fixture
def tree(tmp_path):
    """A source that keeps a sync busy for a second or two: large files, and small ones."""
    root = tmp_path / "src"
    root.mkdir()
    for i in range(4):
        write_big_file(root / f"big{i}.bin", 24 * MiB + i, seed=i)
    make_tree(root, {f"small/{i:02}.txt": os.urandom(1000 + i) for i in range(40)})
    return root


def kill_while_writing(server: DAV, folder: Path, restart_after: float | None):
    """In the background: kill ``server`` once a temporary file holds a MiB,
    and start it again ``restart_after`` seconds later (None: leave it down)."""

    def grown() -> bool:
        for path in temp_debris(folder) if folder.exists() else []:
            with contextlib.suppress(OSError):  # moved into place meanwhile
                if path.stat().st_size > MiB:
                    return True
        return False

    return kill_when(grown, server, restart_after, "no write was ever seen under way")


def sync_to(server: DAV, tree: Path, **options):
    return synctool.sync(str(tree), server.url("mirror"), dst_options=server.synctool_options(), workers=2, **options)


def assert_nothing_partial(mirror: Path, expected: dict[str, bytes]) -> dict[str, bytes]:
    """Every file under a final name holds exactly its source's bytes."""
    stored = {k: v for k, v in read_tree(mirror).items() if not k.rpartition("/")[2].startswith(".synctool-")}
    for name, data in stored.items():
        assert name in expected and data == expected[name], f"{name}: {len(data)} bytes that are not the source's"
    return stored


def test_server_killed_mid_sync_and_back_within_the_retries(own_dav, tree):
    mirror = own_dav.local("mirror")
    watcher = kill_while_writing(own_dav, mirror, restart_after=0.5)
    # Backoff of 0.5, 1, 2, 4 s: the restart lands inside the retries.
    first = sync_to(own_dav, tree, retry=4, retry_delay=0.5)
    watcher.result()
    assert first.retries >= 1, first.to_dict()
    assert first.exit_code in (ExitCode.SUCCESS, ExitCode.PARTIAL), first.to_dict()
    if first.exit_code == ExitCode.PARTIAL:
        assert first.failed and {name for name, _ in first.failed} <= set(read_tree(tree))
    assert_nothing_partial(mirror, read_tree(tree))

    ok(sync_to(own_dav, tree))
    assert read_tree(mirror) == read_tree(tree) and temp_debris(mirror) == []


def test_server_killed_mid_sync_and_back_only_after_the_run(own_dav, tree):
    own_dav.put("mirror", {"only-here.txt": b"not in the source"})
    mirror = own_dav.local("mirror")
    watcher = kill_while_writing(own_dav, mirror, restart_after=None)
    first = sync_to(own_dav, tree, retry=1, retry_delay=0.1)
    watcher.result()

    assert first.exit_code == ExitCode.PARTIAL, first.to_dict()
    assert first.retries >= 1
    failed = {name for name, _ in first.failed}
    assert failed and failed <= set(read_tree(tree)), first.failed
    assert first.copied + len(failed) == len(read_tree(tree))
    assert first.deleted == 0 and any("no file was deleted" in e for e in first.errors)
    assert any(str(own_dav.port) in reason for _, reason in first.failed)  # says which server is gone

    own_dav.start()
    extra = {"only-here.txt": b"not in the source"}
    stored = assert_nothing_partial(mirror, read_tree(tree) | extra)
    assert "only-here.txt" in stored  # copies failed, so nothing was deleted

    debris = len(temp_debris(mirror))  # what the writes cut short left: the next run removes it
    second = sync_to(own_dav, tree)
    ok(second)
    assert second.deleted == 1 + debris
    assert read_tree(mirror) == read_tree(tree) and temp_debris(mirror) == []
