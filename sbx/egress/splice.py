"""Moving bytes between two sockets as fast as the event loop allows: a pair
of protocols that write what one side reads straight into the other's
transport, pausing the reader while the writer's buffer is full. No
parsing, no copies beyond the transport's own. Half-closes are passed on,
so protocols that shut down one direction first keep working."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import cast

HIGH_WATER = 1 << 20


class _Pump(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pump | None = None
        self.done = done
        self.count = 0
        self.eof = False
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER)
        # What the other side sent before this transport existed.
        peer = self.peer
        if peer is not None and peer.pending:
            self.transport.write(b"".join(peer.pending))
            peer.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        elif not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            if peer.eof:
                # Both directions are over.
                peer.transport.close()
                return False
        # Keep our own write side open for the other direction.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if exc is not None:
                abort(peer.transport)
            else:
                peer.transport.close()
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    # The peer's write buffer is full or drained: stop or restart reading.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def abort(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP reset, so the other end fails at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


class Splice:
    """Two connected sockets spliced together; `wait()` returns when both
    directions are over; `close()` ends it from outside (policy change)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._done_a: asyncio.Future[None] = loop.create_future()
        self._done_b: asyncio.Future[None] = loop.create_future()
        self.a = _Pump(self._done_a)
        self.b = _Pump(self._done_b)
        self.a.peer, self.b.peer = self.b, self.a

    async def start(self, client: socket.socket, upstream: socket.socket,
                    preface: bytes = b"", reply: bytes = b"") -> None:
        """client: the sandbox's socket; upstream: the destination's.
        preface is sent upstream first (bytes already read from the
        client), reply to the client first."""
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(lambda: self.a, sock=client)
        await loop.create_connection(lambda: self.b, sock=upstream)
        assert self.a.transport is not None and self.b.transport is not None
        if preface:
            self.b.transport.write(preface)
        if reply:
            self.a.transport.write(reply)

    async def wait(self) -> None:
        await asyncio.gather(self._done_a, self._done_b)

    @property
    def bytes_up(self) -> int:
        return self.a.count

    @property
    def bytes_down(self) -> int:
        return self.b.count

    def close(self, reset: bool = True) -> None:
        for pump in (self.a, self.b):
            if pump.transport is not None and not pump.transport.is_closing():
                if reset:
                    abort(pump.transport)
                else:
                    pump.transport.close()
