"""A template build's progress: events (steps, their output, phases, the
outcome) kept in memory while the build runs, for every follower, and
appended to a file that outlives it (DATA_DIR/builds/<id>/events.ndjson),
so a follower that comes late or after a restart reads the same story."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

# A build's output beyond this is dropped (one notice says so): a step that
# prints without end must not fill the disk or the server's memory.
MAX_LOG_BYTES = 16 * 1024 * 1024


class BuildLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.events: list[dict[str, Any]] = []
        self.done = False
        self._file: IO[str] | None = path.open("a", encoding="utf-8")
        self._changed = asyncio.Condition()
        self._log_bytes = 0
        self._truncated = False

    def emit(self, event: dict[str, Any]) -> None:
        if self.done:
            return
        if event.get("type") == "log":
            self._log_bytes += len(event.get("data", ""))
            if self._log_bytes > MAX_LOG_BYTES:
                if self._truncated:
                    return
                self._truncated = True
                event = {"type": "log", "step": event.get("step"),
                         "data": f"\n[sbx: output beyond {MAX_LOG_BYTES >> 20} MiB dropped]\n"}
        self.events.append(event)
        if self._file is not None:
            # Small appends, no fsync: the build's row is the record of its
            # outcome; this is its story.
            self._file.write(json.dumps(event, ensure_ascii=False) + "\n")
            self._file.flush()
        if event.get("type") == "done":
            self.done = True
            if self._file is not None:
                self._file.close()
                self._file = None
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event so far, then each new one until the outcome."""
        seen = 0
        while True:
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.done:
                return
            async with self._changed:
                if seen == len(self.events) and not self.done:
                    await self._changed.wait()


def read(path: Path) -> list[dict[str, Any]]:
    """The events of a finished build, from its file (lines cut short by a
    crash are skipped)."""
    out: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    out.append(event)
    except OSError:
        pass
    return out
