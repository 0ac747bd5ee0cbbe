"""The ``process.Process`` Connect service."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

from . import users, warmshell
from .calls import keepalive_interval, resolve_user
from .connect import (
    Call,
    Code,
    ConnectError,
    ConnectRouter,
    JsonObj,
    as_bool,
    as_bytes,
    as_enum,
    as_int,
    as_obj,
    as_str,
    as_str_map,
    b64,
    field,
)
from .process import (
    ExitInfo,
    InputError,
    Output,
    Process,
    ProcessConfig,
    Subscription,
    build_env,
)
from .reaper import Reaper
from .state import EnvdState

SERVICE = "/process.Process/"
SIGNALS = {"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9}


class ProcessService:
    def __init__(self, state: EnvdState, reaper: Reaper) -> None:
        self._state = state
        self._reaper = reaper
        self._procs: dict[int, Process] = {}
        self.shells = warmshell.WarmShells(reaper.track, state.warm_shells)

    def register(self, router: ConnectRouter) -> None:
        router.server_stream(SERVICE + "Start", self.start)
        router.server_stream(SERVICE + "Connect", self.connect)
        router.unary(SERVICE + "List", self.list)
        router.unary(SERVICE + "Update", self.update)
        router.unary(SERVICE + "SendInput", self.send_input)
        router.client_stream(SERVICE + "StreamInput", self.stream_input)
        router.unary(SERVICE + "SendSignal", self.send_signal)
        router.unary(SERVICE + "CloseStdin", self.close_stdin)

    @property
    def processes(self) -> dict[int, Process]:
        return self._procs

    def kill_all(self) -> None:
        self.shells.close()
        for proc in list(self._procs.values()):
            proc.signal(signal.SIGKILL)

    def launch(
        self,
        config: ProcessConfig,
        tag: str | None,
        user: users.User,
        cwd: str,
        env: dict[str, str],
        listed: bool = True,
    ) -> tuple[Process, Subscription]:
        """Start a process of envd's own (stdin /dev/null, no PTY) and
        subscribe to it; a listed one is visible through List/Connect/kill
        as if a client had started it. Raises OSError when it cannot start."""
        proc = Process(config, tag, None, False, self._forget)
        sub = proc.subscribe()
        try:
            proc.spawn([config.cmd, *config.args], env, cwd, user, self._reaper)
        except BaseException:
            sub.close()
            raise
        if listed:
            self._procs[proc.pid] = proc
        return proc, sub

    def _forget(self, proc: Process) -> None:
        if self._procs.get(proc.pid) is proc:
            del self._procs[proc.pid]

    def _select(self, selector: object) -> Process:
        sel = as_obj(selector, "process")
        pid = field(sel, "pid")
        if pid is not None:
            proc = self._procs.get(as_int(pid, "pid"))
            if proc is None:
                raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
            return proc
        tag = field(sel, "tag")
        if tag is not None:
            for proc in self._procs.values():
                if proc.tag == tag:
                    return proc
            raise ConnectError(Code.NOT_FOUND, f"process with tag {tag} not found")
        raise ConnectError(Code.INVALID_ARGUMENT, "process selector needs a pid or a tag")

    # --- streams -----------------------------------------------------------

    async def start(self, msg: JsonObj, call: Call) -> AsyncIterator[JsonObj]:
        cfg_msg = as_obj(field(msg, "process"), "process")
        config = ProcessConfig(
            cmd=as_str(field(cfg_msg, "cmd"), "cmd"),
            args=[as_str(a, "args") for a in (field(cfg_msg, "args") or [])],
            envs=as_str_map(field(cfg_msg, "envs"), "envs"),
            cwd=None if field(cfg_msg, "cwd") is None else as_str(field(cfg_msg, "cwd"), "cwd"),
        )
        if not config.cmd:
            raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is required")
        pty_msg = field(msg, "pty")
        pty_size: tuple[int, int] | None = None
        if pty_msg is not None:
            size = as_obj(field(as_obj(pty_msg, "pty"), "size"), "pty.size")
            pty_size = (as_int(field(size, "rows"), "rows"), as_int(field(size, "cols"), "cols"))
        raw_stdin = field(msg, "stdin")
        # Unset means enabled: the behaviour of envd before the flag existed.
        stdin = True if raw_stdin is None else as_bool(raw_stdin, "stdin")
        tag_value = field(msg, "tag")
        tag = None if tag_value is None else as_str(tag_value, "tag")

        user = resolve_user(self._state, call)
        try:
            cwd = users.expand_path(config.cwd or "", user, self._state.workdir())
        except ValueError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from None
        if not os.path.isdir(cwd):
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{cwd}' does not exist")
        env = build_env(
            self._state.spawn_env(),
            user,
            {**self._state.env_vars, **config.envs},
            pty_size is not None,
        )

        proc = Process(config, tag, pty_size, stdin, self._forget)
        sub = proc.subscribe()
        try:
            if not (pty_size is None and self._warm_start(proc, config, cwd, user)):
                proc.spawn([config.cmd, *config.args], env, cwd, user, self._reaper)
        except PermissionError as e:
            sub.close()
            raise ConnectError(Code.PERMISSION_DENIED, str(e)) from None
        except OSError as e:
            sub.close()
            command = " ".join([config.cmd, *config.args])
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"error starting process '{command}': {e}"
            ) from None
        self._procs[proc.pid] = proc
        if call.timeout:
            proc.set_deadline(call.timeout)
        try:
            yield {"event": {"start": {"pid": proc.pid}}}
            async for event in self._events(sub, call):
                yield event
            if proc.after is not None:
                # The end is on the wire by the time this runs: a new spare's
                # fork must not delay it.
                asyncio.get_running_loop().call_soon(proc.after)
        finally:
            sub.close()

    def _warm_start(self, proc: Process, config: ProcessConfig, cwd: str, user: users.User
                    ) -> bool:
        """Run a plain `bash [-l] -c CMD` in a spare shell; False: start it cold."""
        shell = warmshell.parse(config.cmd, config.args)
        if shell is None or not self.shells.enabled:
            return False
        login, command = shell
        data = warmshell.script(command, cwd, {**self._state.env_vars, **config.envs})
        if data is None or not warmshell.may_enter(cwd, user):
            return False
        key = (user.name, login)
        spare = self.shells.take(key, user)
        started = spare is not None and proc.adopt(spare, data)
        if spare is not None and not started:
            spare.discard()
        home = user.home if os.path.isdir(user.home) else "/"
        env = build_env(self._state.spawn_env(), user, {}, False)
        proc.after = lambda: self.shells.want(key, user, env, home)
        # The next spare starts once this command is done, or has run for a
        # while: never two login profiles at once because of a spare (some,
        # like pyenv's, take locks).
        asyncio.get_running_loop().call_later(warmshell.REFILL_AFTER, proc.after)
        return started

    async def connect(self, msg: JsonObj, call: Call) -> AsyncIterator[JsonObj]:
        proc = self._select(field(msg, "process"))
        sub = proc.subscribe()
        try:
            yield {"event": {"start": {"pid": proc.pid}}}
            async for event in self._events(sub, call):
                yield event
        finally:
            sub.close()

    @staticmethod
    async def _events(sub: Subscription, call: Call) -> AsyncIterator[JsonObj]:
        interval = keepalive_interval(call)
        while True:
            event = await sub.get(interval)
            if event is None:
                yield {"event": {"keepalive": {}}}
            elif isinstance(event, Output):
                yield {"event": {"data": {event.kind: b64(event.data)}}}
            elif isinstance(event, ExitInfo):
                yield {"event": {"end": event.to_json()}}
                return

    # --- unary -------------------------------------------------------------

    async def list(self, msg: JsonObj, call: Call) -> JsonObj:
        processes = []
        for proc in self._procs.values():
            info: JsonObj = {"config": proc.config.to_json(), "pid": proc.pid}
            if proc.tag is not None:
                info["tag"] = proc.tag
            processes.append(info)
        return {"processes": processes}

    async def update(self, msg: JsonObj, call: Call) -> JsonObj:
        proc = self._select(field(msg, "process"))
        pty_msg = field(msg, "pty")
        if pty_msg is not None:
            size = as_obj(field(as_obj(pty_msg, "pty"), "size"), "pty.size")
            rows, cols = as_int(field(size, "rows"), "rows"), as_int(field(size, "cols"), "cols")
            try:
                proc.resize(rows, cols)
            except InputError as e:
                raise ConnectError(Code.FAILED_PRECONDITION, str(e)) from None
        return {}

    async def _deliver(self, proc: Process, input_msg: object) -> None:
        inp = as_obj(input_msg, "input")
        stdin, pty = field(inp, "stdin"), field(inp, "pty")
        if stdin is None and pty is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "input needs stdin or pty data")
        try:
            if pty is not None:
                await proc.write_input(as_bytes(pty, "pty"), pty=True)
            else:
                await proc.write_input(as_bytes(stdin, "stdin"), pty=False)
        except InputError as e:
            raise ConnectError(Code.FAILED_PRECONDITION, str(e)) from None

    async def send_input(self, msg: JsonObj, call: Call) -> JsonObj:
        proc = self._select(field(msg, "process"))
        await self._deliver(proc, field(msg, "input"))
        return {}

    async def stream_input(self, messages: AsyncIterator[JsonObj], call: Call) -> JsonObj:
        proc: Process | None = None
        async for msg in messages:
            start, data = field(msg, "start"), field(msg, "data")
            if start is not None:
                proc = self._select(field(as_obj(start, "start"), "process"))
            elif data is not None:
                if proc is None:
                    raise ConnectError(Code.FAILED_PRECONDITION, "data before start event")
                await self._deliver(proc, field(as_obj(data, "data"), "input"))
            elif field(msg, "keepalive") is None:
                raise ConnectError(Code.INVALID_ARGUMENT, "unknown stream input event")
        return {}

    async def send_signal(self, msg: JsonObj, call: Call) -> JsonObj:
        proc = self._select(field(msg, "process"))
        sig = as_enum(field(msg, "signal"), SIGNALS, "signal")
        if sig <= 0 or sig >= signal.NSIG:
            raise ConnectError(Code.INVALID_ARGUMENT, f"invalid signal {sig}")
        # Whoever kills a supervised process (the template's start command)
        # means it: supervision must not start it again behind their back.
        proc.stopped_by_api = True
        proc.signal(sig)
        return {}

    async def close_stdin(self, msg: JsonObj, call: Call) -> JsonObj:
        proc = self._select(field(msg, "process"))
        try:
            proc.close_stdin()
        except InputError as e:
            raise ConnectError(Code.FAILED_PRECONDITION, str(e)) from None
        return {}
