"""``sandbox.pty``: interactive terminals, sync and async twins.

A terminal is a process whose input and output go through a pseudo-terminal,
so its handle is a command handle whose ``send_stdin`` feeds the terminal
and which can be resized.
"""

from __future__ import annotations

from collections.abc import Mapping

from sbx.sdk import _process as process
from sbx.sdk._commands import (
    AsyncCommandHandle,
    AsyncDataHandler,
    CommandHandle,
    DataHandler,
    aopen_process,
    open_process,
)
from sbx.sdk._transport import AsyncTransport, Transport


class PtyHandle(CommandHandle):
    """A running terminal; ``on_data`` gets its output on a reader thread."""

    _pty = True

    def resize(self, cols: int, rows: int) -> None:
        self._transport.call(process.resize(self.pid, cols, rows))


class AsyncPtyHandle(AsyncCommandHandle):
    _pty = True

    async def resize(self, cols: int, rows: int) -> None:
        await self._transport.call(process.resize(self.pid, cols, rows))


class Pty:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def create(
        self,
        cols: int,
        rows: int,
        on_data: DataHandler,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> PtyHandle:
        """Start a login shell on a ``cols`` x ``rows`` terminal. ``timeout``
        (seconds) kills it when it passes; by default it lives until it exits."""
        request = process.start_pty(cols, rows, envs=envs, cwd=cwd, user=user, timeout=timeout)
        events, tracker = open_process(self._transport, request)
        return PtyHandle(self._transport, events, tracker, {"pty": on_data}, background=True)

    def kill(self, pid: int) -> bool:
        return self._transport.call(process.kill(pid))


class AsyncPty:
    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def create(
        self,
        cols: int,
        rows: int,
        on_data: AsyncDataHandler,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> AsyncPtyHandle:
        request = process.start_pty(cols, rows, envs=envs, cwd=cwd, user=user, timeout=timeout)
        events, tracker = await aopen_process(self._transport, request)
        return AsyncPtyHandle(self._transport, events, tracker, {"pty": on_data}, background=True)

    async def kill(self, pid: int) -> bool:
        return await self._transport.call(process.kill(pid))
