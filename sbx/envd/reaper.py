"""The only place envd waits for children.

As PID 1 envd inherits every orphan in the sandbox and must reap them, so it
calls ``waitpid(-1)``. That would steal exit statuses from anybody else waiting
on a specific pid, hence nothing else may wait: spawned processes register
here and get their status through a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger("envd.reaper")

PR_SET_CHILD_SUBREAPER = 36
# SIGCHLD can be lost in corner cases (e.g. a signal arriving while the handler
# is being installed); a slow periodic sweep bounds how long a zombie survives.
SWEEP_INTERVAL = 5.0

ExitCallback = Callable[[int], None]


def become_subreaper() -> bool:
    """Make orphans of our descendants ours, so envd reaps them even when not PID 1."""
    if os.getpid() == 1:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Reaper:
    def __init__(self) -> None:
        self._tracked: dict[int, ExitCallback] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        become_subreaper()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self._schedule_sweep()
        self.reap()

    def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(signal.SIGCHLD)
        if self._sweeper is not None:
            self._sweeper.cancel()

    def track(self, pid: int, on_exit: ExitCallback) -> None:
        """Register ``pid``; must happen before control returns to the event loop.

        The exit is only dispatched from the loop, so registering right after
        spawning, without awaiting in between, cannot miss it.
        """
        self._tracked[pid] = on_exit

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self.reap()
        self._schedule_sweep()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            callback = self._tracked.pop(pid, None)
            if callback is None:
                # An orphan inherited from some exited process: reaping is all.
                continue
            try:
                callback(status)
            except Exception:
                log.exception("exit callback for pid %d failed", pid)
