"""A loopback TCP proxy that adds a fixed delay per direction without limiting throughput.

Real Firestore is 5-10 ms from a VM in its region and 30-100 ms from a laptop or a CI runner; the
emulator is well under a millisecond away. Pointing docshift's ``emulator_host`` setting (or
``FIRESTORE_EMULATOR_HOST``) at this proxy makes the emulator as far away as a real service.

Each chunk read from one side is written to the other ``delay`` seconds after it arrived, in order;
reading goes on meanwhile, so any number of chunks are in flight at once and the stream keeps the
rate of the link (a sleep per chunk before reading the next would serialise the stream and cap it
at one chunk per delay). A half-close is forwarded once the chunks before it are.

As a library::

    with LatencyProxy("127.0.0.1:8080", delay=0.02) as proxy:
        ...  # connect to proxy.address

As a script::

    python scripts/latency_proxy.py 127.0.0.1:8080 --delay-ms 20 [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading
import time
from collections import deque
from types import TracebackType

__all__ = ["LatencyProxy"]

CHUNK = 256 * 1024
"""Bytes read at once: large reads keep the proxy's own CPU per byte small."""


class LatencyProxy:
    """Forwards connections on a free loopback port to ``upstream`` (``host:port``), each
    direction ``delay`` seconds late. Runs its own event loop in a daemon thread: ``start``
    returns once it listens, ``stop`` closes every connection and the listener."""

    def __init__(self, upstream: str, delay: float, *, port: int = 0) -> None:
        host, _, upstream_port = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(upstream_port))
        self.delay = delay
        self.port = port
        self.forwarded = 0
        """Bytes forwarded in both directions so far."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._connections: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    @property
    def address(self) -> str:
        """``host:port`` to connect to instead of the upstream."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LatencyProxy:
        self._thread = threading.Thread(target=self._serve, name="latency-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(self._close)
        thread.join(timeout=5)
        self._loop = self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop
    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", self.port, limit=CHUNK)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self._server.serve_forever())
        except asyncio.CancelledError:
            pass
        finally:
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*self._connections, return_exceptions=True))
            loop.close()

    def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

    async def _connection(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        server_out: asyncio.StreamWriter | None = None
        try:
            server_in, server_out = await asyncio.open_connection(*self.upstream, limit=CHUNK)
            await asyncio.gather(self._pump(client_in, server_out), self._pump(server_in, client_out))
        except (OSError, asyncio.CancelledError):
            pass  # the upstream is gone, or the proxy stops: the connection ends
        finally:
            for out in (client_out, server_out):
                if out is not None:
                    out.close()
            self._connections.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Read ``source`` as fast as it comes; write each chunk to ``sink`` ``delay`` after it
        arrived. The reader and the writer are separate tasks joined by a queue of (due, chunk)."""
        pending: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        ended = False

        async def read() -> None:
            nonlocal ended
            try:
                while True:
                    chunk = await source.read(CHUNK)
                    if not chunk:
                        return
                    pending.append((time.monotonic() + self.delay, chunk))
                    arrived.set()
            finally:
                ended = True
                arrived.set()

        async def write() -> None:
            while True:
                while not pending:
                    if ended:
                        if sink.can_write_eof():
                            with contextlib.suppress(OSError):
                                sink.write_eof()
                        return
                    arrived.clear()
                    await arrived.wait()
                due, chunk = pending.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                # Counted before the write: once the peer has the bytes, the count includes them.
                self.forwarded += len(chunk)
                sink.write(chunk)
                await sink.drain()

        reader = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reader


def main() -> None:
    parser = argparse.ArgumentParser(description="loopback TCP proxy adding a delay per direction")
    parser.add_argument("upstream", help="host:port to forward to (the emulator)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="milliseconds added per direction")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args()
    proxy = LatencyProxy(args.upstream, args.delay_ms / 1000, port=args.port).start()
    print(proxy.address, flush=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
