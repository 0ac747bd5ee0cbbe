"""The template's start command (Dockerfile CMD/ENTRYPOINT): run under
supervision, and the sandbox's readiness that depends on it.

It is started once, when envd starts. A sandbox restored from a snapshot
does not start envd again: its start command, and this supervision, are in
the snapshot and simply go on. It is a process of the process service like
any other (tag ``start_cmd``), so SDKs list it, connect to it and kill it;
a kill through the API ends supervision, else the two would fight. Its
output, and a line for each start and exit, go to the start log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from typing import BinaryIO

from . import users
from .process import ExitInfo, Output, Process, ProcessConfig, Subscription, build_env
from .process_service import ProcessService
from .state import EnvdState
from .template import TemplateConfig

log = logging.getLogger("envd.startcmd")

TAG = "start_cmd"
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
READY_INTERVAL = 0.5
# A probe that hangs (curl against a port that accepts but never answers)
# must not stall readiness for good.
PROBE_TIMEOUT = 10.0

NOT_STARTED = "start command not started yet"
NOT_READY = "start command not ready yet"
STOPPED = "start command was stopped through the API"


def describe(info: ExitInfo) -> str:
    if info.exited:
        return f"exited with code {info.exit_code}"
    return f"ended ({info.status})"


class StartCommand:
    def __init__(self, state: EnvdState, processes: ProcessService, log_path: str) -> None:
        self._state = state
        self._processes = processes
        self._log_path = log_path
        self._log_file: BinaryIO | None = None
        self._log_failed = False
        # Whether the log ends with a newline: envd's own lines start on one.
        self._at_line_start = True
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.reason: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        template = self._state.template
        if template is None or template.start_cmd is None:
            self._set_ready(None)
            return
        self._set_ready(NOT_STARTED)
        self._task = asyncio.get_running_loop().create_task(self._supervise(template))
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug, not the command's doing: said where it can be seen.
            log.error("start command supervision failed", exc_info=error)
            self._set_ready(f"start command supervision failed: {error}")

    def stop(self) -> None:
        """Supervision ends (at envd's shutdown, before processes are killed)."""
        if self._task is not None:
            self._task.cancel()
        self._close_log()

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    def _set_ready(self, reason: str | None) -> None:
        """Ready when ``reason`` is None, else not ready because of it."""
        self.reason = reason
        if reason is None:
            self._ready.set()
        else:
            self._ready.clear()

    # --- supervision -------------------------------------------------------

    async def _supervise(self, template: TemplateConfig) -> None:
        assert template.start_cmd is not None
        loop = asyncio.get_running_loop()
        delay = BACKOFF_FIRST
        while True:
            began = loop.time()
            try:
                proc, sub = self._spawn(template.start_cmd, template)
            except (OSError, users.UnknownUser) as e:
                what = f"start command failed to start: {_error_text(e)}"
                self._set_ready(what)
                self._log_line(what)
            else:
                info = await self._run(proc, sub, template)
                if proc.stopped_by_api:
                    self._set_ready(STOPPED)
                    self._log_line(f"start command (pid {proc.pid}) {describe(info)}; "
                                   "it was stopped through the API: not restarting")
                    self._close_log()
                    return
                self._set_ready(f"start command {describe(info)}")
                # One that ran a while and then failed is not crash-looping.
                if loop.time() - began >= BACKOFF_MAX:
                    delay = BACKOFF_FIRST
                self._log_line(f"start command (pid {proc.pid}) {describe(info)}; "
                               f"restarting in {delay:g} s")
            self._close_log()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _context(self, template: TemplateConfig) -> tuple[users.User, str, dict[str, str]]:
        """User, working directory and environment for the template's own
        commands: its USER (else envd's), its WORKDIR, its ENV beneath the
        sandbox's variables known at the time."""
        user = users.lookup_spec(template.user) if template.user else users.current()
        cwd = users.expand_path("", user, self._state.workdir())
        if not os.path.isdir(cwd):
            cwd = "/"
        env = build_env(self._state.spawn_env(), user, dict(self._state.env_vars), False)
        return user, cwd, env

    def _spawn(self, argv: list[str], template: TemplateConfig) -> tuple[Process, Subscription]:
        user, cwd, env = self._context(template)
        config = ProcessConfig(argv[0], argv[1:], cwd=cwd)
        proc, sub = self._processes.launch(config, TAG, user, cwd, env)
        self._log_line(f"start command started (pid {proc.pid}, user {user.name}, "
                       f"cwd {cwd}): {shlex.join(argv)}")
        return proc, sub

    async def _run(self, proc: Process, sub: Subscription, template: TemplateConfig
                   ) -> ExitInfo:
        """Copy the output into the log until the process is done; readiness
        alongside."""
        probe: asyncio.Task[None] | None = None
        if template.ready_cmd is None:
            self._set_ready(None)
        else:
            self._set_ready(NOT_READY)
            probe = asyncio.get_running_loop().create_task(
                self._probe(template.ready_cmd, template))
        try:
            while True:
                event = await sub.get(None)
                if isinstance(event, Output):
                    self._write(event.data)
                elif isinstance(event, ExitInfo):
                    return event
        finally:
            sub.close()
            if probe is not None:
                probe.cancel()

    # --- snapshots ---------------------------------------------------------

    async def before_snapshot(self) -> None:
        """The template's prepare command, when it has one and the start
        command runs: gVisor (2024-07) restores a listening socket that had
        accepted connections deaf to new ones, and connections held across
        a checkpoint are reset; a server started by the template must drop
        them and listen anew, as envd does, before the image is taken."""
        template = self._state.template
        if template is None or template.prepare_cmd is None or self._task is None:
            return
        code = await self._probe_once(template.prepare_cmd, template)
        if code != 0:
            log.warning("prepare command exited %s before a snapshot", code)

    # --- readiness ---------------------------------------------------------

    async def _probe(self, ready_cmd: str, template: TemplateConfig) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + template.ready_timeout_s
        while True:
            if await self._probe_once(ready_cmd, template) == 0:
                self._set_ready(None)
                return
            if loop.time() >= deadline:
                # Still probed: a slow start is not a failed one.
                self._set_ready(f"start command not ready after {template.ready_timeout_s:g} s")
            await asyncio.sleep(READY_INTERVAL)

    async def _probe_once(self, ready_cmd: str, template: TemplateConfig) -> int | None:
        """The ready command's exit code (None: it could not run)."""
        try:
            user, cwd, env = self._context(template)
            proc, sub = self._processes.launch(
                ProcessConfig("/bin/sh", ["-c", ready_cmd], cwd=cwd), None, user, cwd, env,
                listed=False,
            )
        except (OSError, users.UnknownUser) as e:
            log.warning("ready command could not run: %s", _error_text(e))
            return None
        proc.set_deadline(PROBE_TIMEOUT)
        try:
            while True:
                event = await sub.get(None)
                if isinstance(event, ExitInfo):
                    return event.exit_code if event.exited else None
        finally:
            sub.close()
            # Cancelled (the start command exited, or shutdown): not left behind.
            proc.signal(signal.SIGKILL)

    # --- the start log -----------------------------------------------------

    def _log_line(self, text: str) -> None:
        log.info("%s", text)
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}"
        line = f"[sbx {stamp}Z] {text}\n".encode("utf-8", "replace")
        self._write(line if self._at_line_start else b"\n" + line)

    def _write(self, data: bytes) -> None:
        try:
            if self._log_file is None:
                directory = os.path.dirname(self._log_path)
                if directory:
                    os.makedirs(directory, exist_ok=True)
                fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                             0o644)
                self._log_file = open(fd, "ab", buffering=0)  # noqa: SIM115 (kept open a run)
            self._log_file.write(data)
        except OSError as e:
            # The command goes on without its log; said once, not per chunk.
            if not self._log_failed:
                log.warning("cannot write the start log %s: %s", self._log_path, e)
                self._log_failed = True
            return
        self._log_failed = False
        self._at_line_start = data.endswith(b"\n")

    def _close_log(self) -> None:
        """Closed between runs: a log removed or rotated meanwhile is made anew."""
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None


def _error_text(e: Exception) -> str:
    if isinstance(e, users.UnknownUser):
        return f"unknown user '{e.args[0]}'"
    return str(e)
