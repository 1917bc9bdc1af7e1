"""Faults against a real blob service (Azurite): the server killed while blocks are
being staged (back soon, or only after the run), and Ctrl-C or SIGTERM during a
block upload.

Each test starts its own Azurite (scripts/servers_azure.py), so the shared one of
the other tests stays up. Whatever happens, two things must hold at the
destination: no blob under a final name differs from its source, and a second run
makes an exact mirror.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import synctool
from scripts.servers_azure import azurite
from synctool.errors import ExitCode
from tests.helpers import (
    FAST_CLI,
    SlowUplink,
    interrupt_when,
    make_tree,
    ok,
    read_to_its_end,
    read_tree,
    start_synctool,
    write_big_file,
)

CONTAINER = "faults"
MiB = 1 << 20
BLOCKS = {"azure-block-size": "1MiB"}  # several blocks per file, several files in flight


@pytest.fixture
def own_azurite(tmp_path):
    """An Azurite of this test alone, free to be killed and started again."""
    with azurite(tmp_path / "azurite") as server:
        server.create_container(CONTAINER)
        server.wait_until_saved(CONTAINER)  # or a kill would lose it
        yield server


@pytest.fixture
def tree(tmp_path):
    """A source that keeps a sync busy for a second or two: files in 1 MiB blocks, and small ones."""
    root = tmp_path / "src"
    root.mkdir()
    for i in range(4):
        write_big_file(root / f"big{i}.bin", 6 * MiB + i, seed=i)
    make_tree(root, {f"small/{i:02}.txt": os.urandom(1000 + i) for i in range(40)})
    return root


def staging(server, container: str = CONTAINER) -> bool:
    """Whether a blob has blocks staged but not committed: an upload is under way."""
    committed = {b.name for b in server.container(container).list_blobs()}
    listed = server.container(container).list_blobs(include=["uncommittedblobs"])
    return any(b.name not in committed for b in listed)


def assert_no_partial_blob(server, expected: dict[str, bytes]) -> dict[str, bytes]:
    """Every blob under a final name holds exactly the bytes ``expected`` names for it."""
    stored = server.blobs(CONTAINER, "mirror/")
    for name, data in stored.items():
        assert name in expected and data == expected[name], f"{name}: {len(data)} bytes that are not the source's"
    return stored


def kill_while_staging(server, restart_after: float | None):
    """In the background: kill ``server`` once blocks are being staged, and
    start it again ``restart_after`` seconds later (None: leave it down)."""

    def watch() -> None:
        deadline = time.monotonic() + 20
        while not staging(server):
            assert time.monotonic() < deadline, "no block upload was ever seen"
            time.sleep(0.005)
        server.kill()
        if restart_after is not None:
            time.sleep(restart_after)
            server.start()

    executor = ThreadPoolExecutor(1)
    future = executor.submit(watch)
    executor.shutdown(wait=False)
    return future


def sync_to(server, tree, inner: str = "3", **options):
    """Sync ``tree`` to the server, whose client retries a request ``inner`` times."""
    dst_options = server.synctool_options(**BLOCKS, **{"azure-internal-retries": inner})
    return synctool.sync(str(tree), f"azure://{CONTAINER}/mirror", dst_options=dst_options, workers=2, **options)


@pytest.mark.parametrize("inner", ["0", "3"], ids=["run-retries", "client-retries"])
def test_server_killed_mid_sync_and_back_within_the_retries(own_azurite, tree, inner):
    """Back within the retries: the run's (with none in the client), or the client's own."""
    watcher = kill_while_staging(own_azurite, restart_after=0.5)
    # Backoff of 0.5, 1, 2, 4 s: the restart lands inside the retries.
    first = sync_to(own_azurite, tree, retry=4, retry_delay=0.5, inner=inner)
    watcher.result()

    assert first.retries >= 1 or inner != "0", first.to_dict()
    assert first.exit_code in (ExitCode.SUCCESS, ExitCode.PARTIAL), first.to_dict()
    if first.exit_code == ExitCode.PARTIAL:
        assert first.failed and {name for name, _ in first.failed} <= set(read_tree(tree))
    assert_no_partial_blob(own_azurite, read_tree(tree))

    ok(sync_to(own_azurite, tree))
    assert own_azurite.blobs(CONTAINER, "mirror/") == read_tree(tree)


def test_server_killed_mid_sync_and_back_only_after_the_run(own_azurite, tree):
    own_azurite.put(CONTAINER, {"mirror/only-here.txt": b"not in the source"})
    own_azurite.wait_until_saved("mirror/only-here.txt")
    watcher = kill_while_staging(own_azurite, restart_after=None)
    first = sync_to(own_azurite, tree, inner="1", retry=1, retry_delay=0.1)
    watcher.result()

    assert first.exit_code == ExitCode.PARTIAL, first.to_dict()
    assert first.retries >= 1
    failed = {name for name, _ in first.failed}
    assert failed and failed <= set(read_tree(tree)), first.failed
    assert any("cannot reach the Azure endpoint" in reason for _, reason in first.failed), first.failed
    assert first.deleted == 0 and any("no file was deleted" in e for e in first.errors)

    own_azurite.start()
    assert_no_partial_blob(own_azurite, read_tree(tree) | {"only-here.txt": b"not in the source"})

    second = sync_to(own_azurite, tree)
    ok(second)
    assert own_azurite.blobs(CONTAINER, "mirror/") == read_tree(tree)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_block_upload_shows_nothing_and_a_rerun_completes(azure_server, azure_container, tmp_path, sig):
    src = tmp_path / "src"
    src.mkdir()
    write_big_file(src / "big.bin", 96 * MiB)
    options = [f"{k}={v}" for k, v in azure_server.synctool_options(**BLOCKS).items()]
    args = [src, f"azure://{azure_container}/big", "-y", *FAST_CLI, "--dst-options", *options]

    interrupt_when(lambda: staging(azure_server, azure_container), start_synctool(*args, start_new_session=True), sig)
    assert azure_server.blobs(azure_container) == {}  # staged blocks show under no name

    rerun = start_synctool(*args)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert azure_server.blobs(azure_container, "big/") == read_tree(src)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_after_the_source_was_read_commits_no_block_list(azure_server, azure_container, tmp_path, sig):
    """The whole file is read (its blocks all fit the memory budget) while the
    blocks crawl over a slow link: the stop comes after the last chunk, and
    must still keep the block list from being committed."""
    source = tmp_path / "src" / "big.bin"
    source.parent.mkdir()
    write_big_file(source, 24 * MiB)
    with SlowUplink(azure_server.port, rate=10 * MiB) as uplink:
        slow = {"azure-endpoint": f"http://127.0.0.1:{uplink.port}/{azure_server.account}",
                "azure-block-size": "4MiB", "azure-blocks-in-flight": "8"}  # fmt: skip
        options = [f"{k}={v}" for k, v in azure_server.synctool_options(**slow).items()]
        proc = start_synctool(source.parent, f"azure://{azure_container}/big", "-y", *FAST_CLI, "--dst-options",
                              *options, start_new_session=True)  # fmt: skip
        interrupt_when(read_to_its_end(proc, source), proc, sig, poll=0.001)
    assert azure_server.blobs(azure_container) == {}  # staged blocks show under no name
