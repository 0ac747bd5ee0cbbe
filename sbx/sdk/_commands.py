"""Running commands in a sandbox: ``sandbox.commands``, sync and async twins.

The protocol (requests, events, results) is in :mod:`sbx.sdk._process`;
this module only moves events from the transport to callbacks and results.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from typing import Any, Literal, overload

from sbx.sdk import _process as process
from sbx.sdk._connect import Message
from sbx.sdk._models import CommandResult, ProcessInfo
from sbx.sdk._ops import Request
from sbx.sdk._transport import AsyncTransport, Transport

OutputHandler = Callable[[str], object]
DataHandler = Callable[[bytes], object]
# Async handlers may be coroutine functions or plain functions.
AsyncOutputHandler = Callable[[str], Awaitable[object] | object]
AsyncDataHandler = Callable[[bytes], Awaitable[object] | object]
Handlers = Mapping[process.Stream, Callable[[Any], object] | None]

DEFAULT_TIMEOUT = 60.0

Events = Generator[Message, None, None]
AsyncEvents = AsyncGenerator[Message, None]


# --- sync ---------------------------------------------------------------------


def open_process(transport: Transport, request: Request) -> tuple[Events, process.ProcessTracker]:
    """Start a stream and read up to the start event, which carries the pid."""
    events = transport.stream(request)
    tracker = process.ProcessTracker()
    try:
        for message in events:
            tracker.handle(message)
            if tracker.pid is not None:
                break
        tracker.expect_started()
    except BaseException:
        events.close()
        raise
    return events, tracker


class CommandHandle:
    """A command started with ``background=True`` (or a terminal).

    Its output is read on a daemon thread from the start, so callbacks run on
    that thread and a chatty process is never stalled by an unread stream.
    """

    _pty = False

    def __init__(
        self,
        transport: Transport,
        events: Events,
        tracker: process.ProcessTracker,
        handlers: Handlers,
        background: bool,
    ) -> None:
        self._transport = transport
        self._events = events
        self._tracker = tracker
        self._pid = pid = tracker.expect_started()
        self._handlers = handlers
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._pump_safely, name=f"sbx-process-{pid}", daemon=True
            )
            self._thread.start()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def done(self) -> bool:
        """True once the process ended (or its stream failed)."""
        return self._done.is_set()

    def _pump(self) -> None:
        try:
            for message in self._events:
                out = self._tracker.handle(message)
                if out is not None:
                    handler = self._handlers.get(out[0])
                    if handler is not None:
                        handler(out[1])
        finally:
            self._events.close()
            self._done.set()

    def _pump_safely(self) -> None:
        try:
            self._pump()
        except BaseException as exc:  # handed to whoever waits
            self._error = exc

    def wait(self, check: bool = False) -> CommandResult:
        """Block until the process ends; with ``check``, a non-zero exit raises
        :class:`~sbx.sdk.CommandExitError`."""
        if self._thread is None:
            if not self._done.is_set():
                self._pump()
        else:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return process.checked(self._tracker.result(), check)

    def kill(self) -> bool:
        """SIGKILL the process; False when it had already gone."""
        return self._transport.call(process.kill(self._pid))

    def send_stdin(self, data: str | bytes) -> None:
        self._transport.call(process.send_input(self._pid, data, pty=self._pty))

    def close_stdin(self) -> None:
        self._transport.call(process.close_stdin(self._pid))


class Commands:
    """``sandbox.commands``: run commands and manage running processes."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @overload
    def run(
        self,
        cmd: str,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        background: Literal[False] = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        *,
        stdin: bool | None = None,
        check: bool = False,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        *,
        background: Literal[True],
        timeout: float | None = DEFAULT_TIMEOUT,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bool | None = None,
        check: bool = False,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        background: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        *,
        stdin: bool | None = None,
        check: bool = False,
    ) -> CommandResult | CommandHandle:
        """Run ``cmd`` with ``/bin/bash -l -c``.

        Waits for it and returns a :class:`CommandResult` (a non-zero exit is
        a result, not an error, unless ``check=True``), or with
        ``background=True`` returns a :class:`CommandHandle` at once.
        ``timeout`` (seconds; 0 or None for none) bounds the command: envd
        kills it when it passes and the call raises ``SbxTimeoutError``.
        ``stdin`` defaults to open for background commands only, so that a
        foreground command reading stdin sees end-of-file instead of hanging.
        """
        request = process.start(
            cmd,
            envs=envs,
            cwd=cwd,
            user=user,
            stdin=background if stdin is None else stdin,
            timeout=timeout,
        )
        events, tracker = open_process(self._transport, request)
        handlers: Handlers = {"stdout": on_stdout, "stderr": on_stderr}
        handle = CommandHandle(self._transport, events, tracker, handlers, background)
        if background:
            return handle
        return handle.wait(check=check)

    def connect(
        self,
        pid: int,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        timeout: float | None = None,
    ) -> CommandHandle:
        """Follow a process that is already running (output from now on)."""
        events, tracker = open_process(self._transport, process.connect(pid, timeout))
        handlers: Handlers = {"stdout": on_stdout, "stderr": on_stderr}
        return CommandHandle(self._transport, events, tracker, handlers, background=True)

    def list(self) -> list[ProcessInfo]:
        return self._transport.call(process.list_processes())

    def kill(self, pid: int) -> bool:
        """SIGKILL a process; False when there was no such process."""
        return self._transport.call(process.kill(pid))

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        self._transport.call(process.send_input(pid, data))

    def close_stdin(self, pid: int) -> None:
        self._transport.call(process.close_stdin(pid))


# --- async --------------------------------------------------------------------


async def aopen_process(
    transport: AsyncTransport, request: Request
) -> tuple[AsyncEvents, process.ProcessTracker]:
    events = transport.stream(request)
    tracker = process.ProcessTracker()
    try:
        while tracker.pid is None:
            message = await anext(events, None)
            if message is None:
                break
            tracker.handle(message)
        tracker.expect_started()
    except BaseException:
        await events.aclose()
        raise
    return events, tracker


async def _emit(handler: Callable[[Any], object] | None, value: object) -> None:
    if handler is not None:
        result = handler(value)
        if inspect.isawaitable(result):
            await result


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class AsyncCommandHandle:
    """A command started with ``background=True`` (or a terminal), read by a task."""

    _pty = False

    def __init__(
        self,
        transport: AsyncTransport,
        events: AsyncEvents,
        tracker: process.ProcessTracker,
        handlers: Handlers,
        background: bool,
    ) -> None:
        self._transport = transport
        self._events = events
        self._tracker = tracker
        self._pid = tracker.expect_started()
        self._handlers = handlers
        self._task: asyncio.Task[None] | None = None
        if background:
            self._task = asyncio.get_running_loop().create_task(self._pump())
            # Fetched here so an unawaited failure is not reported as "never
            # retrieved"; wait() still raises it.
            self._task.add_done_callback(_retrieve)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def done(self) -> bool:
        return self._tracker.end is not None or (self._task is not None and self._task.done())

    async def _pump(self) -> None:
        try:
            async for message in self._events:
                out = self._tracker.handle(message)
                if out is not None:
                    await _emit(self._handlers.get(out[0]), out[1])
        finally:
            await self._events.aclose()

    async def wait(self, check: bool = False) -> CommandResult:
        if self._task is None:
            if self._tracker.end is None:
                await self._pump()
        else:
            # Shielded: a caller that stops waiting must not stop the reading.
            await asyncio.shield(self._task)
        return process.checked(self._tracker.result(), check)

    async def kill(self) -> bool:
        return await self._transport.call(process.kill(self._pid))

    async def send_stdin(self, data: str | bytes) -> None:
        await self._transport.call(process.send_input(self._pid, data, pty=self._pty))

    async def close_stdin(self) -> None:
        await self._transport.call(process.close_stdin(self._pid))


class AsyncCommands:
    """``sandbox.commands`` of an :class:`~sbx.sdk.AsyncSandbox`."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    @overload
    async def run(
        self,
        cmd: str,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        background: Literal[False] = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        *,
        stdin: bool | None = None,
        check: bool = False,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        *,
        background: Literal[True],
        timeout: float | None = DEFAULT_TIMEOUT,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bool | None = None,
        check: bool = False,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        background: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        *,
        stdin: bool | None = None,
        check: bool = False,
    ) -> CommandResult | AsyncCommandHandle:
        """See :meth:`Commands.run`; handlers may also be coroutine functions."""
        request = process.start(
            cmd,
            envs=envs,
            cwd=cwd,
            user=user,
            stdin=background if stdin is None else stdin,
            timeout=timeout,
        )
        events, tracker = await aopen_process(self._transport, request)
        handlers: Handlers = {"stdout": on_stdout, "stderr": on_stderr}
        handle = AsyncCommandHandle(self._transport, events, tracker, handlers, background)
        if background:
            return handle
        return await handle.wait(check=check)

    async def connect(
        self,
        pid: int,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        timeout: float | None = None,
    ) -> AsyncCommandHandle:
        events, tracker = await aopen_process(self._transport, process.connect(pid, timeout))
        handlers: Handlers = {"stdout": on_stdout, "stderr": on_stderr}
        return AsyncCommandHandle(self._transport, events, tracker, handlers, background=True)

    async def list(self) -> list[ProcessInfo]:
        return await self._transport.call(process.list_processes())

    async def kill(self, pid: int) -> bool:
        return await self._transport.call(process.kill(pid))

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        await self._transport.call(process.send_input(pid, data))

    async def close_stdin(self, pid: int) -> None:
        await self._transport.call(process.close_stdin(pid))
