"""Pipelined SFTP requests on one channel: the reads and writes of a copy.

On a fast link a copy over SFTP is bound by the client's CPU, and paramiko's
``SFTPFile`` spends it badly: it asks for 32 KiB at a time, and a 32 KiB write
with its header overflows a 32 KiB SSH packet, so every write costs two
packets; its writer lets the pipeline run dry every hundred requests or so;
and its read-ahead runs on a thread of its own that costs about four times
the CPU of the bytes it brings. Here the few requests a copy needs are sent
directly on the channel:

* as large as the server allows (the ``limits@openssh.com`` extension; 32 KiB,
  what paramiko itself assumes every server takes, when the server does not
  say), and writes cut so that each fills whole SSH packets;
* a steady number in flight: the next reply is read only when the pipe is full;
* replies taken from the channel in large reads and parsed in place.

A :class:`Pipe` serves one thread holding one leased channel. paramiko's own
``SFTPClient`` calls may use that channel only while the pipe has nothing in
flight, since they read replies straight from the channel.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import struct
import time
from collections.abc import Iterable, Iterator

import paramiko
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_READ,
    CMD_REALPATH,
    CMD_STAT,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_DESC,
    SFTP_EOF,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_PERMISSION_DENIED,
    int64,
)

#: Bytes every SFTP server takes in one read or write (paramiko never asks more).
SAFE_REQUEST = 32 << 10
#: The most asked for in one request, whatever the server says it takes.
LARGEST_REQUEST = 1 << 20
#: Bytes of one file's writes in flight. OpenSSH's 2 MiB channel window
#: holds back more than that anyway.
WRITE_AHEAD = 4 << 20
#: Bytes of one file's reads in flight; our channel window must hold them.
READ_AHEAD = 8 << 20
#: paramiko puts at most the peer's packet size less this much channel data in
#: one SSH packet (``Channel._wait_for_send_window``).
PACKET_SLACK = 64
_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">IBI")  # a reply's length, type and request number


@dataclasses.dataclass(frozen=True)
class Limits:
    """The largest read and write one request may carry on this server."""

    read: int = SAFE_REQUEST
    write: int = SAFE_REQUEST


class Inbox(BufferedPipe):
    """A channel's receive buffer that keeps the packets' data as they came.

    paramiko's own buffer copies every packet into one array, wakes the
    reader at each packet (OpenSSH sends 32 KiB ones), and copies it all out
    again, with a move of what is left behind: about 8,000 thread switches and
    several copies per 256 MiB read. This one queues the packets' bytes as
    they are; :meth:`take` wakes its reader only once the whole reply it
    waits for is in, and hands the packets over without joining them. The
    calls paramiko makes on a channel's buffer keep their meaning, so its
    ``SFTPClient`` works on the channel as before.

    It must be the channel's buffer before anything arrives on the channel:
    install it with :func:`prepare_channel` right after opening the channel.
    """

    def __init__(self):
        super().__init__()
        self._chunks: collections.deque = collections.deque()
        self._size = 0
        self._want = 1  # bytes that wake the reader

    def __len__(self) -> int:
        return self._size

    def set_event(self, event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size:
                event.set()
            else:
                event.clear()

    def feed(self, data) -> None:
        if isinstance(data, str):
            data = data.encode()
        with self._lock:
            if self._event is not None:
                self._event.set()
            self._chunks.append(data)
            self._size += len(data)
            if self._size >= self._want:
                self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def _wait(self, want: int, timeout: float | None) -> None:
        """Wait, holding the lock, until ``want`` bytes are in or the channel closed."""
        if self._size >= want or self._closed:
            return
        if timeout == 0.0:
            raise PipeTimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._want = want
        try:
            while self._size < want and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PipeTimeout()
                self._cv.wait(left)
        finally:
            self._want = 1

    def _pop(self, n: int) -> list:
        """The first ``n`` bytes (held under the lock), as whole chunks where they fit."""
        pieces = []
        while n:
            chunk = self._chunks.popleft()
            if len(chunk) > n:
                view = memoryview(chunk)
                self._chunks.appendleft(view[n:])
                chunk = view[:n]
            pieces.append(chunk)
            n -= len(chunk)
            self._size -= len(chunk)
        if not self._size and self._event is not None and not self._closed:
            self._event.clear()
        return pieces

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            self._wait(1, timeout)
            return b"".join(self._pop(min(nbytes, self._size)))

    def empty(self) -> bytes:
        with self._lock:
            return b"".join(self._pop(self._size))

    def take(self, n: int, timeout: float | None = None) -> list:
        """Exactly ``n`` bytes, as the bytes (or views) of the packets that
        brought them. Raises EOFError if the channel closes first, and
        PipeTimeout after ``timeout`` seconds."""
        with self._lock:
            self._wait(n, timeout)
            if self._size < n:
                raise EOFError("the server closed the SFTP channel")
            return self._pop(n)


def prepare_channel(channel: paramiko.Channel) -> None:
    """Give a newly opened channel (nothing received yet) an :class:`Inbox`."""
    channel.in_buffer = Inbox()


class Pipe:
    """SFTP requests sent back to back on one channel, their replies read in turn."""

    def __init__(self, sftp: paramiko.SFTPClient):
        self.sftp = sftp
        self.channel = sftp.get_channel()
        self.inbox = self.channel.in_buffer
        if not isinstance(self.inbox, Inbox):
            raise TypeError("the channel was opened without prepare_channel()")
        self._waiting: set[int] = set()  # sent, reply not read yet
        # Replies read before their turn: (type, payload); a DATA reply's
        # payload is the list of its data's pieces, any other is one view.
        self._early: dict[int, tuple[int, object]] = {}

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing read ahead: paramiko may use the channel."""
        return not self._waiting and not self._early

    # -- sending ---------------------------------------------------------------
    def _number(self) -> int:
        # The channel's SFTPClient numbers its own requests from the same
        # counter, so a reply can never be taken for another's.
        num = self.sftp.request_number
        self.sftp.request_number = num + 1
        self._waiting.add(num)
        return num

    def send(self, kind: int, *fields) -> int:
        """Send one request; fields are encoded as paramiko encodes them. Returns its number."""
        msg = paramiko.Message()
        num = self._number()
        msg.add_int(num)
        for field in fields:
            if isinstance(field, int64):
                msg.add_int64(field)
            elif isinstance(field, int):
                msg.add_int(field)
            elif isinstance(field, paramiko.SFTPAttributes):
                field._pack(msg)  # as SFTPClient does: the class has no public encoder
            else:
                msg.add_string(field)
        body = msg.asbytes()
        self.channel.sendall(struct.pack(">IB", len(body) + 1, kind) + body)
        return num

    def send_write(self, handle: bytes, offset: int, pieces: list[memoryview], length: int) -> int:
        """Send a WRITE of ``pieces`` (``length`` bytes in all) at ``offset``."""
        num = self._number()
        header = struct.pack(">IBII", 1 + 4 + 4 + len(handle) + 8 + 4 + length, CMD_WRITE, num, len(handle))
        message = b"".join((header, handle, struct.pack(">QI", offset, length), *pieces))
        # A memoryview: paramiko slices the message into packets, and slicing
        # bytes would copy the rest of it each time.
        self.channel.sendall(memoryview(message))
        return num

    def send_read(self, handle: bytes, offset: int, length: int) -> int:
        num = self._number()
        header = struct.pack(">IBII", 1 + 4 + 4 + len(handle) + 8 + 4, CMD_READ, num, len(handle))
        self.channel.sendall(header + handle + struct.pack(">QI", offset, length))
        return num

    # -- receiving -------------------------------------------------------------
    def reply(self, num: int) -> tuple[int, memoryview]:
        """The reply to request ``num``: its type and what follows the request number."""
        kind, payload = self._reply(num)
        if kind == CMD_DATA:
            payload = memoryview(b"".join([_U32.pack(sum(map(len, payload))), *payload]))
        return kind, payload

    def data_reply(self, num: int) -> tuple[int, object]:
        """The reply to READ ``num``: (CMD_DATA, the data as a list of pieces)
        or (type, payload) of whatever else came."""
        return self._reply(num)

    def _reply(self, num: int) -> tuple[int, object]:
        while num not in self._early:
            length, kind, answered = _HEAD.unpack(_joined(self._take(_HEAD.size)))
            if answered not in self._waiting or length < _HEAD.size - 4:
                raise paramiko.SFTPError(f"the server answered request {answered}, which was never sent")
            rest = length - (_HEAD.size - 4)
            if kind == CMD_DATA and rest >= 4:
                # The data stays in the pieces it came in: no join.
                count = _U32.unpack(_joined(self._take(4)))[0]
                if count != rest - 4:
                    raise paramiko.SFTPError(f"a data reply of {rest} bytes says it carries {count}")
                payload = self._take(count) if count else []
            else:
                payload = memoryview(_joined(self._take(rest)))
            self._waiting.discard(answered)
            self._early[answered] = (kind, payload)
        return self._early.pop(num)

    def call(self, kind: int, *fields) -> tuple[int, memoryview]:
        return self.reply(self.send(kind, *fields))

    def settle(self, nums: Iterable[int]) -> OSError | None:
        """Read the replies to ``nums`` (statuses); return the first refusal, if any."""
        first = None
        for num in nums:
            kind, payload = self.reply(num)  # a failing channel raises from here
            try:
                check_status(kind, payload)
            except OSError as exc:
                first = first or exc
        return first

    def drain(self, nums: Iterable[int]) -> None:
        """Read and drop the replies to ``nums``, whatever they say."""
        for num in nums:
            self._reply(num)

    def _take(self, n: int) -> list:
        """The next ``n`` bytes from the channel, in the pieces they came in."""
        if not n:
            return []
        try:
            pieces = self.inbox.take(n, self.channel.timeout)
        except PipeTimeout:
            raise TimeoutError("the server did not answer in time") from None
        # What Channel.recv does after each read: let the server send more.
        channel = self.channel
        grant = channel._check_add_window(n)
        if grant:
            msg = paramiko.Message()
            msg.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
            msg.add_int(channel.remote_chanid)
            msg.add_int(grant)
            channel.transport._send_user_message(msg)
        return pieces


def _joined(pieces: list) -> bytes:
    return pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else b"".join(pieces)


def check_status(kind: int, payload: memoryview) -> None:
    """Raise the error a STATUS reply carries, as paramiko's SFTPClient would."""
    if kind != CMD_STATUS:
        raise paramiko.SFTPError(f"expected a status reply, got message type {kind}")
    code = _U32.unpack_from(payload)[0]
    if code == SFTP_OK:
        return
    text = paramiko.Message(bytes(payload[4:])).get_text() if len(payload) >= 8 else ""
    if code == SFTP_EOF:
        raise EOFError(text)
    if code == SFTP_NO_SUCH_FILE:
        raise FileNotFoundError(errno.ENOENT, text)
    if code == SFTP_PERMISSION_DENIED:
        raise PermissionError(errno.EACCES, text)
    raise OSError(text or (SFTP_DESC[code] if code < len(SFTP_DESC) else f"SFTP status {code}"))


def server_limits(pipe: Pipe) -> Limits:
    """What the server takes per request (OpenSSH 8.6 and later say; others get the safe size)."""
    return _limits(*pipe.call(CMD_EXTENDED, "limits@openssh.com"))


@dataclasses.dataclass(frozen=True)
class FirstLook:
    """What a new connection asks before its first job."""

    limits: Limits
    real: str | None  # the root with its links resolved; None: the server could not (it does not exist)
    mode: int | None  # the root's st_mode; None: it does not exist


def first_look(pipe: Pipe, root: str) -> FirstLook:
    """The server's limits, and the realpath and the attributes of ``root``,
    asked together: one round trip where one question after the other took three."""
    limits = pipe.send(CMD_EXTENDED, "limits@openssh.com")
    real, attrs = pipe.send(CMD_REALPATH, root), pipe.send(CMD_STAT, root)
    found = _limits(*pipe.reply(limits))
    kind, payload = pipe.reply(real)
    resolved = None
    if kind == CMD_NAME:
        msg = paramiko.Message(bytes(payload))
        resolved = msg.get_text() if msg.get_int() else None
    else:
        with contextlib.suppress(OSError):  # missing, or refused: the caller walks up to what is there
            check_status(kind, payload)
    kind, payload = pipe.reply(attrs)
    mode = None
    if kind == CMD_ATTRS:
        mode = paramiko.SFTPAttributes._from_msg(paramiko.Message(bytes(payload))).st_mode
    else:
        try:
            check_status(kind, payload)
        except FileNotFoundError:
            pass
    return FirstLook(found, resolved, mode)


def _limits(kind: int, payload: memoryview) -> Limits:
    if kind != CMD_EXTENDED_REPLY:
        return Limits()  # a status: the server does not know the extension
    msg = paramiko.Message(bytes(payload))
    _packet, read, write = msg.get_int64(), msg.get_int64(), msg.get_int64()
    return Limits(
        read=min(read, LARGEST_REQUEST) if read else SAFE_REQUEST,
        write=min(write, LARGEST_REQUEST) if write else SAFE_REQUEST,
    )


def statvfs(pipe: Pipe, path: str) -> tuple[int, int] | None:
    """(free bytes for an unprivileged user, longest name) of the file system
    holding ``path``, through OpenSSH's statvfs@openssh.com; None where the
    server does not know the extension."""
    kind, payload = pipe.call(CMD_EXTENDED, "statvfs@openssh.com", path)
    if kind != CMD_EXTENDED_REPLY:
        return None
    msg = paramiko.Message(bytes(payload))
    _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
    _files, _ffree, _favail, _fsid, _flag, namemax = (msg.get_int64() for _ in range(6))
    return bavail * frsize, namemax


def open_file(pipe: Pipe, path: str, flags: int, attributes: paramiko.SFTPAttributes | None = None) -> bytes:
    """OPEN ``path``; return its handle."""
    kind, payload = pipe.call(CMD_OPEN, path, flags, attributes or paramiko.SFTPAttributes())
    if kind != CMD_HANDLE:
        check_status(kind, payload)
        raise paramiko.SFTPError(f"expected a handle, got message type {kind}")
    return paramiko.Message(bytes(payload)).get_binary()


def write_request_size(pipe: Pipe, handle: bytes, largest: int) -> int:
    """Bytes per WRITE: as many as the server takes, cut to fill whole SSH packets."""
    room = pipe.channel.out_max_packet_size - PACKET_SLACK
    header = 4 + 1 + 4 + 4 + len(handle) + 8 + 4
    packets = (largest + header) // room
    return packets * room - header if packets else largest


def write_file(pipe: Pipe, handle: bytes, chunks: Iterable[bytes], limits: Limits) -> None:
    """Write ``chunks`` to the open ``handle`` and close it.

    Raises the first write the server refused, or whatever the chunks raised;
    either way the handle is closed and every reply read, unless the channel
    itself failed (then the pipe is left not idle).
    """
    size = write_request_size(pipe, handle, limits.write)
    most = max(2, WRITE_AHEAD // size)
    in_flight: collections.deque[int] = collections.deque()
    try:
        for offset, pieces, length in _requests(chunks, size):
            in_flight.append(pipe.send_write(handle, offset, pieces, length))
            if len(in_flight) > most:
                check_status(*pipe.reply(in_flight.popleft()))
    except BaseException:
        _abandon(pipe, handle, in_flight)
        raise
    # The close goes out behind the last writes: one round trip for both.
    in_flight.append(pipe.send(CMD_CLOSE, handle))
    refused = pipe.settle(in_flight)
    if refused is not None:
        raise refused


def _requests(chunks: Iterable[bytes], size: int) -> Iterator[tuple[int, list[memoryview], int]]:
    """(offset, pieces, length) of each write: the chunks cut and joined into ``size`` bytes."""
    offset, pieces, have = 0, [], 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            take = min(len(view), size - have)
            pieces.append(view[:take])
            have += take
            view = view[take:]
            if have == size:
                yield offset, pieces, have
                offset, pieces, have = offset + have, [], 0
    if have:
        yield offset, pieces, have


def read_file(pipe: Pipe, handle: bytes, limits: Limits) -> Iterator[bytes]:
    """The content of the open ``handle``, then close it.

    Its size comes with the first read (an FSTAT sent alongside), so no
    request is spent past the end. A short reply (the server gave less than
    asked, short of the end) is followed by a request for the rest, ahead of
    everything later. A file that shrinks meanwhile ends where the server
    says it ends; one that grows ends at the size it had when opened.
    """
    size = limits.read
    most = max(2, READ_AHEAD // size)
    in_flight: collections.deque[tuple[int, int, int]] = collections.deque()  # (request, offset, length), in file order
    stat = pipe.send(CMD_FSTAT, handle)
    in_flight.append((pipe.send_read(handle, 0, size), 0, size))
    end, asked = None, size  # file size once known; bytes asked for so far
    try:
        while in_flight:
            if end is None:
                end = _size_of(*pipe.reply(stat))
            while asked < end and len(in_flight) < most:
                length = min(size, end - asked)
                in_flight.append((pipe.send_read(handle, asked, length), asked, length))
                asked += length
            num, offset, length = in_flight.popleft()
            kind, payload = pipe.data_reply(num)
            got = sum(map(len, payload)) if kind == CMD_DATA else 0
            if not got:
                if kind != CMD_DATA:
                    try:
                        check_status(kind, payload)
                        raise paramiko.SFTPError("a read was answered with OK and no data")
                    except EOFError:
                        pass
                # The file shrank: it ends here, and later replies are past its end.
                end = asked = min(end, offset)
                continue
            if offset >= end:
                continue  # asked for before the file shrank
            if got > end - offset:  # nor past the size it had when opened
                got = end - offset
                payload = _first(payload, got)
            # The pieces as they came off the channel: whole packets' data
            # pass on as they are, only those cut at a reply's edge are copied.
            for piece in payload:
                yield piece if isinstance(piece, bytes) else bytes(piece)
            if got < length and offset + got < end:
                rest = (offset + got, length - got)
                in_flight.appendleft((pipe.send_read(handle, *rest), *rest))
    except BaseException:  # the consumer stopped early, too (GeneratorExit)
        _abandon(pipe, handle, [n for n, _, _ in in_flight] + ([stat] if end is None else []))
        raise
    refused = pipe.settle([pipe.send(CMD_CLOSE, handle)])
    if refused is not None:
        raise refused


def _first(pieces: list, n: int) -> list:
    """The first ``n`` bytes of ``pieces``."""
    out = []
    for piece in pieces:
        if n <= 0:
            break
        out.append(piece[:n])
        n -= len(out[-1])
    return out


def _size_of(kind: int, payload: memoryview) -> int:
    """The size in an FSTAT reply: the attributes' flags, then the size when flagged."""
    if kind != CMD_ATTRS:
        check_status(kind, payload)
        raise paramiko.SFTPError(f"expected attributes, got message type {kind}")
    if not _U32.unpack_from(payload)[0] & paramiko.SFTPAttributes.FLAG_SIZE:
        raise paramiko.SFTPError("the server did not say how large the file is")
    return struct.unpack_from(">Q", payload, 4)[0]


def _abandon(pipe: Pipe, handle: bytes, in_flight: Iterable[int]) -> None:
    """After a failure: close the handle and read what is still owed, so the
    channel can serve again. If even that fails, the pipe stays not idle and
    the caller retires the channel."""
    try:
        pipe.drain([*in_flight, pipe.send(CMD_CLOSE, handle)])
    except Exception:  # noqa: BLE001, S110 - the channel is gone; the caller's error says why
        pass
