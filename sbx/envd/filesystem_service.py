"""The ``filesystem.Filesystem`` Connect service."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from . import users
from .calls import keepalive_interval, os_error, resolve_path, resolve_user
from .connect import (
    Call,
    Code,
    ConnectError,
    ConnectRouter,
    JsonObj,
    as_bool,
    as_int,
    as_str,
    field,
)
from .fsinfo import EntryBuilder
from .state import EnvdState
from .watch import Watcher, is_network_mount, watch

SERVICE = "/filesystem.Filesystem/"
# Events kept for a polled watcher nobody polls; older ones are dropped.
MAX_PENDING_EVENTS = 100_000


def fs_event(root: str, name: str, op: str, include_entry: bool) -> JsonObj:
    event: JsonObj = {"name": name, "type": op}
    if include_entry:
        with contextlib.suppress(OSError):
            event["entry"] = EntryBuilder().build(os.path.join(root, name) if name else root)
    return event


class PolledWatcher:
    def __init__(
        self, root: str, recursive: bool, include_entry: bool, force_polling: bool
    ) -> None:
        self.events: deque[JsonObj] = deque(maxlen=MAX_PENDING_EVENTS)
        self._root = root
        self._include_entry = include_entry
        self.watcher: Watcher = watch(root, recursive, self._sink, force_polling)

    def _sink(self, name: str, op: str) -> None:
        self.events.append(fs_event(self._root, name, op, self._include_entry))


class FilesystemService:
    def __init__(self, state: EnvdState, force_polling: bool = False) -> None:
        self._state = state
        self._force_polling = force_polling
        self._watchers: dict[str, PolledWatcher] = {}

    def register(self, router: ConnectRouter) -> None:
        router.unary(SERVICE + "Stat", self.stat)
        router.unary(SERVICE + "ListDir", self.list_dir)
        router.unary(SERVICE + "MakeDir", self.make_dir)
        router.unary(SERVICE + "Move", self.move)
        router.unary(SERVICE + "Remove", self.remove)
        router.server_stream(SERVICE + "WatchDir", self.watch_dir)
        router.unary(SERVICE + "CreateWatcher", self.create_watcher)
        router.unary(SERVICE + "GetWatcherEvents", self.get_watcher_events)
        router.unary(SERVICE + "RemoveWatcher", self.remove_watcher)

    def close(self) -> None:
        for w in self._watchers.values():
            w.watcher.close()
        self._watchers.clear()

    def _path(self, msg: JsonObj, call: Call, name: str = "path") -> tuple[str, users.User]:
        user = resolve_user(self._state, call)
        return resolve_path(self._state, as_str(field(msg, name), name), user), user

    async def stat(self, msg: JsonObj, call: Call) -> JsonObj:
        path, _ = self._path(msg, call)
        try:
            return {"entry": EntryBuilder().build(path)}
        except OSError as e:
            raise os_error(e, "error getting file info") from None

    async def list_dir(self, msg: JsonObj, call: Call) -> JsonObj:
        path, _ = self._path(msg, call)
        depth = as_int(field(msg, "depth"), "depth") or 1
        resolved = os.path.realpath(path)
        if not os.path.lexists(path) or not os.path.exists(resolved):
            raise ConnectError(Code.NOT_FOUND, f"directory not found: {path}")
        if not os.path.isdir(resolved):
            raise ConnectError(Code.INVALID_ARGUMENT, f"path is not a directory: {path}")
        builder = EntryBuilder()
        entries: list[dict[str, Any]] = []

        def walk(directory: str, level: int) -> None:
            try:
                with os.scandir(directory) as it:
                    found = sorted(it, key=lambda e: e.name)
            except OSError as e:
                if level == 1:
                    raise os_error(e, f"error reading directory {directory}") from None
                # Like `ls -R`: an unreadable subdirectory does not spoil the rest.
                return
            for entry in found:
                try:
                    st = entry.stat(follow_symlinks=False)
                    entries.append(builder.build(entry.path, st))
                except OSError:
                    continue
                if level < depth and entry.is_dir(follow_symlinks=False):
                    walk(entry.path, level + 1)

        walk(resolved, 1)
        return {"entries": entries}

    async def make_dir(self, msg: JsonObj, call: Call) -> JsonObj:
        path, user = self._path(msg, call)
        if os.path.isdir(path):
            raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {path}")
        if os.path.lexists(path):
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"path already exists but it is not a directory: {path}"
            )
        try:
            users.ensure_dirs(path, user)
            return {"entry": EntryBuilder().build(path)}
        except OSError as e:
            raise os_error(e, "error creating directory") from None

    async def move(self, msg: JsonObj, call: Call) -> JsonObj:
        user = resolve_user(self._state, call)
        source = resolve_path(self._state, as_str(field(msg, "source"), "source"), user)
        dest = resolve_path(self._state, as_str(field(msg, "destination"), "destination"), user)
        if not os.path.lexists(source):
            raise ConnectError(Code.NOT_FOUND, f"source file not found: {source}")
        try:
            users.ensure_dirs(os.path.dirname(dest), user)
            try:
                os.rename(source, dest)
            except OSError as e:
                if e.errno != errno.EXDEV:  # across filesystems: copy instead
                    raise
                shutil.move(source, dest)
            return {"entry": EntryBuilder().build(dest)}
        except OSError as e:
            raise os_error(e, "error renaming") from None

    async def remove(self, msg: JsonObj, call: Call) -> JsonObj:
        path, _ = self._path(msg, call)
        # Removing what does not exist succeeds, as in E2B's envd (RemoveAll).
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise os_error(e, "error removing file or directory") from None
        return {}

    def _watch_root(self, msg: JsonObj, call: Call) -> str:
        path, _ = self._path(msg, call)
        if not os.path.exists(path):
            raise ConnectError(Code.NOT_FOUND, f"path {path} not found")
        if not os.path.isdir(path):
            raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} not a directory")
        allow = as_bool(field(msg, "allowNetworkMounts"), "allowNetworkMounts")
        if not allow and is_network_mount(os.path.realpath(path)):
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"cannot watch path on network filesystem: {path}"
            )
        return path

    async def watch_dir(self, msg: JsonObj, call: Call) -> AsyncIterator[JsonObj]:
        root = self._watch_root(msg, call)
        recursive = as_bool(field(msg, "recursive"), "recursive")
        include_entry = as_bool(field(msg, "includeEntry"), "includeEntry")
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        try:
            watcher = watch(
                root, recursive, lambda n, op: queue.put_nowait((n, op)), self._force_polling
            )
        except OSError as e:
            raise os_error(e, "error creating watcher") from None
        interval = keepalive_interval(call)
        try:
            yield {"start": {}}
            while True:
                try:
                    name, op = await asyncio.wait_for(queue.get(), interval)
                except TimeoutError:
                    yield {"keepalive": {}}
                    continue
                yield {"filesystem": fs_event(root, name, op, include_entry)}
        finally:
            watcher.close()

    async def create_watcher(self, msg: JsonObj, call: Call) -> JsonObj:
        root = self._watch_root(msg, call)
        recursive = as_bool(field(msg, "recursive"), "recursive")
        include_entry = as_bool(field(msg, "includeEntry"), "includeEntry")
        try:
            polled = PolledWatcher(root, recursive, include_entry, self._force_polling)
        except OSError as e:
            raise os_error(e, "error creating watcher") from None
        watcher_id = "w" + secrets.token_hex(8)
        self._watchers[watcher_id] = polled
        return {"watcherId": watcher_id}

    def _watcher(self, msg: JsonObj) -> tuple[str, PolledWatcher]:
        watcher_id = as_str(field(msg, "watcherId"), "watcherId")
        polled = self._watchers.get(watcher_id)
        if polled is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher with id {watcher_id} not found")
        return watcher_id, polled

    async def get_watcher_events(self, msg: JsonObj, call: Call) -> JsonObj:
        _, polled = self._watcher(msg)
        events = list(polled.events)
        polled.events.clear()
        return {"events": events}

    async def remove_watcher(self, msg: JsonObj, call: Call) -> JsonObj:
        watcher_id, polled = self._watcher(msg)
        polled.watcher.close()
        del self._watchers[watcher_id]
        return {}
