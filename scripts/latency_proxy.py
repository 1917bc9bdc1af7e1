#!/usr/bin/env python
"""A TCP proxy on loopback that puts a network between a client and a server.

    python scripts/latency_proxy.py --target 127.0.0.1:9000 --delay-ms 20 [--rate-mbit 100]

    with delayed(9000, delay_ms=20) as proxy:      # from Python: a child process
        connect to proxy.port instead of 9000

Every byte takes ``delay`` to cross in each direction, so a request and its
answer cost one round trip (2 x delay), as between a user and a provider
across the internet. What it models, and how:

* Delay: a chunk read at time t is written on at t + delay, and chunks keep
  their order in each direction (one queue per direction, emptied from its
  head by a timer, never by the order timers fire in).
* Connection set-up: a TCP handshake costs one round trip before the client
  may send; the client's first bytes leave no earlier than accept + 2 x delay,
  and the server's first bytes (an SSH banner) no earlier than accept +
  3 x delay, when the server would have seen the handshake end.
* Bandwidth (optional): each direction is one link shared by every
  connection, as a user's uplink is; a chunk occupies it for size / rate.
* In flight: at most ``window`` bytes per direction of a connection are
  inside the proxy; past that it stops reading, so the sender's own socket
  fills and it waits, as TCP's window makes it wait. A window/RTT ceiling per
  connection follows, as on a real path.

Cost: asyncio protocols, no per-byte work in Python (chunks are passed on as
received), one timer per chunk. It stops by itself when the process that
started it exits, at ``--deadline``, or when :func:`delayed` leaves its block.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import signal
import socket
import statistics
import subprocess
import threading
import sys
import time
from collections.abc import Iterator

LOOPBACK = "127.0.0.1"
#: Bytes one direction of one connection holds before it stops reading:
#: Linux's default largest TCP receive window is of this order.
WINDOW = 4 << 20
READ_SIZE = 256 << 10
#: How often the proxy looks whether its parent is still there.
PARENT_POLL = 0.5


class Link:
    """One direction's shared bandwidth: when it is free again, in loop time."""

    def __init__(self, rate: float | None):
        self.rate = rate  # bytes per second, None for unlimited
        self.free_at = 0.0

    def send(self, now: float, size: int) -> float:
        """When a chunk of ``size`` that arrived at ``now`` has been sent."""
        if self.rate is None:
            return now
        self.free_at = max(self.free_at, now) + size / self.rate
        return self.free_at


class Direction:
    """Bytes on their way from one socket to the other, in order, each with its due time."""

    def __init__(self, loop, delay: float, link: Link, not_before: float, window: int, conn: "Connection"):
        self.loop = loop
        self.conn = conn
        self.delay = delay
        self.link = link
        self.not_before = not_before
        self.window = window
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()  # None: end of stream
        self.held = 0
        self.source: asyncio.Transport | None = None  # where the bytes are read
        self.sink: asyncio.Transport | None = None  # where they are written, once connected
        self.timer: asyncio.TimerHandle | None = None
        self.sink_full = False  # the sink's own buffer is past its high-water mark
        self.ended = False  # the end of stream was read
        self.done = False  # and passed on

    def push(self, data: bytes | None) -> None:
        if data is None:
            self.ended = True
        now = self.loop.time()
        sent = self.link.send(max(now, self.not_before), len(data) if data else 0)
        self.queue.append((sent + self.delay, data))
        if data:
            self.held += len(data)
        self._throttle()
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue and self.sink is not None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now and self.sink is not None:
            _, data = self.queue.popleft()
            if data is None:
                self.done = True
                try:
                    self.sink.write_eof()
                except OSError:  # the other end is gone already
                    self.conn.close()
                    return
                self.conn.settle()
                continue
            self.held -= len(data)
            self.sink.write(data)
        self._throttle()
        self._arm()

    def connected(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self._arm()

    def _throttle(self) -> None:
        """Read on only while the bytes in flight fit the window and the sink keeps up."""
        if self.source is None or self.source.is_closing():
            return
        if self.held >= self.window or self.sink_full:
            self.source.pause_reading()
        else:
            self.source.resume_reading()

    def set_sink_full(self, full: bool) -> None:
        self.sink_full = full
        self._throttle()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class Side(asyncio.Protocol):
    """One socket of a proxied connection: what it reads goes into ``outgoing``."""

    def __init__(self, conn: "Connection", outgoing: Direction, incoming: Direction):
        self.conn = conn
        self.outgoing = outgoing  # bytes read here
        self.incoming = incoming  # bytes written here
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.outgoing.source = transport
        self.incoming.connected(transport)

    def data_received(self, data: bytes) -> None:
        self.outgoing.push(data)

    def eof_received(self) -> bool:
        self.outgoing.push(None)
        return True  # keep the socket open: the other direction may still carry bytes

    def pause_writing(self) -> None:
        self.incoming.set_sink_full(True)

    def resume_writing(self) -> None:
        self.incoming.set_sink_full(False)

    def connection_lost(self, exc) -> None:
        if not (self.outgoing.ended and self.incoming.done):
            self.conn.close()  # reset, or gone mid-way: so goes the other side, at once


class Connection:
    """A client's connection and the proxy's own connection to the server."""

    def __init__(self, proxy: "Proxy"):
        loop, now, d = proxy.loop, proxy.loop.time(), proxy.delay
        self.proxy = proxy
        self.up = Direction(loop, d, proxy.links[0], now + 2 * d, proxy.window, self)  # client -> server
        self.down = Direction(loop, d, proxy.links[1], now + 3 * d, proxy.window, self)  # server -> client
        self.client = Side(self, self.up, self.down)
        self.server = Side(self, self.down, self.up)
        self.closed = False

    async def open_server(self) -> None:
        try:
            await self.proxy.loop.create_connection(lambda: self.server, *self.proxy.target)
        except OSError:
            self.close()

    def settle(self) -> None:
        """Close what has nothing left to carry: a socket whose both directions ended."""
        for side in (self.client, self.server):
            if side.transport is not None and side.outgoing.ended and side.incoming.done:
                side.transport.close()
        if self.up.done and self.down.done:
            self.proxy.connections.discard(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for direction in (self.up, self.down):
            direction.close()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.abort()
        self.proxy.connections.discard(self)


class Proxy:
    def __init__(self, loop, target: tuple[str, int], delay: float, rate: float | None, window: int):
        self.loop = loop
        self.target = target
        self.delay = delay
        self.window = window
        self.links = (Link(rate), Link(rate))
        self.connections: set[Connection] = set()

    def accept(self) -> Side:
        conn = Connection(self)
        self.connections.add(conn)
        self.loop.create_task(conn.open_server())
        return conn.client


async def serve(target: tuple[str, int], port: int, delay: float, rate: float | None, window: int,
                deadline: float | None, parent: int | None, ready=None) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop, target, delay, rate, window)
    server = await loop.create_server(proxy.accept, LOOPBACK, port, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(port)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    try:
        while not stop.done():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if parent is not None and os.getppid() != parent:
                break  # the process that started us is gone
            await asyncio.wait([stop], timeout=PARENT_POLL)
    finally:
        server.close()
        for conn in list(proxy.connections):
            conn.close()


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or LOOPBACK, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="HOST:PORT of the server")
    ap.add_argument("--port", type=int, default=0, help="port to listen on, 127.0.0.1 [a free one]")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay, each direction")
    ap.add_argument("--rate-mbit", type=float, default=None, help="bandwidth of each direction, Mbit/s [unlimited]")
    ap.add_argument("--window", type=int, default=WINDOW, help="bytes in flight per direction of a connection [%(default)s]")
    ap.add_argument("--deadline", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--parent", type=int, default=None, help="stop when this process is no longer our parent")
    ap.add_argument("--measure", action="store_true", help="print what the proxy costs and how exact its delay is, then exit")
    args = ap.parse_args(argv)
    if args.measure:
        measure(args.delay_ms)
        return 0
    if not args.target:
        ap.error("--target is required")
    deadline = time.monotonic() + args.deadline if args.deadline else None
    rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit else None

    def ready(port: int) -> None:
        print(port, flush=True)  # the one line a starter waits for

    asyncio.run(serve(parse_target(args.target), args.port, args.delay_ms / 1000, rate, args.window,
                      deadline, args.parent, ready))  # fmt: skip
    return 0


# -- for the benchmark and the tests -------------------------------------------------
@dataclasses.dataclass
class Delayed:
    port: int  # connect here to reach the server across the delay
    proc: subprocess.Popen


@contextlib.contextmanager
def delayed(target_port: int, delay_ms: float, rate_mbit: float | None = None, *,
            window: int = WINDOW, deadline: float | None = None) -> Iterator[Delayed]:  # fmt: skip
    """Run the proxy in a child process in front of ``127.0.0.1:target_port``.

    A process of its own: its CPU is not taken from the caller's interpreter,
    and it stops when the block ends, when ``deadline`` seconds have passed,
    or when this process dies without ending the block.
    """
    cmd = [sys.executable, __file__, "--target", f"{LOOPBACK}:{target_port}", "--delay-ms", str(delay_ms),
           "--window", str(window), "--parent", str(os.getpid())]  # fmt: skip
    if rate_mbit:
        cmd += ["--rate-mbit", str(rate_mbit)]
    if deadline:
        cmd += ["--deadline", str(deadline)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"latency proxy did not start (exit {proc.wait(10)})")
        yield Delayed(int(line), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


class EchoServer:
    """Sends back every byte it reads; on the client's end of stream, closes its own side.

    With ``banner`` it speaks first, as an SSH server does. A thread per
    connection: what the proxy is measured and tested against.
    """

    def __init__(self, banner: bytes = b""):
        self.banner = banner
        self.sock = socket.create_server((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(self.banner)
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def exchange(sock: socket.socket, payload: bytes) -> float:
    """Send ``payload`` to an echo and read it back: the seconds that took."""
    started = time.perf_counter()
    sock.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = sock.recv(min(len(payload) - len(got), 1 << 20))
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        got += chunk
    if got != payload:
        raise ValueError("the bytes came back changed")
    return time.perf_counter() - started


def measure(delay_ms: float) -> None:
    """Print the round trips the proxy gives against the one it is set to, and its CPU per MiB."""
    import psutil

    echo = EchoServer()
    mib = 256
    with delayed(echo.port, delay_ms, window=64 << 20) as proxy:
        child = psutil.Process(proxy.proc.pid)
        with socket.create_connection((LOOPBACK, proxy.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            exchange(sock, b"x")
            rtts = [exchange(sock, b"ping") * 1000 for _ in range(20)]
            before = sum(child.cpu_times()[:2])
            payload = os.urandom(1 << 20)
            done = threading.Event()

            def drain() -> None:
                left = mib << 20
                while left > 0 and (chunk := sock.recv(1 << 20)):
                    left -= len(chunk)
                done.set()

            reader = threading.Thread(target=drain)
            reader.start()
            started = time.perf_counter()
            for _ in range(mib):
                sock.sendall(payload)
            reader.join()
            took = time.perf_counter() - started
            cpu = sum(child.cpu_times()[:2]) - before
    echo.close()
    print(f"set round trip {2 * delay_ms:.1f} ms; measured over 20 pings: min {min(rtts):.1f}, "
          f"median {statistics.median(rtts):.1f}, max {max(rtts):.1f} ms")
    print(f"{mib} MiB up and {mib} MiB back in {took:.2f} s; proxy CPU {cpu:.2f} s = "
          f"{cpu / (2 * mib) * 1000:.2f} ms per MiB forwarded")


if __name__ == "__main__":
    sys.exit(main())
