"""One spawned process: output fan-out, input, signals and exit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import terminal
from .reaper import Reaper
from .users import User, drop_to
from .warmshell import Spare

STD_CHUNK = 32 * 1024
PTY_CHUNK = 16 * 1024
# A subscriber this many events behind pauses reading the process' output, so
# a slow client throttles the process instead of growing envd's memory.
HIGH_WATER = 256
LOW_WATER = 32
# After a PTY process exits, output it wrote may still be in the line
# discipline; wait this long for it unless the slave side is seen closed.
PTY_EXIT_GRACE = 0.05
# Bound on reads when draining a pipe after exit: a grandchild that keeps the
# pipe open and writes forever must not stall the end of the stream.
DRAIN_LIMIT = 4 * 1024 * 1024

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Go's syscall.Signal strings, which E2B's envd puts into the end event.
SIGNAL_TEXT = {
    1: "hangup",
    2: "interrupt",
    3: "quit",
    4: "illegal instruction",
    5: "trace/breakpoint trap",
    6: "aborted",
    7: "bus error",
    8: "floating point exception",
    9: "killed",
    10: "user defined signal 1",
    11: "segmentation fault",
    12: "user defined signal 2",
    13: "broken pipe",
    14: "alarm clock",
    15: "terminated",
    24: "CPU time limit exceeded",
    25: "file size limit exceeded",
    31: "bad system call",
}

OutputKind = Literal["stdout", "stderr", "pty"]


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    exited: bool
    status: str
    error: str | None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitInfo:
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            text = f"exit status {code}"
            return cls(code, True, text, text if code else None)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            text = "signal: " + SIGNAL_TEXT.get(sig, f"signal {sig}")
            if os.WCOREDUMP(status):
                text += " (core dumped)"
            return cls(-1, False, text, text)
        return cls(-1, False, f"unknown wait status {status}", None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exitCode": self.exit_code,
            "exited": self.exited,
            "status": self.status,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Output:
    kind: OutputKind
    data: bytes


Event = Output | ExitInfo


class InputError(Exception):
    """Input cannot be delivered (no stdin, closed, wrong kind)."""


@dataclass
class ProcessConfig:
    cmd: str
    args: list[str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cmd": self.cmd, "args": self.args, "envs": self.envs}
        if self.cwd is not None:
            out["cwd"] = self.cwd
        return out


class Subscription:
    """One consumer's queue of a process' events; the exit is always last."""

    def __init__(self, proc: Process) -> None:
        self._proc = proc
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def push(self, event: Event) -> None:
        self._items.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: float | None) -> Event | None:
        """The next event, or None when ``timeout`` passes first."""
        if not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait({self._waiter}, timeout=timeout)
            finally:
                self._waiter = None
            if not self._items:
                return None
        event = self._items.popleft()
        self._proc.consumed()
        return event

    def close(self) -> None:
        self._proc.unsubscribe(self)


class Process:
    def __init__(
        self,
        config: ProcessConfig,
        tag: str | None,
        pty_size: tuple[int, int] | None,
        stdin: bool,
        on_finished: Callable[[Process], None],
    ) -> None:
        self.config = config
        self.tag = tag
        self.pid = 0
        self.is_pty = pty_size is not None
        self._pty_size = pty_size
        self._want_stdin = stdin
        self._on_finished = on_finished
        self._subs: list[Subscription] = []
        self._outputs: dict[int, OutputKind] = {}
        self._in_fd: int | None = None
        self._master: int | None = None
        self._in_lock = asyncio.Lock()
        self._write_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._popen: subprocess.Popen[bytes] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.exit: ExitInfo | None = None
        # Run once the process is finished (a spare shell to start).
        self.after: Callable[[], None] | None = None
        self.reaped = False
        self.finished = False
        # Signalled through the API (SendSignal): supervision lets it be.
        self.stopped_by_api = False

    # --- lifecycle -------------------------------------------------------

    def spawn(
        self, argv: list[str], env: dict[str, str], cwd: str, user: User, reaper: Reaper
    ) -> None:
        """Start the process; raises OSError (e.g. FileNotFoundError) on failure."""
        kwargs: dict[str, Any] = {
            "cwd": cwd,
            "env": env,
            "close_fds": True,
            "start_new_session": True,
            "restore_signals": True,
        }
        if not user.is_self:
            if os.geteuid() != 0:
                raise PermissionError(
                    errno.EPERM, f"envd is not root and cannot run processes as {user.name!r}"
                )
            if self._pty_size is None and (prefix := drop_to(user)) is not None:
                # Checked here: setpriv would report a missing program as its own error.
                if shutil.which(argv[0], path=env.get("PATH")) is None:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
                argv = prefix + argv
            else:
                kwargs.update(user=user.uid, group=user.gid, extra_groups=list(user.groups))
        if self._pty_size is not None:
            self._spawn_pty(argv, kwargs, user)
        else:
            self._spawn_pipes(argv, kwargs)
        assert self._popen is not None
        self.pid = self._popen.pid
        # Registered before yielding to the loop, so the exit cannot be missed.
        reaper.track(self.pid, self._on_exit)
        for fd in self._outputs:
            self._loop.add_reader(fd, self._on_readable, fd)

    def adopt(self, spare: Spare, data: bytes) -> bool:
        """Become the spare shell, which then runs ``data``; False when the
        spare is gone (the caller starts the process cold). Its pid is
        tracked already: its exit reaches us through the spare."""
        if not spare.start(data, self._on_exit):
            return False
        self._popen = spare.popen
        self.pid = spare.pid
        self._outputs = {spare.out_r: "stdout", spare.err_r: "stderr"}
        if self._want_stdin:
            self._in_fd = spare.in_w
            os.set_blocking(spare.in_w, False)
        else:
            # The command sees an empty stdin, as with /dev/null.
            os.close(spare.in_w)
        spare.out_r = spare.err_r = spare.in_w = -1
        for fd in self._outputs:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._on_readable, fd)
        return True

    def _spawn_pty(self, argv: list[str], kwargs: dict[str, Any], user: User) -> None:
        assert self._pty_size is not None
        master, slave = terminal.open_pty(*self._pty_size)
        try:
            if not user.is_self:
                # Like a login: the terminal belongs to the user working in it.
                os.fchown(slave, user.uid, -1)
            self._popen = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                preexec_fn=terminal.take_controlling_terminal,
                **kwargs,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            # Only the child may hold the slave, or reading the master never
            # reports the end (EIO) once the child is gone.
            os.close(slave)
        self._master = master
        self._in_fd = master
        self._outputs = {master: "pty"}

    def _spawn_pipes(self, argv: list[str], kwargs: dict[str, Any]) -> None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r: int = subprocess.DEVNULL
        in_w: int | None = None
        if self._want_stdin:
            in_r, in_w = os.pipe()
        child_side = [out_w, err_w] + ([in_r] if in_w is not None else [])
        try:
            self._popen = subprocess.Popen(argv, stdin=in_r, stdout=out_w, stderr=err_w, **kwargs)
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in child_side:
                os.close(fd)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        if in_w is not None:
            os.set_blocking(in_w, False)
        self._in_fd = in_w
        self._outputs = {out_r: "stdout", err_r: "stderr"}

    def set_deadline(self, seconds: float) -> None:
        """Kill the process after ``seconds``, like E2B's per-command timeout."""
        self._deadline = self._loop.call_later(seconds, self.signal, signal.SIGKILL)

    # --- output ----------------------------------------------------------

    def _read(self, fd: int) -> bytes | None:
        """Next chunk from ``fd``; b"" at its end, None when nothing is ready."""
        try:
            return os.read(fd, PTY_CHUNK if self.is_pty else STD_CHUNK)
        except BlockingIOError:
            return None
        except OSError as e:
            # EIO on a PTY master: every slave descriptor is closed.
            if e.errno in (errno.EIO, errno.EBADF):
                return b""
            raise

    def _on_readable(self, fd: int) -> None:
        data = self._read(fd)
        if data is None:
            return
        if not data:
            self._close_output(fd)
            if self.reaped and not self._outputs:
                self._finish()
            return
        self._broadcast(Output(self._outputs[fd], data))

    def _close_output(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        self._outputs.pop(fd, None)
        if fd == self._master:
            # The master doubles as the input side.
            self._in_fd = None
            self._master = None
        os.close(fd)

    def _broadcast(self, event: Output) -> None:
        for sub in self._subs:
            sub.push(event)
            if len(sub) > HIGH_WATER and not self._paused:
                self._paused = True
                for fd in self._outputs:
                    self._loop.remove_reader(fd)

    def consumed(self) -> None:
        if self._paused and all(len(s) < LOW_WATER for s in self._subs):
            self._paused = False
            if not self.finished:
                for fd in self._outputs:
                    self._loop.add_reader(fd, self._on_readable, fd)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        if self.finished and self.exit is not None:
            sub.push(self.exit)
        else:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)
        self.consumed()

    # --- exit ------------------------------------------------------------

    def _on_exit(self, status: int) -> None:
        self.exit = ExitInfo.from_wait_status(status)
        self.reaped = True
        if self._popen is not None:
            # Keeps subprocess' own bookkeeping from ever waiting on this pid.
            self._popen.returncode = os.waitstatus_to_exitcode(status)
        if self._deadline is not None:
            self._deadline.cancel()
        # Whatever the process wrote before exiting is already in the pipe.
        for fd in list(self._outputs):
            drained = 0
            while drained < DRAIN_LIMIT:
                data = self._read(fd)
                if data is None:
                    break
                if not data:
                    self._close_output(fd)
                    break
                drained += len(data)
                self._broadcast(Output(self._outputs[fd], data))
        if self.is_pty and self._outputs:
            if not self._paused:
                for fd in self._outputs:
                    self._loop.add_reader(fd, self._on_readable, fd)
            self._grace = self._loop.call_later(PTY_EXIT_GRACE, self._finish)
            return
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._grace is not None:
            self._grace.cancel()
        for fd in list(self._outputs):
            self._close_output(fd)
        if self._in_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._in_fd)
            self._in_fd = None
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_exception(InputError("process exited"))
        assert self.exit is not None
        for sub in self._subs:
            sub.push(self.exit)
        self._subs.clear()
        self._on_finished(self)

    # --- input and control -------------------------------------------------

    async def write_input(self, data: bytes, pty: bool) -> None:
        if pty != self.is_pty:
            if self.is_pty:
                raise InputError("tty assigned to process, input should be written to the pty")
            raise InputError("tty not assigned to process, input should be written to stdin")
        async with self._in_lock:
            view = memoryview(data)
            while view:
                fd = self._in_fd
                if fd is None:
                    raise InputError("stdin not enabled or closed")
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await self._wait_writable(fd)
                    continue
                except OSError as e:
                    raise InputError(f"error writing to process {self.pid}: {e}") from None
                view = view[written:]

    async def _wait_writable(self, fd: int) -> None:
        waiter = self._loop.create_future()
        self._write_waiter = waiter

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._loop.add_writer(fd, ready)
        try:
            await waiter
        finally:
            self._write_waiter = None
            with contextlib.suppress(Exception):
                self._loop.remove_writer(fd)

    def close_stdin(self) -> None:
        if self.is_pty:
            raise InputError("cannot close stdin of a PTY process, send Ctrl+D (0x04) instead")
        if self._in_fd is not None:
            fd, self._in_fd = self._in_fd, None
            if self._write_waiter is not None and not self._write_waiter.done():
                self._write_waiter.set_exception(InputError("stdin closed"))
            with contextlib.suppress(Exception):
                self._loop.remove_writer(fd)
            os.close(fd)

    def resize(self, rows: int, cols: int) -> None:
        if self._master is None:
            raise InputError("tty not assigned to process")
        terminal.set_size(self._master, rows, cols)

    def signal(self, sig: int) -> None:
        """Signal the process and the rest of its process group (its session)."""
        if self.reaped:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def build_env(base: dict[str, str], user: User, extra: dict[str, str], pty: bool) -> dict[str, str]:
    """The child's environment; later sources win: envd's, user's, /init's, request's."""
    env = dict(base)
    for key in ("PWD", "OLDPWD"):
        env.pop(key, None)
    env.update(user.env())
    env.update(extra)
    env.setdefault("PATH", DEFAULT_PATH)
    if pty and "TERM" not in extra:
        # envd's own TERM says nothing about the terminal the client emulates.
        env["TERM"] = "xterm-256color"
    return env
