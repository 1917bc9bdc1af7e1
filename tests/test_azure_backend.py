"""The Azure backend against a real blob service (Azurite)."""

from __future__ import annotations

import re
import subprocess
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest

from synctool.backends import AlreadyExists, BackendError, BackendSpec, FatalBackendError, NotFound, open_backend
from synctool.backends import azure as azure_module
from synctool.errors import ExitCode
from tests.backend_contract import BackendContract, _chunks, _content

MiB = 1 << 20


class TestAzureBackend(BackendContract):
    @pytest.fixture
    def spec(self, azure_server, azure_container):
        return BackendSpec(f"azure://{azure_container}/root", azure_server.synctool_options())


@pytest.fixture
def open_azure(azure_server, azure_container):
    """Open a prepared backend on the test container: open_azure(prefix, **options)."""
    opened = []

    def make(prefix: str = "root", url: str | None = None, **options: str):
        spec = BackendSpec(url or f"azure://{azure_container}/{prefix}", azure_server.synctool_options(**options))
        backend = open_backend(spec)
        backend.prepare(create=True)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


def _properties(azure_server, container: str, name: str):
    return azure_server.container(container).get_blob_client(name).get_blob_properties()


def test_a_large_file_is_committed_from_staged_blocks_with_its_hash_and_mtime(
    open_azure, azure_server, azure_container
):
    backend = open_azure(**{"azure-block-size": "1MiB"})
    data = _content(2, 3 * MiB + 5)
    backend.write("big", _chunks(data, 300_000), len(data), mtime=1_600_000_000.25)
    blocks = azure_server.container(azure_container).get_blob_client("root/big").get_block_list()[0]
    assert len(blocks) == 3 and sum(b.size for b in blocks) == len(data)  # chunks are never split
    meta = _properties(azure_server, azure_container, "root/big").metadata
    assert meta["blake3"] == blake3.blake3(data).hexdigest()
    assert meta["mtime"] == "2020-09-13T12:26:40.250000000Z"  # rclone's form: rclone reads it too
    assert backend.stored_mtime("big") == 1_600_000_000.25
    assert b"".join(backend.read("big")) == data
    # A small file is one Put Blob, with the same metadata.
    backend.write("small", iter([b"tiny"]), 4, mtime=1_600_000_000.0)
    meta = _properties(azure_server, azure_container, "root/small").metadata
    assert meta["blake3"] == blake3.blake3(b"tiny").hexdigest() and backend.stored_mtime("small") == 1_600_000_000.0
    assert backend.stored_mtime("missing") is None


def test_a_failed_block_upload_commits_nothing_and_keeps_the_old_blob(open_azure, azure_server, azure_container):
    backend = open_azure(**{"azure-block-size": "1MiB"})
    backend.write("f", iter([b"old"]), 3)
    data = _content(3, 3 * MiB)

    def broken():
        yield from _chunks(data[: 2 * MiB], MiB)
        raise RuntimeError("source went away")

    for name in ("f", "new"):
        with pytest.raises(RuntimeError, match="source went away"):
            backend.write(name, broken(), len(data))
    assert {e.name for e in backend.list()} == {"f"}
    assert b"".join(backend.read("f")) == b"old"


def test_new_file_in_blocks_never_replaces_one_that_appeared(open_azure):
    backend = open_azure(**{"azure-block-size": "1MiB"})
    backend.write("n", iter([b"theirs"]), 6)
    data = _content(4, 2 * MiB + 1)
    with pytest.raises(AlreadyExists):
        backend.write("n", _chunks(data, MiB), len(data), overwrite=False)
    assert b"".join(backend.read("n")) == b"theirs"


def test_keep_old_as_never_loses_a_version_written_meanwhile(open_azure, azure_server, azure_container, monkeypatch):
    """Another writer replaces the blob between our copy of it and our commit:
    the commit is refused, and their version stays."""
    backend = open_azure()
    backend.write("f", iter([b"v1"]), 2)
    copy = backend._copy_to_new

    def copy_then_someone_writes(*args):
        etag = copy(*args)
        azure_server.put(azure_container, {"root/f": b"theirs"})
        return etag

    monkeypatch.setattr(backend, "_copy_to_new", copy_then_someone_writes)
    with pytest.raises(BackendError) as raised:
        backend.write("f", iter([b"mine"]), 4, keep_old_as="20260101000000.old.f")
    assert raised.value.retryable
    assert b"".join(backend.read("f")) == b"theirs"
    assert b"".join(backend.read("20260101000000.old.f")) == b"v1"


def test_many_writes_stay_within_the_byte_budget(open_azure):
    backend = open_azure(**{"azure-block-size": "1MiB", "azure-blocks-in-flight": "2"})
    data = _content(6, 3 * MiB)
    backend.write("warm-up", _chunks(data, MiB), len(data))  # client and threads made before measuring
    tracemalloc.start()
    try:
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda i: backend.write(f"f{i}", _chunks(data, MiB), len(data)), range(12)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Within the 2 MiB budget, but for the chunk in each writer's hand and a
    # block briefly doubled while it grows or is copied for sending; far below
    # the 36 MiB of no budget.
    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB held at the peak"
    assert b"".join(backend.read("f11")) == data


def test_delete_in_batches_with_odd_names(open_azure):
    backend = open_azure()
    names = [f"d/{i:03} é %?#+ name" for i in range(300)]  # more than one batch of 256
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: backend.write(n, iter([b"z"]), 1), names))
    backend.delete([*names[:290], "d/never-there"])
    assert sorted(e.name for e in backend.list()) == names[290:]


def test_listing_in_pages_relative_to_the_prefix(open_azure, azure_server, azure_container, monkeypatch):
    monkeypatch.setattr(azure_module, "LIST_PAGE", 7)
    azure_server.put(azure_container, {f"root/{i:02}": b"x" for i in range(20)} | {"root2/other": b"o", "rootx": b"r"})
    backend = open_azure()
    assert sorted(e.name for e in backend.list()) == [f"{i:02}" for i in range(20)]


def test_key_ranges_come_back_as_one_ordered_stream(open_azure, azure_server, azure_container, monkeypatch):
    # Pages of a few blobs, a prefix at the top split one level deeper, blobs
    # between the ranges, and names that sort apart in byte order ('é', 'Z').
    monkeypatch.setattr(azure_module, "LIST_PAGE", 50)
    inside = ["a-b", "a0", "Z", "é"] + [f"a/{i:03}" for i in range(230)]
    inside += [f"deep/{d}/{i:02}" for d in ("x", "x-y", "y") for i in range(12)]
    inside += [f"m{i}/k" for i in range(9)] + ["m1/kk/deeper", "m1-k"]
    names = ["Z", "data-x", "top", "é"] + [f"data/{name}" for name in inside]
    azure_server.put(azure_container, {f"root/{name}": b"" for name in names})
    backend = open_azure()
    asked: list[str] = []
    rest_page = backend._rest.list_page

    def recorded(prefix, marker, size, timeout=None, delimited=False):
        asked.append(prefix)
        return rest_page(prefix, marker, size, timeout, delimited)

    monkeypatch.setattr(backend._rest, "list_page", recorded)  # the real server answers; we only note what was asked
    assert [e.name for e in backend.list()] == sorted(names)
    for after in ("data-x", "data/a-b", "data/a/123", "data/deep/x-y/11", "data/deep/x/", "data/m1/k", "é"):
        expected = [n for n in sorted(names) if n > after]
        assert [e.name for e in backend.list(start_after=after)] == expected, after
    # The ranges were listed apart, one per prefix below 'data/'.
    assert {"root/data/a/", "root/data/deep/", "root/data/m1/"} <= set(asked)


def test_journals_are_found_by_their_start_alone(open_azure, azure_server, azure_container):
    journal = ".synctool-unverified-0123456789ab.json"
    azure_server.put(azure_container, {f"root/{journal}": b"[]", f"root/d/{journal}": b"a user's",
                                       "root/.synctool-unverified-notes": b"n", "root/f": b"f"})  # fmt: skip
    backend = open_azure()
    assert sorted(e.name for e in backend.list(starting=".synctool-")) == [
        ".synctool-unverified-0123456789ab.json", ".synctool-unverified-notes"]  # fmt: skip
    assert backend.journals() == [journal]  # at the root, and of the journal's form


def test_source_prefix_with_nothing_under_it_is_missing(azure_server, azure_container):
    spec = BackendSpec(f"azure://{azure_container}/nothing", azure_server.synctool_options())
    with pytest.raises(NotFound):
        open_backend(spec).prepare(create=False)


def test_sas_token_reads_and_writes(azure_server, azure_container):
    from tests.test_azure_security import sas_token

    options = {"azure-endpoint": azure_server.endpoint, "azure-account-name": azure_server.account,
               "azure-access-sas-token": "?" + sas_token(azure_server)}  # fmt: skip
    with open_backend(BackendSpec(f"azure://{azure_container}/s", options)) as backend:
        backend.prepare(create=True)
        backend.write("a", iter([b"1"]), 1)
        backend.rename("a", "b")
        assert [(e.name, e.size) for e in backend.list()] == [("b", 1)]


@pytest.mark.parametrize(
    "url, options, message",
    [
        ("azure://Ab/x", {}, "not an Azure container name"),
        ("azure://cont/a/../b", {}, "'..' segment"),
        ("azure://cont/x", {"azure-account-name": ""}, "no Azure storage account name"),
        ("azure://cont/x", {"azure-access-key": ""}, "no Azure access key or SAS token"),
        ("azure://cont/x", {"azure-access-key": "not base64!"}, "azure-access-key is no Azure access key"),
        ("azure://cont/x", {"azure-endpoint": "ftp://host/acct"}, "azure-endpoint takes"),
        ("azure://cont/x", {"azure-block-size": "1KiB"}, "azure-block-size must be at least"),
        ("azure://cont/x", {"azure-access-tier": "Warm"}, "azure-access-tier takes Hot or Cool"),
    ],
)
def test_bad_settings_are_refused_before_connecting(url, options, message):
    base = {"azure-account-name": "acct", "azure-access-key": "a2V5", "azure-endpoint": "http://127.0.0.1:1/acct"}
    with pytest.raises(FatalBackendError, match=re.escape(message)):
        open_backend(BackendSpec(url, {**base, **options}))


def test_details_and_place_name_no_secret():
    spec = BackendSpec("azure://acct:c2VjcmV0@cont/p", {"azure-endpoint": "HTTP://LocalHost:10000/acct/"})
    backend = open_backend(spec)
    assert backend.details() == {"scheme": "azure", "endpoint": "http://LocalHost:10000/acct", "account": "acct",
                                 "container": "cont", "prefix": "p/", "authentication": "access key"}  # fmt: skip
    other = open_backend(BackendSpec("azure://acct:eA%3D%3D@cont/p/q", {"azure-endpoint": "http://localhost:10000/acct"}))
    assert backend.root_place().contains(other.root_place())


def test_without_the_client_library_one_line_names_the_extra(tmp_path):
    """``azure`` made unimportable, as when the extra is not installed."""
    hide = "import sys; sys.modules['azure'] = None; from synctool.cli.main import entry; sys.exit(entry())"
    args = [str(tmp_path), "azure://cont/p", "-y", "--dst-options", "azure-account-name=a", "azure-access-key=eA=="]
    p = subprocess.run([sys.executable, "-c", hide, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == ExitCode.USAGE, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'synctool[azure]'" in lines[0], p.stderr
