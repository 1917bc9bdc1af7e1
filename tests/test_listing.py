"""Listings against real servers: folders larger than a sort run, S3 key ranges
listed at once, and listings cut midway (server killed, connections dropped)
that resume after their last name without listing anything twice or losing
anything."""

from __future__ import annotations

import http.client
import re
import threading
from multiprocessing.connection import wait as wait_for_readable

import pytest

from scripts.servers import rclone_s3
from synctool.backends import BackendError, BackendSpec, NotFound, open_backend, sorter
from synctool.listing import ReadAhead
from tests.helpers import make_tree

BUCKET = "listing"


@pytest.fixture(autouse=True)
def _clean_ssh_environment(no_ssh_environment):
    """No known_hosts and no agent of the person running the tests."""


@pytest.fixture
def own_s3(tmp_path):
    """An S3 server of this test alone, free to be killed; it logs every request.
    Objects are made as files in the folder it serves (object K of bucket B is
    the file B/K), which is far quicker than a PUT each."""
    with rclone_s3(tmp_path / "s3", extra_args=["-vv"]) as server:
        server.create_bucket(BUCKET)
        yield server


def s3_backend(server, prefix: str = "", **options: str):
    backend = open_backend(BackendSpec(f"s3://{BUCKET}/{prefix}", {**server.synctool_options(), **options}))
    backend.prepare(create=False)
    return backend


def requests_since_start(server) -> list[str]:
    """The prefixes ListObjectsV2 asked for since the server last started, as it logs them."""
    log = server.log.read_text()
    since = log.rsplit("starting with parameters", 1)[-1]
    return re.findall(r'prefix: prefix:"([^"]*)"', since)


# -- sorting in bounded memory ---------------------------------------------------
def test_a_local_folder_larger_than_a_run_is_listed_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(sorter, "RUN_SIZE", 500)
    names = [f"f{i:05}{'-x' if i % 3 else ''}" for i in range(4_000)] + ["f00010/in", "f00010.x", "é", "a b"]
    make_tree(tmp_path / "root", {name: b"" for name in names})
    backend = open_backend(BackendSpec(str(tmp_path / "root")))
    assert [e.name for e in backend.list()] == sorted(names)
    assert [e.name for e in backend.list(start_after="f00010/in")] == sorted(names)[sorted(names).index("f00010/in") + 1 :]


def test_an_sftp_folder_larger_than_a_run_is_listed_in_order(sftp_server, sftp_folder, monkeypatch):
    monkeypatch.setattr(sorter, "RUN_SIZE", 300)
    names = [f"f{i:04}" for i in range(2_000) if i != 10] + ["f0010/in", "f0010-x", "f0010.x"]
    sftp_server.put(sftp_folder, {name: b"" for name in names})  # seen by a server with a cache too
    with open_backend(sftp_server.spec(sftp_folder)) as backend:
        backend.prepare(create=False)
        assert [e.name for e in backend.list()] == sorted(names)


# -- S3: key ranges listed at once, one ordered stream -------------------------------
@pytest.mark.parametrize("native", ["true", "false"])
def test_s3_key_ranges_come_back_as_one_ordered_stream(own_s3, native):
    # One prefix at the top ('data/', split one level deeper), keys between
    # the ranges ('data/a-b', 'data/a0'), ranges of several pages, and names
    # that sort apart in byte order ('é', 'Z').
    inside = ["a-b", "a0", "Z", "é"] + [f"a/{i:04}" for i in range(2_300)]
    inside += [f"deep/{d}/{i:03}" for d in ("x", "x-y", "y") for i in range(40)]
    inside += [f"m{i}/k" for i in range(9)] + ["m1/kk/deeper", "m1-k"]
    names = ["Z", "data-x", "top", "é"] + [f"data/{name}" for name in inside]
    make_tree(own_s3.root / BUCKET / "root", {name: b"" for name in names})
    backend = s3_backend(own_s3, "root", **{"s3-native": native})
    assert [e.name for e in backend.list()] == sorted(names)
    for after in ("data-x", "data/a-b", "data/a/1234", "data/deep/x-y/039", "data/deep/x/", "data/m1/k", "é"):
        expected = [n for n in sorted(names) if n > after]
        assert [e.name for e in backend.list(start_after=after)] == expected, after
    # The ranges were listed apart, one per prefix below 'data/'.
    asked = set(requests_since_start(own_s3))
    assert {"root/data/a/", "root/data/deep/", "root/data/m1/"} <= asked


@pytest.mark.parametrize("native", ["true", "false"])
def test_an_s3_listing_that_fits_one_page_takes_one_request(own_s3, native):
    # Across a network each request is a round trip: a walk down these
    # prefixes would take a dozen.
    names = [f"{d}/{s}/{i:02}" for d in "abcdef" for s in "xy" for i in range(20)] + ["top"]
    make_tree(own_s3.root / BUCKET / "root", {name: b"" for name in names})
    backend = s3_backend(own_s3, "root", **{"s3-native": native})
    assert [e.name for e in backend.list()] == sorted(names)
    asked = requests_since_start(own_s3)
    # Natively the listing starts from the probe's page; boto3's probe asks for one key.
    assert asked == (["root/"] if native == "true" else ["root/", "root/"]), asked


def test_an_s3_root_is_probed_in_one_request_and_created_in_none(own_s3):
    """Each request before the first copy is a round trip that the whole run
    waits for: a prefix's probe is one listing page (which fails as
    HeadBucket would on a missing bucket), and creating an empty root once
    the bucket is known to be there asks nothing."""
    make_tree(own_s3.root / BUCKET / "full", {"a": b"x"})
    before = len(own_s3.log.read_text())
    s3_backend(own_s3, "full")
    empty = open_backend(BackendSpec(f"s3://{BUCKET}/empty", own_s3.synctool_options()))
    with pytest.raises(NotFound):
        empty.prepare(create=False)
    empty.prepare(create=True)  # as the first copy into a new root does
    asked = own_s3.log.read_text()[before:]
    assert "HEAD BUCKET" not in asked
    assert re.findall(r'prefix: prefix:"([^"]*)"', asked) == ["full/", "empty/"]
    with pytest.raises(NotFound, match="bucket no-such-bucket does not exist"):
        open_backend(BackendSpec("s3://no-such-bucket/p", own_s3.synctool_options())).prepare(create=False)


@pytest.mark.parametrize("keys", [3, 1_500])
def test_an_s3_root_s_probe_is_the_first_page_of_its_journal_lookup_and_listing(own_s3, keys):
    """The probe lists the root's first page; the journal lookup and the
    listing start from it. A root that fits in one page is listed in that one
    request; a longer one asks only for what the page does not hold."""
    names = {f"k{i:04}": b"" for i in range(keys)}
    journal = ".synctool-unverified-0123456789ab.json"  # sorts before every "k…"
    make_tree(own_s3.root / BUCKET / "root", {**names, journal: b"[]", "sub/x": b"y"})
    before = len(own_s3.log.read_text())
    backend = s3_backend(own_s3, "root")
    assert backend.journals() == [journal]
    assert [e.name for e in backend.list()] == sorted([*names, journal, "sub/x"])
    asked = re.findall(r'prefix: prefix:"([^"]*)"', own_s3.log.read_text()[before:])
    assert asked[0] == "root/"
    if keys < 1_000:
        assert asked == ["root/"]
    else:  # the journal is in the first page; the rest of the listing asks on from there
        assert "root/.synctool-unverified-" not in asked and len(asked) >= 2
    # A listing asked for again starts from the server, not from the old page.
    count = len(requests_since_start(own_s3))
    next(iter(backend.list()))
    assert len(requests_since_start(own_s3)) == count + 1


def test_an_s3_journal_lookup_past_the_first_page_asks_the_server(own_s3):
    before_journals = {f"-{i:04}": b"" for i in range(1_200)}  # "-" sorts before the journals' "."
    journal = ".synctool-unverified-0123456789ab.json"
    make_tree(own_s3.root / BUCKET / "root", {**before_journals, journal: b"[]"})
    before = len(own_s3.log.read_text())
    backend = s3_backend(own_s3, "root")
    assert backend.journals() == [journal]
    asked = re.findall(r'prefix: prefix:"([^"]*)"', own_s3.log.read_text()[before:])
    assert asked == ["root/", "root/.synctool-unverified-"]


def test_an_s3_run_s_probe_journal_lookup_and_listing_share_one_connection(own_s3, monkeypatch):
    """Across a network a new connection is one more round trip before the
    first copy: the coordinator's requests reuse the one it dialled first."""
    make_tree(own_s3.root / BUCKET / "root", {"a": b"x", "b/c": b"y"})
    dialled = []
    connect = http.client.HTTPConnection.connect
    monkeypatch.setattr(http.client.HTTPConnection, "connect", lambda self: dialled.append(1) or connect(self))
    backend = s3_backend(own_s3, "root")
    assert backend.journals() == []
    assert [e.name for e in backend.list()] == ["a", "b/c"]
    assert len(dialled) == 1


# -- listings cut midway resume after their last name --------------------------------
def test_an_s3_listing_cut_by_a_server_crash_resumes_after_its_last_key(own_s3):
    names = [f"p{r}/{i:04}" for r in range(8) for i in range(1_500)]  # 8 ranges of 2 pages
    make_tree(own_s3.root / BUCKET, {name: b"" for name in names})
    backend = s3_backend(own_s3)
    got: list[str] = []
    with pytest.raises(BackendError) as info:
        for entry in backend.list():
            got.append(entry.name)
            if len(got) == 3_500:
                own_s3.kill()  # with pages of later ranges still to ask for
    assert info.value.retryable
    assert 3_500 <= len(got) < len(names)

    own_s3.start()
    rest = [e.name for e in backend.list(start_after=got[-1])]
    assert got + rest == names  # nothing twice, nothing lost, in order
    # The ranges before the cut were not listed again.
    cut_range = got[-1].split("/")[0] + "/"
    assert not [p for p in requests_since_start(own_s3) if p.endswith("/") and p < cut_range]


def test_an_sftp_walk_cut_midway_resumes_in_the_folder_it_stopped_in(sftp_server, sftp_folder):
    # d050 holds files before and after its subfolder m/, which is cut while
    # it is listed: what d050 listed before m/ has been yielded already.
    names = [f"d{i:03}/f{j}" for i in range(100) for j in range(5)]
    names += [f"d050/a{j}" for j in range(5)] + [f"d050/m/{j:04}" for j in range(1_000)] + ["d050/z"]
    sftp_server.put(sftp_folder, {name: b"" for name in names})  # seen by a server with a cache too
    backend = open_backend(sftp_server.spec(sftp_folder))
    backend.prepare(create=False)
    real_scan = backend._scan
    cut = threading.Event()
    scanned: list[str] = []

    def scan(prefix, folder, is_root):
        scanned.append(prefix)
        items = real_scan(prefix, folder, is_root)
        if prefix != "d050/m/" or cut.is_set():
            return items
        return cut_after_the_first(items)

    def cut_after_the_first(items):
        for n, item in enumerate(items):
            if n == 1:
                sftp_server.cut()  # the next batch of names never comes
                cut.set()
            yield item

    backend._scan = scan
    try:
        got: list[str] = []
        with pytest.raises(BackendError) as info:
            for entry in backend.list():
                got.append(entry.name)
        assert info.value.retryable and cut.is_set()
        # What came before the cut came (d050's names before m/ included), and nothing after.
        assert got == sorted(names)[: sorted(names).index("d050/f4") + 1]

        scanned.clear()
        rest = [e.name for e in backend.list(start_after=got[-1])]
        assert got + rest == sorted(names)
        # Folders that held only earlier names were not listed again.
        assert [p for p in scanned if p < "d050/"] == [""]
    finally:
        backend.close()



def test_the_plan_s_bell_rings_for_every_batch_still_queued():
    """The coordinator waits on its workers' pipes and the plan's bell in one
    wait. Each batch handed over must leave the bell readable until it is
    taken, also one queued behind a batch just taken; else the coordinator
    sits out its whole wait with the plan's end already there."""
    ahead = ReadAhead(iter([1, 2]), "bell")
    ahead._thread.join(5)  # both handed over: ("items", [1, 2]), then ("end", None)
    taken = []
    while True:
        assert wait_for_readable([ahead.bell], 2) == [ahead.bell], f"no ring after {taken}"
        batch = ahead.take(0.0)
        if batch is None:
            break
        taken.append(batch)
    assert taken == [[1, 2]]
    assert wait_for_readable([ahead.bell], 0.0) == []  # nothing is left: no ring either
    ahead.close()


def test_an_sftp_listing_leaves_its_channels_clean_for_pipelined_requests(sftp_server, sftp_folder):
    """A folder's CLOSE is sent without waiting for its answer; the channel's
    next taker reads that answer first, so that a pipelined request (free
    space, a copy's reads) gets its own."""
    sftp_server.put(sftp_folder, {"a": b"1", "b/c": b"2", "d/e/f": b"3"})
    with open_backend(sftp_server.spec(sftp_folder)) as backend:
        backend.prepare(create=False)
        for _ in range(3):
            assert [e.name for e in backend.list()] == ["a", "b/c", "d/e/f"]
            assert backend.free_bytes() > 0
            assert [b"".join(backend.read(n)) for n in ("a", "b/c", "d/e/f")] == [b"1", b"2", b"3"]
