"""Networks that are not loopback, emulated on one host: a relay that delays and
rate-limits every connection through it.

This kernel has no `netem`, so the delay is added in user space. A `Relay` listens on
loopback in front of one listening process (a site server, an MPC party) and forwards
each connection to it. Every chunk read from one side is written to the other once the
link has carried it: serialised at the link's bandwidth after the chunks before it in
that direction, then delayed by half the round-trip time. A request and its answer then
take one round-trip time more than on loopback, and a megabyte takes 8 / bandwidth seconds
more. Each process that listens has its own relay, so every connection between two
processes passes exactly one: the one in front of the process that was connected to.

The relay runs its own asyncio loop in a thread of the process that owns it; it forwards
bytes without reading them (TLS passes through as it is). What it does not emulate: the
bandwidth is each connection's own, not shared by a host's connections; a new
connection's handshake crosses the link at no cost; and nothing pushes back on a sender
(the relay reads whatever arrives and queues it), where TCP's window would. The relay
listens on a port of its own choosing, outside an MPC party's configured range, for as
long as its owner runs: it is for benchmarks on one host, never for a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from dataclasses import dataclass

from pet.errors import PetError

CHUNK = 1 << 16
"""Bytes read from a connection at a time."""
MAX_RTT_S = 10.0
"""The longest round trip a link may add."""
START_S = 10.0
"""How long a relay's thread may take to start listening."""


@dataclass(frozen=True)
class Link:
    """What a connection between two processes adds to loopback: `rtt_s` seconds for a
    message and its answer, and `mbit_s` megabits a second each way (None: as fast as
    loopback)."""

    rtt_s: float
    mbit_s: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.rtt_s, int | float) and 0 <= self.rtt_s <= MAX_RTT_S):
            raise PetError(f"a link's rtt_s must be between 0 and {MAX_RTT_S:g} seconds, "
                           f"got {self.rtt_s!r}")
        if self.mbit_s is not None and not (isinstance(self.mbit_s, int | float)
                                            and 0 < self.mbit_s < math.inf):
            raise PetError(f"a link's mbit_s must be a positive number or None, got "
                           f"{self.mbit_s!r}")

    def carried(self, arrival: float, size: int, free: float) -> tuple[float, float]:
        """When `size` bytes read at `arrival` reach the other side, and until when the
        link is busy sending them: they go out once the bytes before them have (`free`),
        at the bandwidth, then travel half the round trip."""
        start = max(arrival, free)
        sent = start + (size * 8 / (self.mbit_s * 1e6) if self.mbit_s else 0.0)
        return sent + self.rtt_s / 2, sent


class Relay:
    """Forwards every connection made to `address` to `target` over `link`, until closed."""

    def __init__(self, target: tuple[str, int], link: Link, *, host: str = "127.0.0.1") -> None:
        self.target, self.link = (target[0], int(target[1])), link
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._server: asyncio.Server | None = None
        self.carried = 0
        """Bytes forwarded so far, both ways (written by the relay's thread only)."""
        self._thread = threading.Thread(target=self._run, args=(host,), daemon=True,
                                        name=f"relay to {target[0]}:{target[1]}")
        self._thread.start()
        if not self._ready.wait(START_S) or self._failure is not None:
            self.close()
            raise PetError(f"cannot start a relay on {host}: "
                           f"{self._failure or f'not listening after {START_S:g} s'}")
        assert self._server is not None
        self.address: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        """Where the relay listens: connect here instead of to `target`."""

    def close(self) -> None:
        """Stop listening and drop every connection through the relay."""
        if self._thread.is_alive() and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_S)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, host: str) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._forward, host, 0))
        except Exception as error:  # reported to the constructor, which raises it
            self._failure = error
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: both directions over the link. A side that closes its sending
        half is passed on as such (the other direction goes on); a side that fails or
        resets ends both directions at once, as the connection would end end to end."""
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()  # nothing listens behind the relay: a reset, as there
            return
        pumps = {asyncio.ensure_future(self._pump(reader, upstream_writer)),
                 asyncio.ensure_future(self._pump(upstream_reader, writer))}
        failed = True  # until both directions have ended cleanly
        try:
            while pumps:
                done, pumps = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                if any(t.cancelled() or t.exception() is not None for t in done):
                    break
            failed = bool(pumps)
        finally:
            for pump in pumps:
                pump.cancel()
            for side in (writer, upstream_writer):
                if failed:
                    side.transport.abort()  # a reset, passed on to both ends
                else:
                    side.close()  # what is still buffered goes out first

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk delivered when the link has carried it; the
        source's end is passed on once everything before it is delivered."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.ensure_future(self._deliver(queue, sink))
        reading = asyncio.current_task()
        assert reading is not None
        deliver.add_done_callback(  # a sink that fails ends the reading too
            lambda d: d.cancelled() or d.exception() is None or reading.cancel())
        free = loop.time()
        try:
            while chunk := await source.read(CHUNK):
                due, free = self.link.carried(loop.time(), len(chunk), free)
                self.carried += len(chunk)
                queue.put_nowait((due, chunk))
            queue.put_nowait((max(loop.time() + self.link.rtt_s / 2, free), b""))
            await deliver
        finally:
            deliver.cancel()

    @staticmethod
    async def _deliver(queue: asyncio.Queue[tuple[float, bytes]],
                       sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not chunk:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            sink.write(chunk)
            await sink.drain()
