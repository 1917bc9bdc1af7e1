"""scripts/latency_proxy.py: the network the benchmark puts between the tools and the servers.

Real sockets on loopback: a small echo server, and the proxy as the child
process the benchmark starts. Times are only ever asserted from below (the
proxy must add at least what it is set to), never from above: the machine is
shared and may run late, but it can never run early.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from scripts.latency_proxy import EchoServer, delayed, exchange

PROXY = Path(__file__).resolve().parent.parent / "scripts" / "latency_proxy.py"


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def test_every_round_trip_takes_at_least_twice_the_delay(echo):
    delay = 0.03
    with delayed(echo.port, delay * 1000) as proxy:
        opened = time.perf_counter()
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The handshake's round trip comes before the first byte can leave.
            exchange(sock, b"x")
            assert time.perf_counter() - opened >= 4 * delay
            for _ in range(5):
                assert exchange(sock, b"ping") >= 2 * delay


def test_a_server_that_speaks_first_is_heard_after_the_handshake():
    server = EchoServer(banner=b"SSH-2.0-test\r\n")
    delay = 0.03
    try:
        with delayed(server.port, delay * 1000) as proxy:
            opened = time.perf_counter()
            with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
                assert sock.recv(100) == b"SSH-2.0-test\r\n"
                # the server hears the handshake end after 1.5 round trips, and its bytes take one more way
                assert time.perf_counter() - opened >= 4 * delay
    finally:
        server.close()


def test_bytes_cross_intact_and_in_order_both_ways_at_once(echo):
    rng = random.Random(7)
    payload = rng.randbytes(24 << 20)
    received = bytearray()
    with delayed(echo.port, 5, window=1 << 20) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:

            def read_back() -> None:
                while chunk := sock.recv(1 << 20):
                    received.extend(chunk)

            reader = threading.Thread(target=read_back)
            reader.start()
            # Chunks of every size, so the proxy's reads do not line up with ours.
            offset = 0
            while offset < len(payload):
                size = rng.choice((1, 7, 1000, 65536, 300_000, 2 << 20))
                sock.sendall(payload[offset : offset + size])
                offset += size
            # Our end of stream reaches the server after the bytes; its own comes back after the echo.
            sock.shutdown(socket.SHUT_WR)
            reader.join(60)
            assert not reader.is_alive()
    assert len(received) == len(payload)
    assert received == payload


def test_many_connections_at_once_keep_their_own_bytes(echo):
    payloads = [random.Random(i).randbytes(300_000 + i) for i in range(8)]
    results: dict[int, bool] = {}
    with delayed(echo.port, 10) as proxy:

        def one(i: int) -> None:
            with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
                exchange(sock, payloads[i])
                results[i] = True

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == {i: True for i in range(len(payloads))}


def test_the_bandwidth_cap_holds_each_direction_back(echo):
    rate_mbit = 40  # 5 MB/s each way
    size = 2_500_000
    with delayed(echo.port, 1, rate_mbit) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            took = exchange(sock, os.urandom(size))
    # Up and down overlap (the echo starts before the last byte is up), but
    # every byte crosses the capped link up: at least size / rate.
    assert took >= size / (rate_mbit * 1e6 / 8)


def test_a_connection_to_a_server_that_is_gone_is_closed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # nothing listens here once closed
    with delayed(dead_port, 1) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.settimeout(10)
            try:
                assert sock.recv(10) == b""
            except ConnectionResetError:
                pass  # closed by an abort: as good


def test_the_proxy_stops_when_the_process_that_started_it_exits(echo):
    # A parent that starts the proxy and dies without stopping it.
    parent = subprocess.run(
        [sys.executable, "-c", (
            "import os, subprocess, sys\n"
            f"p = subprocess.Popen([sys.executable, {str(PROXY)!r}, '--target', '127.0.0.1:{echo.port}',"
            " '--delay-ms', '1', '--parent', str(os.getpid())], stdout=subprocess.PIPE)\n"
            "p.stdout.readline()\n"
            "print(p.pid, flush=True)\n"
            "os._exit(0)\n"
        )],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    proxy = psutil.Process(int(parent.stdout))
    try:
        psutil.wait_procs([proxy], timeout=10)
        assert not proxy.is_running() or proxy.status() == psutil.STATUS_ZOMBIE
    finally:
        if proxy.is_running():
            proxy.kill()


def test_the_proxy_stops_at_its_deadline(echo):
    proc = subprocess.Popen(
        [sys.executable, str(PROXY), "--target", f"127.0.0.1:{echo.port}", "--delay-ms", "1", "--deadline", "0.5"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip().isdigit()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_leaving_the_block_stops_the_proxy(echo):
    with delayed(echo.port, 1) as proxy:
        pass
    assert proxy.proc.poll() is not None
