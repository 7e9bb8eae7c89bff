"""scripts/latency_proxy.py: each direction is late by the delay, and many chunks are in flight at
once, so a stream keeps its rate (a sleep per chunk would cap it at one chunk per delay)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.latency_support import latency_proxy

DELAY = 0.1


@pytest.fixture
def echo() -> Iterator[str]:
    """An upstream that sends back what it receives, as it receives it."""
    server = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stopping.set()
    server.close()


def connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    conn = socket.create_connection((host, int(port)))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def receive(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, "the proxy closed the connection"
        data += chunk
    return data


def test_a_round_trip_is_late_by_the_delay_each_way(echo: str) -> None:
    proxy = latency_proxy().LatencyProxy(echo, DELAY).start()
    try:
        with connect(echo) as direct, connect(proxy.address) as proxied:

            def round_trip(conn: socket.socket) -> float:
                started = time.monotonic()
                conn.sendall(b"ping")
                assert receive(conn, 4) == b"ping"
                return time.monotonic() - started

            baseline = min(round_trip(direct) for _ in range(5))  # one stall of the machine is not it
            late = round_trip(proxied)
        assert late >= 2 * DELAY * 0.95  # both directions waited (a lower bound: delays only add)
        assert late - baseline >= 2 * DELAY * 0.95
    finally:
        proxy.stop()


def test_many_chunks_in_flight_do_not_wait_for_each_other(echo: str) -> None:
    """50 chunks sent 10 ms apart arrive about one delay after the last was sent (~0.6 s), not
    one delay after each other (50 x 2 x 0.1 = 10 s for a proxy that sleeps per chunk)."""
    chunks, gap, size = 50, 0.01, 32 * 1024
    proxy = latency_proxy().LatencyProxy(echo, DELAY).start()
    try:
        with connect(proxy.address) as conn:
            received: list[int] = []

            def read() -> None:
                total = 0
                while total < chunks * size:
                    data = conn.recv(1 << 20)
                    if not data:
                        return
                    total += len(data)
                received.append(total)

            reader = threading.Thread(target=read)
            reader.start()
            started = time.monotonic()
            sending = 0.0
            for index in range(chunks):
                conn.sendall(bytes([index % 256]) * size)
                sending = time.monotonic() - started  # when the last chunk left, not the sleep after it
                time.sleep(gap)
            reader.join(30)
            took = time.monotonic() - started
        assert received == [chunks * size]
        serialised = chunks * 2 * DELAY
        # Ratios, not tight timings: late by about the round trip, and far from the serialised time.
        assert took >= sending + 2 * DELAY * 0.95
        assert took - sending < serialised / 4
        assert proxy.forwarded == 2 * chunks * size
    finally:
        proxy.stop()


def test_stop_closes_its_connections_and_the_port(echo: str) -> None:
    proxy = latency_proxy().LatencyProxy(echo, DELAY).start()
    address = proxy.address
    conn = connect(address)
    conn.sendall(b"x")
    assert receive(conn, 1) == b"x"
    proxy.stop()
    conn.settimeout(5)
    assert conn.recv(10) == b""  # closed by the proxy
    conn.close()
    with pytest.raises(OSError):
        connect(address).close()
