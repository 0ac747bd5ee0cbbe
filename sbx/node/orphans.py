"""Reaping the sandbox processes that runsc leaves behind.

`runsc run --detach` and `runsc restore --detach` start the sandbox and
gofer processes and exit, so those become orphans. Left to PID 1 they are
reaped late on these hosts (seconds), and `runsc delete` polls `kill(pid, 0)`
until the zombie is gone: a pause or a kill then waited 1.1-1.7 s for nothing.
The server makes itself a child subreaper, so the orphans become its
children, and reaps them as soon as they exit.

Only processes of another session are reaped here: runsc starts its
sandbox and gofer with setsid, and what they start in turn (systrap's stub
processes, one per address space, orphaned when the sandbox is killed) stays
in that session; nothing the server spawns itself leaves the server's
session, so the exit status of a child that asyncio or subprocess waits for
is never taken from it. (Reaping only session leaders left the stubs as
zombies, ~4 per sandbox: with pid_max 32768 the host would run out of
process ids after some thousands of sandboxes.) If the server goes, the
orphans go to PID 1 again, and running sandboxes are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_SWEEP_INTERVAL_S = 1.0


def become_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def children(pid: int | None = None) -> list[int]:
    """The children of every thread of the process."""
    pid = pid or os.getpid()
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session) of pid, from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces or ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[3])


def _bundle(pid: int) -> str | None:
    """The --bundle of a runsc sandbox or gofer process (which sandbox it is)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in args:
        if arg.startswith(b"--bundle="):
            return arg[len(b"--bundle="):].decode(errors="replace")
    return None


def reap_orphans() -> list[int]:
    """Reap every exited child of another session; answers their pids."""
    reaped = []
    own = os.getsid(0)
    for pid in children():
        st = _stat(pid)
        if st is None or st[0] != "Z" or st[1] == own:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
    return reaped


@dataclass
class _Watch:
    fd: int
    owner: str | None  # the runsc bundle the process serves
    gone: asyncio.Future[None]


class OrphanReaper:
    """Watches each adopted process through a pidfd and reaps it the moment
    it exits. (SIGCHLD is not ours to handle: uvloop, which uvicorn runs,
    keeps it for its own subprocesses.) A slow sweep catches anything
    adopted without being watched."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._watched: dict[int, _Watch] = {}

    async def start(self) -> None:
        if not become_subreaper():
            log.warning("cannot become a child subreaper: sandbox exits are reaped late")
            return
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._sweeps(), name="orphan-reaper")

    def adopt(self) -> None:
        """Watch the session leaders that became our children since the last
        call (call it after runsc run/restore returns)."""
        if self._loop is None:
            return
        for pid in children():
            if pid in self._watched:
                continue
            st = _stat(pid)
            if st is None or st[1] != pid:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            self._watched[pid] = _Watch(fd, _bundle(pid), self._loop.create_future())
            self._loop.add_reader(fd, self._exited, pid)

    async def kill(self, bundle: Path, timeout: float = 2.0) -> bool:
        """SIGKILL the adopted processes of the runsc bundle and wait until
        they are reaped; answers False when there were none (or they
        outlived the timeout), and the caller then goes the slow way."""
        mine = [(pid, w) for pid, w in self._watched.items() if w.owner == str(bundle)]
        if not mine:
            return False
        for _, w in mine:
            # Through the pidfd: the signal cannot reach a recycled pid.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(w.fd, signal.SIGKILL)
        done, _ = await asyncio.wait([w.gone for _, w in mine], timeout=timeout)
        return len(done) == len(mine)

    def _exited(self, pid: int) -> None:
        w = self._watched.pop(pid, None)
        if w is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(w.fd)
        os.close(w.fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not w.gone.done():
            w.gone.set_result(None)

    def _sweep(self) -> None:
        reaped = reap_orphans()
        for pid in reaped:
            self._exited(pid)
        if reaped:
            log.debug("swept sandbox processes %s", reaped)
        self.adopt()

    async def _sweeps(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            self._sweep()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._loop is not None:
            for w in self._watched.values():
                self._loop.remove_reader(w.fd)
                os.close(w.fd)
            self._watched.clear()
        reap_orphans()
