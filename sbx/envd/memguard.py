"""The sandbox's out-of-memory killer.

gVisor has no OOM killer of its own: when a sandbox outgrows its host
memory cgroup, the host kills the sentry and the whole sandbox dies. So the
host cgroup is given memory_mib plus a headroom, and this thread plays the
kernel's part inside: when the sandbox's memory use (MemTotal - MemAvailable
in gVisor's /proc/meminfo, which counts every process and tmpfs) passes
memory_mib, the process with the largest resident set is killed, as Linux
would. A thread, not a task, so a busy event loop never delays it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("envd.memguard")
MEMORY_ENV = "SBX_ENVD_MEMORY_MIB"


def used_kib(meminfo: str) -> int:
    fields: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[name] = int(parts[0])
    return fields.get("MemTotal", 0) - fields.get("MemAvailable", fields.get("MemFree", 0))


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def largest_process(exclude: set[int]) -> int | None:
    best, best_rss = None, 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in exclude:
            continue
        rss = rss_kib(pid)
        if rss > best_rss:
            best, best_rss = pid, rss
    return best


class MemoryGuard:
    """limit_mib is asked every round: /init may set or change it (a
    sandbox restored from a shared snapshot learns its size that way)."""

    def __init__(self, limit_mib: Callable[[], int | None], interval_s: float = 0.02) -> None:
        self.limit_mib = limit_mib
        self.interval_s = interval_s
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memguard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> int | None:
        """One round: answer the pid killed, if any."""
        limit = self.limit_mib()
        if not limit:
            return None
        with open("/proc/meminfo") as f:
            used = used_kib(f.read())
        if used <= limit * 1024:
            return None
        victim = largest_process({1, os.getpid()})
        if victim is None:
            return None
        try:
            os.kill(victim, signal.SIGKILL)
        except OSError:
            return None
        self.kills += 1
        log.warning("out of memory: %d KiB used > %d MiB; killed pid %d",
                    used, limit, victim)
        return victim

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                killed = self.check()
            except OSError:
                killed = None
            # After a kill, give the sandbox time to release the memory.
            self._stop.wait(0.2 if killed else self.interval_s)


def limit_from_secrets(secrets: dict[str, str]) -> int | None:
    value = secrets.get(MEMORY_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None
