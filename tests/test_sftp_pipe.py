"""Pipelined SFTP reads and writes (synctool/backends/sftp_pipe.py) against
real servers: OpenSSH's sshd, which takes 256 KiB requests, and rclone's
SFTP server, which says nothing of its limits and reads 32 KiB at most."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import paramiko
import pytest
from paramiko.buffered_pipe import PipeTimeout

from synctool.backends import open_backend, sftp_pipe
from synctool.backends.sftp import _piped

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def _clean_ssh_environment(no_ssh_environment):
    """No known_hosts and no agent of the person running the tests."""


@pytest.fixture
def backend(sftp_server, sftp_folder):
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=True)
        yield b


def _chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _idle_channels(b) -> int:
    return len(b._conn._idle)


def test_limits_and_write_requests_that_fill_whole_packets(backend, sftp_server):
    limits = backend._conn.limits
    if sftp_server.kind == "openssh":
        assert limits.read > sftp_pipe.SAFE_REQUEST and limits.write > sftp_pipe.SAFE_REQUEST
    else:  # rclone's server does not know limits@openssh.com
        assert limits == sftp_pipe.Limits()
    with backend._sftp("probing") as lease, _piped(lease) as pipe:
        handle = b"\0" * 4  # OpenSSH and rclone both hand out 4-byte handles
        size = sftp_pipe.write_request_size(pipe, handle, limits.write)
        room = pipe.channel.out_max_packet_size - sftp_pipe.PACKET_SLACK
        header = 4 + 1 + 4 + 4 + len(handle) + 8 + 4
        assert 0 < size <= limits.write
        assert (size + header) % room == 0  # no nearly empty packet after each request


@pytest.mark.parametrize(
    "size",
    [0, 1, 32 * KiB - 93, 32 * KiB, 32 * KiB + 1, 228_899, 228_900, 261_120, 3 * MiB + 7],
)
def test_sizes_around_request_boundaries_round_trip(backend, sftp_server, sftp_folder, size):
    data = os.urandom(size)
    # Chunks of an odd size, so requests are joined from several of them.
    backend.write("f.bin", _chunks(data, 100_003), size)
    assert (sftp_server.local(sftp_folder) / "f.bin").read_bytes() == data
    assert b"".join(backend.read("f.bin")) == data


def test_short_reads_are_followed_up(sftp_server, sftp_folder):
    """Asked for more than it gives (rclone's server reads 32 KiB at most),
    the server's short replies are completed by further requests."""
    data = os.urandom(2 * MiB + 5)
    sftp_server.put(sftp_folder, {"f.bin": data})
    with open_backend(sftp_server.spec(sftp_folder)) as b:
        b.prepare(create=False)
        b._conn.limits = sftp_pipe.Limits(read=256 * KiB, write=sftp_pipe.SAFE_REQUEST)
        assert b"".join(b.read("f.bin")) == data


def test_a_read_stopped_early_leaves_its_channel_usable(backend):
    data = os.urandom(20 * MiB)
    backend.write("f.bin", _chunks(data, MiB), len(data))
    idle = _idle_channels(backend)
    reader = backend.read("f.bin")
    first = next(reader)
    reader.close()  # requests still in flight: their replies are read and dropped
    assert data.startswith(first)
    assert _idle_channels(backend) == idle  # the channel went back to the pool
    assert b"".join(backend.read("f.bin")) == data


def test_a_failing_source_leaves_nothing_and_its_channel_usable(backend, sftp_server, sftp_folder):
    class Broken(Exception):
        pass

    def chunks():
        for _ in range(6):
            yield os.urandom(MiB)
        raise Broken()

    idle = _idle_channels(backend)
    with pytest.raises(Broken):
        backend.write("f.bin", chunks(), 10 * MiB)
    assert list(Path(sftp_server.local(sftp_folder)).iterdir()) == []
    assert _idle_channels(backend) == idle
    backend.write("f.bin", iter([b"ok"]), 2)
    assert b"".join(backend.read("f.bin")) == b"ok"


@pytest.fixture
def sshd_backend(sshd_server, sftp_folder):
    """On OpenSSH only: rclone's server notices a file changed under it and
    fails the read itself."""
    with open_backend(sshd_server.spec(sftp_folder)) as b:
        b.prepare(create=True)
        yield b


def _read_changing(backend, path: Path, size: int, change) -> tuple[bytes, bytes]:
    """Write ``size`` random bytes, read them back calling ``change(path)``
    after the first chunk; (what was written, what was read)."""
    data = os.urandom(size)
    backend.write("f.bin", _chunks(data, MiB), size)
    got = []
    for chunk in backend.read("f.bin"):
        if not got:
            change(path)
        got.append(chunk)
    return data, b"".join(got)


def test_a_file_that_shrinks_while_read_ends_early(sshd_backend, sshd_server, sftp_folder):
    """Reads past the new end are answered with EOF: the read ends there,
    with what came before, and the channel stays usable."""
    path = sshd_server.local(sftp_folder) / "f.bin"
    data, content = _read_changing(sshd_backend, path, 32 * MiB, lambda p: os.truncate(p, MiB))
    # Reads sent before the cut may have brought more than the new size, but
    # no more than was in flight then.
    assert len(content) < len(data) and data.startswith(content)
    assert b"".join(sshd_backend.read("f.bin")) == data[:MiB]


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"more")


def test_a_file_that_grows_while_read_ends_at_its_size_when_opened(sshd_backend, sshd_server, sftp_folder):
    path = sshd_server.local(sftp_folder) / "f.bin"
    data, content = _read_changing(sshd_backend, path, 12 * MiB, _append)
    assert content == data


# -- the channel's receive buffer ----------------------------------------------
# Inbox replaces paramiko's BufferedPipe on each channel, so paramiko's own
# SFTP calls read through it too: it must keep that class's meaning.


def test_inbox_takes_exact_replies_across_packet_edges():
    inbox = sftp_pipe.Inbox()
    for packet in (b"abc", b"defgh", b"ij"):
        inbox.feed(packet)
    first = inbox.take(4)
    assert b"".join(first) == b"abcd" and first[0] == b"abc"  # whole packets pass as they came
    assert b"".join(inbox.take(5)) == b"efghi" and len(inbox) == 1
    assert inbox.read(100) == b"j" and len(inbox) == 0


def test_inbox_wakes_its_reader_when_the_whole_reply_is_in():
    inbox = sftp_pipe.Inbox()

    def sender():
        for _ in range(10):
            time.sleep(0.01)
            inbox.feed(b"x" * 100)

    threading.Thread(target=sender).start()
    assert b"".join(inbox.take(1000, timeout=10)) == b"x" * 1000


def test_inbox_ends_and_times_out_as_paramiko_expects():
    inbox = sftp_pipe.Inbox()
    with pytest.raises(PipeTimeout):
        inbox.take(1, timeout=0.05)
    with pytest.raises(PipeTimeout):
        inbox.read(1, timeout=0.0)
    inbox.feed(b"ab")
    inbox.close()
    with pytest.raises(EOFError):
        inbox.take(3)  # a reply cut short by the channel closing
    assert inbox.read(10) == b"ab"
    assert inbox.read(10) == b""  # end of file, as BufferedPipe says it


def test_a_channel_opened_without_an_inbox_is_refused(backend):
    transport = backend._conn.transport
    sftp = paramiko.SFTPClient.from_transport(transport)
    try:
        with pytest.raises(TypeError):
            sftp_pipe.Pipe(sftp)
    finally:
        sftp.close()
