"""The layer store of custom template builds, on the host kernel's overlayfs.

Each Dockerfile step that changes files runs on an overlay whose lower dirs
are the diffs of the steps before it (top first) over the base template's
root filesystem, with a fresh, empty upper dir. What the step leaves in that
upper dir, whiteouts and opaque dirs included, is the step's layer, stored
under the step's cache key. Because every upper later serves as a lower,
deletions across layers are the kernel's own overlay semantics.

Layout on disk (one process, the API server, owns a store)::

    root/
      <key>/              a committed layer (key: 64 hex, the cache key)
        diff/             the overlay upper dir of the step
        meta.json         {"key", "parent", "size", "created", "meta"}
        used              its mtime is the layer's last use (LRU)
      tmp/
        ws-<random>/      a workspace (one mount)
          l/0 ... l/N-1   symlinks to the chain's diffs, 0 the top one
          l/b             symlink to the base rootfs
          layer/diff/     the upper dir; layer/ becomes root/<key>/ on commit
          w/              the overlay work dir
          m/              the merged mount point
          e/              an empty bottom lower (read-only mount of the base alone)
        rm-<random>/      a layer being removed: renamed here, then deleted

Crash safety. A layer directory appears under root/<key>/ only by one
rename(2) of a complete staging directory, made after its diff, meta.json and
used file were written and the filesystem synced (syncfs). rename(2) within a
filesystem is atomic, so after a crash root/<key>/ either does not exist or is
complete; everything half-done lives under root/tmp/, which recover() unmounts
and deletes at server start. Removal is the same in reverse: the layer is
first renamed into root/tmp/ (one atomic step that makes it vanish from the
store), then deleted, so a crash mid-delete never leaves a partial layer under
its key. A key directory without a readable meta.json can only come from
outside this module; get() ignores it and recover() removes it.

Layers are named to the kernel by short relative symlinks (l/0, l/1, ...)
from a mount run with its working directory in the workspace: overlay's
options must fit in one page, which 64-hex-named absolute paths would not.
The stack is then bounded by the kernel's own limit of 500 lower dirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sbx.node.proc import CommandError, run
from sbx.node.snapshots import fsync_dir

log = logging.getLogger(__name__)

# The kernel's OVL_MAX_STACK is 500 lower dirs; the base rootfs is one.
MAX_LAYERS = 499
# mount(2) copies at most one page of options.
_MAX_OPTIONS = 4095
_KEY = re.compile(r"[0-9a-f]{64}")
_TMP = "tmp"
_MOUNT_TIMEOUT = 60.0
_COPY_TIMEOUT = 3600.0
# mount(8) from util-linux 2.39 on passes options with fsconfig(2), whose
# string values are limited to 256 bytes: a long lowerdir would fail there.
# The variable makes such versions use mount(2) (one page); 2.38 (Debian 12)
# does that anyway and ignores it.
_MOUNT_SH = (
    'cd "$1" && shift && export LIBMOUNT_FORCE_MOUNT2=always && exec mount "$@"'
)
# Fixed, not the module's defaults: redirect_dir and metacopy would let an
# upper refer to files of the lowers it was made on, and index would bind it
# to them; a diff must stand alone to be reused under other chains' uppers.
_OVERLAY_OPTIONS = "index=off,redirect_dir=off,metacopy=off"

T = TypeVar("T")


class LayerError(RuntimeError):
    """A layer operation that cannot be done (missing or malformed key, a
    layer still in use, a chain too deep, a failed mount or copy)."""


@dataclass(frozen=True)
class Layer:
    key: str  # the instruction's cache key (64 hex)
    parent: str | None  # the key of the layer below (None: directly on the base rootfs)
    diff: Path  # the overlay upper dir of this step (whiteouts included)
    meta: dict[str, Any]  # free-form, stored as meta.json (the builder stores config there)
    size: int  # bytes of diff on disk


class Workspace:
    """One mounted overlay: a build step writes into `merged` (runsc uses it
    as its root); its changes land in `upper`. commit() unmounts first, so
    it is the step's last act on the workspace. A read-only workspace has no
    upper (`upper` names a directory that does not exist) and cannot commit."""

    def __init__(self, store: LayerStore, tmp: Path, parent: str | None,
                 chain_keys: frozenset[str], read_only: bool) -> None:
        self.merged = tmp / "m"
        self.upper = tmp / "layer" / "diff"
        self.parent = parent
        self.read_only = read_only
        self._store = store
        self._tmp = tmp
        self._chain_keys = chain_keys
        self._state = "mounted"  # then "committing", "committed" or "failed"

    async def commit(self, key: str, meta: dict[str, Any]) -> Layer:
        """Make the upper a committed layer under `key` (atomic rename into
        root/<key>/). If the key exists already (a concurrent build made the
        same step), ours is discarded and the existing layer returned."""
        _check_key(key)
        if self.read_only:
            raise LayerError("a read-only workspace cannot be committed")
        if self._state != "mounted":
            raise LayerError(f"this workspace is {self._state}, it cannot be committed again")
        if key in self._chain_keys:
            raise LayerError(f"layer {key[:12]} cannot be its own ancestor")
        # Refuse unserialisable meta before the mount is gone.
        json.dumps(meta)
        self._state = "committing"
        try:
            # Not lazily: a process still holding the mount could write to the
            # diff after it was sealed, and a layer must not change.
            await _finish(self._store._unmount_under(self._tmp, lazy=False))
            stage = self._tmp / "layer"
            await _finish(asyncio.to_thread(_seal, stage, key, self.parent, meta))
            layer = await self._store._publish(stage, key)
        except BaseException:
            self._state = "failed"
            raise
        self._state = "committed"
        return layer


class LayerStore:
    def __init__(self, root: Path) -> None:
        # Absolute and symlink-free: mount points are matched against
        # /proc/self/mountinfo, which shows real paths.
        self.root = Path(os.path.realpath(root))
        self._tmp = self.root / _TMP
        self._in_use: Counter[str] = Counter()
        # Bumped by every commit: removals check it did not move between
        # their scan for children and their rename (both in the event loop).
        self._generation = 0

    # -- reading ---------------------------------------------------------------------

    def get(self, key: str) -> Layer | None:
        """The committed layer `key`, else None; marks it used (LRU)."""
        _check_key(key)
        layer = self._load(key)
        if layer is not None:
            self._touch(key)
        return layer

    def chain(self, key: str) -> list[Layer]:
        """The layer and all its parents, bottom first."""
        _check_key(key)
        layers: list[Layer] = []
        seen: set[str] = set()
        current: str | None = key
        while current is not None:
            if current in seen:
                raise LayerError(f"layer {key[:12]}: its parents form a cycle")
            seen.add(current)
            layer = self._load(current)
            if layer is None:
                if current == key:
                    raise LayerError(f"no layer {key}")
                raise LayerError(f"layer {key[:12]}: its ancestor {current} is missing")
            layers.append(layer)
            current = layer.parent
        layers.reverse()
        return layers

    def usage(self) -> int:
        """Bytes on disk of all committed layers."""
        return sum(layer.size for layer, _ in self._scan().values())

    # -- mounting --------------------------------------------------------------------

    def mounted(self, base: Path, parent: str | None, *,
                read_only: bool = False) -> AbstractAsyncContextManager[Workspace]:
        """An overlay of base + chain(parent) with a fresh upper (none when
        read_only), unmounted and cleaned up on exit, whatever happens inside."""
        return self._mounted(base, parent, read_only)

    @asynccontextmanager
    async def _mounted(self, base: Path, parent: str | None,
                       read_only: bool) -> AsyncIterator[Workspace]:
        # The chain is read and marked in use before the first await: a
        # removal in the same loop either ran before (we see no layer) or
        # sees the mark and refuses.
        chain = self.chain(parent) if parent is not None else []
        if len(chain) > MAX_LAYERS:
            raise LayerError(
                f"more than {MAX_LAYERS} filesystem layers: layer {chain[-1].key[:12]} "
                f"sits on {len(chain)} (overlayfs stacks at most {MAX_LAYERS + 1} "
                "directories, the base included)"
            )
        if not base.is_dir():
            raise LayerError(f"base rootfs {base} is not a directory")
        keys = [layer.key for layer in chain]
        self._in_use.update(keys)
        # Named here, not by the thread that makes it: whatever is cancelled
        # when, the cleanup below knows what to remove.
        tmp = self._tmp / f"ws-{secrets.token_hex(16)}"
        try:
            for key in keys:
                self._touch(key)
            options = await _finish(asyncio.to_thread(self._prepare, tmp, base, chain,
                                                      read_only))
            await _finish(self._mount(tmp, options))
            yield Workspace(self, tmp, parent, frozenset(keys), read_only)
        finally:
            try:
                await _finish(self._cleanup(tmp))
            finally:
                for key in keys:
                    self._in_use[key] -= 1
                    if self._in_use[key] <= 0:
                        del self._in_use[key]

    def _prepare(self, tmp: Path, base: Path, chain: list[Layer], read_only: bool) -> str:
        self._tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700)
        (tmp / "l").mkdir()
        (tmp / "m").mkdir()
        lowers = []
        for i, layer in enumerate(reversed(chain)):
            os.symlink(layer.diff, tmp / "l" / str(i))
            lowers.append(f"l/{i}")
        os.symlink(os.path.realpath(base), tmp / "l" / "b")
        lowers.append("l/b")
        if read_only:
            if len(lowers) == 1:
                # Overlay without an upper wants two lowers.
                (tmp / "e").mkdir()
                lowers.append("e")
            options = f"lowerdir={':'.join(lowers)},{_OVERLAY_OPTIONS},ro"
        else:
            upper = tmp / "layer" / "diff"
            upper.mkdir(parents=True)
            (tmp / "w").mkdir()
            # The merged root takes the upper root's owner, mode and times:
            # make them the ones of the view below, as Docker does.
            _copy_dir_attrs(chain[-1].diff if chain else base, upper)
            options = (f"lowerdir={':'.join(lowers)},upperdir=layer/diff,workdir=w,"
                       f"{_OVERLAY_OPTIONS}")
        if len(options) > _MAX_OPTIONS:
            raise LayerError(f"more than {MAX_LAYERS} filesystem layers "
                             f"(overlay options of {len(options)} bytes)")
        return options

    async def _mount(self, tmp: Path, options: str) -> None:
        try:
            await run("sh", "-c", _MOUNT_SH, "sh", str(tmp), "-t", "overlay", "overlay",
                      "-o", options, str(tmp / "m"), timeout=_MOUNT_TIMEOUT)
        except CommandError as e:
            raise LayerError(f"overlay mount failed: {e}") from e

    async def _cleanup(self, tmp: Path) -> None:
        await self._unmount_under(tmp)
        await asyncio.to_thread(_rmtree_unmounted, tmp)

    async def _unmount_under(self, prefix: Path, *, lazy: bool = True) -> None:
        """Unmount everything at or below prefix, the last mounted first."""
        for point in await asyncio.to_thread(_mounts_under, prefix):
            await _unmount(point, lazy=lazy)

    # -- flattening ------------------------------------------------------------------

    async def flatten(self, base: Path, top: str | None, dest: Path) -> None:
        """A plain directory tree equal to the merged view of base + chain(top)
        at dest (which must not exist); top=None copies base."""
        dest = Path(os.path.abspath(dest))
        if dest.exists() or dest.is_symlink():
            raise LayerError(f"{dest} exists")
        if not dest.parent.is_dir():
            raise LayerError(f"{dest.parent} is not a directory")
        part = dest.with_name(f"{dest.name}.tmp-{secrets.token_hex(6)}")
        async with self.mounted(base, top, read_only=True) as ws:
            try:
                # cp -a, not tar c | tar x: as fast (the 330 MiB Debian 12 base
                # into tmpfs, median of 6: cp 1.17 s, tar pipe 1.23 s; onto a
                # busy ext4 disk both 3-20 s, syncfs included, dominated by the
                # disk), and one process whose exit status is the whole story.
                # The merged view hides overlay's own trusted.overlay.* xattrs
                # and resolves whiteouts: a copy of it is the tree a step saw.
                await _finish(run("cp", "-a", "--one-file-system", "--", f"{ws.merged}/.",
                                  str(part), timeout=_COPY_TIMEOUT))
                # A template that appears by rename must be on disk, not only
                # in the page cache, when it appears.
                await _finish(asyncio.to_thread(_syncfs, part))
            except BaseException as e:
                await asyncio.to_thread(shutil.rmtree, part, True)
                if isinstance(e, CommandError):
                    raise LayerError(f"flatten into {dest} failed: {e}") from e
                raise
        if dest.exists() or dest.is_symlink():
            await asyncio.to_thread(shutil.rmtree, part, True)
            raise LayerError(f"{dest} appeared while flattening")
        os.rename(part, dest)
        await asyncio.to_thread(fsync_dir, dest.parent)

    # -- removing --------------------------------------------------------------------

    async def remove(self, key: str) -> None:
        """Delete a committed layer; refuses (LayerError) when another layer
        has it as parent or a mount uses it."""
        _check_key(key)
        while True:
            generation = self._generation
            layers = await asyncio.to_thread(self._scan)
            if generation != self._generation:
                continue  # a commit landed during the scan: it may be a child
            if key not in layers:
                raise LayerError(f"no layer {key}")
            children = sorted(k for k, (layer, _) in layers.items() if layer.parent == key)
            if children:
                raise LayerError(f"layer {key[:12]} is the parent of {len(children)} "
                                 f"layer(s): {', '.join(c[:12] for c in children)}")
            if self._in_use[key]:
                raise LayerError(f"layer {key[:12]} is in use by a mount")
            trash = self._detach(key)
            break
        await asyncio.to_thread(shutil.rmtree, trash)

    async def prune(self, keep: set[str], budget_bytes: int) -> list[str]:
        """Remove least-recently-used layers, leaves first, until usage <=
        budget_bytes. Layers in keep, their ancestors and layers mounted now
        stay. Returns the removed keys, in order."""
        for key in keep:
            _check_key(key)
        removed: list[str] = []
        while True:
            generation = self._generation
            layers = await asyncio.to_thread(self._scan)
            if generation != self._generation:
                continue
            protected: set[str] = set()
            for key in keep:
                current: str | None = key
                while current is not None and current in layers and current not in protected:
                    protected.add(current)
                    current = layers[current][0].parent
            total = sum(layer.size for layer, _ in layers.values())
            rescan = False
            while total > budget_bytes:
                if generation != self._generation:
                    rescan = True
                    break
                parents = Counter(layer.parent for layer, _ in layers.values())
                leaves = [k for k in layers
                          if k not in protected and not parents[k] and not self._in_use[k]]
                if not leaves:
                    log.warning("layer store %s: %d bytes over a budget of %d, and nothing "
                                "left to prune", self.root, total, budget_bytes)
                    break
                victim = min(leaves, key=lambda k: (layers[k][1], k))
                trash = self._detach(victim)
                total -= layers.pop(victim)[0].size
                removed.append(victim)
                await asyncio.to_thread(shutil.rmtree, trash)
            if not rescan:
                return removed

    # -- recovery --------------------------------------------------------------------

    async def recover(self) -> None:
        """At server start, before any other use: unmount whatever a crashed
        run left mounted under root, delete its workspaces and half-made
        layers."""
        await asyncio.to_thread(lambda: self._tmp.mkdir(mode=0o700, parents=True, exist_ok=True))
        stale = await asyncio.to_thread(_mounts_under, self.root)
        for point in stale:
            log.warning("layer store: unmounting %s, left by an earlier run", point)
            await _unmount(point)
        await asyncio.to_thread(self._sweep)

    def _sweep(self) -> None:
        left = _mounts_under(self.root)
        if left:
            raise LayerError(f"still mounted under {self.root}: {', '.join(left)}")
        for entry in self._tmp.iterdir():
            _remove_entry(entry)
        for entry in self.root.iterdir():
            if _KEY.fullmatch(entry.name) and self._load(entry.name) is None:
                log.warning("layer store: removing incomplete layer %s", entry.name)
                _remove_entry(self._detach(entry.name))

    # -- internals -------------------------------------------------------------------

    def _load(self, key: str) -> Layer | None:
        path = self.root / key
        try:
            with open(path / "meta.json", "rb") as f:
                record = json.load(f)
            if not (isinstance(record, dict) and record.get("key") == key
                    and isinstance(record.get("size"), int)
                    and isinstance(record.get("meta"), dict)):
                return None
            parent = record.get("parent")
            if parent is not None and not (isinstance(parent, str) and _KEY.fullmatch(parent)):
                return None
        except (OSError, ValueError):
            return None
        return Layer(key=key, parent=parent, diff=path / "diff", meta=record["meta"],
                     size=record["size"])

    def _scan(self) -> dict[str, tuple[Layer, int]]:
        """All committed layers with their last use (ns)."""
        layers: dict[str, tuple[Layer, int]] = {}
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return layers
        for name in names:
            if not _KEY.fullmatch(name):
                continue
            layer = self._load(name)
            if layer is None:
                continue
            try:
                used = os.stat(self.root / name / "used").st_mtime_ns
            except FileNotFoundError:
                used = 0
            layers[name] = (layer, used)
        return layers

    def _touch(self, key: str) -> None:
        # An explicit time, not the kernel's: its file times are as coarse
        # as a clock tick, and two uses in one tick would tie.
        now = time.time_ns()
        used = self.root / key / "used"
        try:
            os.utime(used, ns=(now, now))
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                used.touch()
                os.utime(used, ns=(now, now))

    async def _publish(self, stage: Path, key: str) -> Layer:
        target = self.root / key
        try:
            os.rename(stage, target)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            existing = self._load(key)
            if existing is None:
                raise LayerError(f"{target} is in the way and is no complete layer "
                                 "(recover() removes it)") from e
            # Ours stays in the workspace, deleted with it on exit.
            self._touch(key)
            return existing
        self._generation += 1
        await asyncio.to_thread(fsync_dir, self.root)
        layer = self._load(key)
        if layer is None:
            raise LayerError(f"layer {key} vanished right after its commit")
        return layer

    def _detach(self, key: str) -> Path:
        """Take a layer out of the store in one rename; deleting it is then
        free to take long or to be cut short by a crash."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        trash = self._tmp / f"rm-{secrets.token_hex(8)}"
        os.rename(self.root / key, trash)
        return trash


# -- helpers ------------------------------------------------------------------------


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise LayerError(f"malformed layer key {key!r} (want 64 lowercase hex)")


async def _finish(step: Coroutine[Any, Any, T]) -> T:
    """Run a mount or cleanup step to its end even if the caller is cancelled
    meanwhile: a mount that happens after we gave up on it would be left
    behind. The cancellation still reaches the caller, afterwards."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            # Retrieved, so asyncio does not report it as lost; the
            # caller's cancellation is what it gets.
            log.warning("layer store: a step failed after its caller was cancelled: %r",
                        task.exception())
        raise


async def _unmount(point: str, *, lazy: bool = True) -> None:
    delay = 0.05
    for _ in range(6):
        try:
            await run("umount", point, timeout=_MOUNT_TIMEOUT)
            return
        except CommandError as e:
            if point not in await asyncio.to_thread(_mounts_under, Path(point)):
                return
            if "busy" not in e.stderr:
                raise LayerError(f"cannot unmount {point}: {e}") from e
        await asyncio.sleep(delay)
        delay *= 2
    if not lazy:
        raise LayerError(f"{point} is still busy (a process holds files in it)")
    # Something (a process with its cwd or a file there) still holds it:
    # detach it so the store can go on; the kernel frees it when let go.
    log.warning("layer store: %s stays busy, detaching it lazily (umount -l)", point)
    try:
        await run("umount", "-l", point, timeout=_MOUNT_TIMEOUT)
    except CommandError as e:
        raise LayerError(f"cannot unmount {point}: {e}") from e


def _mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below prefix, the most recently mounted first."""
    base = str(prefix).rstrip("/")
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            point = _unescape(fields[4])
            if point == base or point.startswith(base + "/"):
                points.append(point)
    points.reverse()
    return points


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _rmtree_unmounted(path: Path) -> None:
    # rmtree would walk into a mount still there and delete through it.
    left = _mounts_under(path)
    if left:
        raise LayerError(f"not removing {path}: still mounted at {', '.join(left)}")
    if path.exists():
        shutil.rmtree(path)


def _remove_entry(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _rmtree_unmounted(path)
    else:
        path.unlink(missing_ok=True)


def _copy_dir_attrs(src: Path, dst: Path) -> None:
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _disk_usage(path: Path) -> int:
    """Bytes allocated under path, each inode once (hardlinks)."""
    seen: set[int] = set()
    total = 0
    stack = [str(path)]
    root = os.lstat(path)
    total += root.st_blocks * 512
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink > 1:
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def _seal(stage: Path, key: str, parent: str | None, meta: dict[str, Any]) -> None:
    """Complete a staged layer on disk: used, meta.json, then everything
    synced, so that the rename that publishes it can come next."""
    used = stage / "used"
    used.touch()
    now = time.time_ns()
    os.utime(used, ns=(now, now))
    size = _disk_usage(stage / "diff")
    record = {"key": key, "parent": parent, "size": size, "created": time.time(), "meta": meta}
    with open(stage / "meta.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    # One syncfs covers the diff's files and directories, written through
    # the overlay and not fsynced by whoever wrote them.
    _syncfs(stage)


_libc: ctypes.CDLL | None = None


def _syncfs(path: Path) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
