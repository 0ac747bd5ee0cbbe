"""The layer store of template builds: real overlay mounts of small trees
under tmp_path (needs root and the kernel's overlayfs)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sbx.node.proc import run
from sbx.templates_build.layers import MAX_LAYERS, Layer, LayerError, LayerStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")


def key(name: object) -> str:
    return hashlib.sha256(str(name).encode()).hexdigest()


def mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4].replace("\\040", " ") for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


@pytest.fixture(autouse=True)
def no_mount_left(tmp_path: Path) -> Iterator[None]:
    """Whatever happens in the test: nothing of it stays mounted, and a
    leftover is a failure."""
    yield
    left = mounts_under(tmp_path)
    for point in reversed(left):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    assert left == [], f"left mounted: {left}"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A small root filesystem with every kind of entry flatten must keep."""
    root = tmp_path / "base"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("sbx\n")
    (root / "etc" / "motd").write_text("welcome\n")
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (root / "olddir" / "sub").mkdir(parents=True)
    (root / "olddir" / "a").write_text("a")
    (root / "olddir" / "sub" / "b").write_text("b")
    (root / "link").symlink_to("etc/hostname")
    (root / "abslink").symlink_to("/etc/motd")
    (root / "hard1").write_text("shared inode\n")
    os.link(root / "hard1", root / "hard2")
    (root / "xattr").write_text("with an xattr\n")
    os.setxattr(root / "xattr", "user.x", b"42")
    owned = root / "home" / "user" / "owned"
    owned.parent.mkdir(parents=True)
    owned.write_text("mine\n")
    os.chown(owned, 1000, 1000)
    os.chown(owned.parent, 1000, 1000)
    owned.chmod(0o640)
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(root / "fifo")
    (root / "sticky").mkdir(mode=0o777)
    (root / "sticky").chmod(0o1777)
    os.utime(root / "etc" / "motd", ns=(1_000_000_000, 1_000_000_000))
    return root


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "layers")


async def step(store: LayerStore, base: Path, parent: str | None, name: object,
               change: Callable[[Path], Any], meta: dict[str, Any] | None = None) -> Layer:
    """One build step: mount, change the merged view, commit under key(name)."""
    async with store.mounted(base, parent) as ws:
        change(ws.merged)
        return await ws.commit(key(name), meta or {})


def write(rel: str, text: str) -> Callable[[Path], None]:
    def change(merged: Path) -> None:
        path = merged / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return change


def fake_layer(root: Path, name: object, parent: str | None, files: dict[str, str]) -> str:
    """A committed layer in the documented on-disk format, without a mount
    (for chains too long to build step by step in a unit test)."""
    k = key(name)
    diff = root / k / "diff"
    diff.mkdir(parents=True)
    for rel, text in files.items():
        (diff / rel).write_text(text)
    record: dict[str, Any] = {"key": k, "parent": parent, "size": 4096, "meta": {}}
    (root / k / "meta.json").write_text(json.dumps(record))
    (root / k / "used").touch()
    return k


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything flatten must keep, per path (atime aside)."""
    paths = [str(root)] + [os.path.join(dirpath, name)
                           for dirpath, dirnames, filenames in os.walk(root)
                           for name in [*dirnames, *filenames]]
    tree: dict[str, tuple[Any, ...]] = {}
    for path in paths:
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISREG(kind):
            with open(path, "rb") as f:
                detail: Any = f.read()
        elif stat.S_ISLNK(kind):
            detail = os.readlink(path)
        elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
        else:
            detail = None
        xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                  for n in sorted(os.listxattr(path, follow_symlinks=False))}
        mtime = None if stat.S_ISLNK(kind) else st.st_mtime_ns
        tree[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail,
                     xattrs, mtime, st.st_nlink if not stat.S_ISDIR(kind) else None)
    return tree


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    by_inode: dict[int, set[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_nlink > 1:
                by_inode.setdefault(st.st_ino, set()).add(os.path.relpath(path, root))
    return {frozenset(names) for names in by_inode.values()}


def listing(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root)
            for d, dirs, files in os.walk(root) for n in [*dirs, *files]}


# -- commit, get, chain -------------------------------------------------------------


async def test_commit_then_get_and_chain(store: LayerStore, base: Path) -> None:
    one = await step(store, base, None, 1, write("srv/one", "1"), {"env": ["A=1"]})
    assert one.key == key(1)
    assert one.parent is None
    assert one.diff == store.root / key(1) / "diff"
    assert one.meta == {"env": ["A=1"]}
    assert (one.diff / "srv" / "one").read_text() == "1"
    two = await step(store, base, one.key, 2, write("srv/two", "2"))
    assert two.parent == one.key
    assert store.get(key(1)) == one
    assert store.get(key(2)) == two
    assert store.chain(key(2)) == [one, two]
    assert store.chain(key(1)) == [one]
    # Nothing of the workspaces is left.
    assert list((store.root / "tmp").iterdir()) == []


async def test_get_unknown_and_malformed_keys(store: LayerStore) -> None:
    assert store.get(key("nothing")) is None
    for bad in ["", "abc", key(1).upper(), key(1) + "0", "../" + key(1)[3:]]:
        with pytest.raises(LayerError, match="malformed layer key"):
            store.get(bad)
    with pytest.raises(LayerError, match="no layer"):
        store.chain(key("nothing"))


async def test_upper_holds_only_the_steps_changes(store: LayerStore, base: Path) -> None:
    def change(merged: Path) -> None:
        (merged / "etc" / "motd").write_text("changed\n")
        (merged / "new").write_text("new\n")

    layer = await step(store, base, None, 1, change)
    assert listing(layer.diff) == {"etc", "etc/motd", "new"}
    assert (layer.diff / "etc" / "motd").read_text() == "changed\n"
    # The base is a lower: untouched.
    assert (base / "etc" / "motd").read_text() == "welcome\n"
    assert not (base / "new").exists()


async def test_meta_and_size_are_stored(store: LayerStore, base: Path) -> None:
    meta = {"config": {"env": [["LANG", "C.UTF-8"]], "workdir": "/srv"}, "n": 3}
    layer = await step(store, base, None, 1, write("big", "x" * 300_000), meta)
    assert layer.size >= 300_000
    record = json.loads((store.root / key(1) / "meta.json").read_text())
    assert record["meta"] == meta
    assert record["size"] == layer.size
    assert store.usage() == layer.size


async def test_half_written_layer_is_not_a_layer(store: LayerStore, base: Path) -> None:
    (store.root / key(1) / "diff").mkdir(parents=True)
    assert store.get(key(1)) is None
    (store.root / key(1) / "meta.json").write_text('{"key": "')
    assert store.get(key(1)) is None
    assert store.usage() == 0


async def test_workspace_left_without_commit_makes_no_layer(store: LayerStore,
                                                            base: Path) -> None:
    async with store.mounted(base, None) as ws:
        (ws.merged / "file").write_text("x")
        assert (ws.upper / "file").read_text() == "x"
    assert [p.name for p in store.root.iterdir()] == ["tmp"]
    assert list((store.root / "tmp").iterdir()) == []


async def test_commit_unmounts_and_cannot_repeat(store: LayerStore, base: Path) -> None:
    async with store.mounted(base, None) as ws:
        (ws.merged / "file").write_text("x")
        layer = await ws.commit(key(1), {})
        assert mounts_under(store.root) == []
        assert (layer.diff / "file").read_text() == "x"
        with pytest.raises(LayerError, match="committed"):
            await ws.commit(key(2), {})
    assert store.get(key(2)) is None


async def test_commit_refuses_bad_meta_and_own_ancestor(store: LayerStore,
                                                        base: Path) -> None:
    one = await step(store, base, None, 1, write("a", "a"))
    async with store.mounted(base, one.key) as ws:
        with pytest.raises(TypeError):
            await ws.commit(key(2), {"bad": object()})
        with pytest.raises(LayerError, match="own ancestor"):
            await ws.commit(one.key, {})
        # Still mounted and usable after both refusals.
        (ws.merged / "b").write_text("b")
        two = await ws.commit(key(2), {})
    assert (two.diff / "b").exists()


async def test_concurrent_commits_of_one_key_make_one_layer(store: LayerStore,
                                                            base: Path) -> None:
    both_mounted = asyncio.Barrier(2)

    async def build(who: str) -> Layer:
        async with store.mounted(base, None) as ws:
            (ws.merged / "file").write_text(who)
            await both_mounted.wait()
            return await ws.commit(key("same"), {"who": who})

    first, second = await asyncio.gather(build("a"), build("b"))
    assert first == second
    winner = first.meta["who"]
    assert (first.diff / "file").read_text() == winner
    assert [p.name for p in store.root.iterdir() if p.name != "tmp"] == [key("same")]
    assert list((store.root / "tmp").iterdir()) == []


# -- merged views -------------------------------------------------------------------


async def test_three_layer_chain_merged_view(store: LayerStore, base: Path) -> None:
    one = await step(store, base, None, 1, write("srv/app.py", "v1"))
    two = await step(store, base, one.key, 2, write("srv/lib.py", "lib"))
    three = await step(store, base, two.key, 3, write("srv/app.py", "v3"))
    async with store.mounted(base, three.key) as ws:
        assert (ws.merged / "srv" / "app.py").read_text() == "v3"
        assert (ws.merged / "srv" / "lib.py").read_text() == "lib"
        assert (ws.merged / "etc" / "hostname").read_text() == "sbx\n"
        assert (ws.merged / "link").read_text() == "sbx\n"
    async with store.mounted(base, two.key, read_only=True) as ws:
        assert (ws.merged / "srv" / "app.py").read_text() == "v1"
    # Each diff holds its own step only.
    assert (one.diff / "srv" / "app.py").read_text() == "v1"
    assert not (two.diff / "srv" / "app.py").exists()


async def test_deleted_file_stays_deleted_in_later_layers(store: LayerStore, base: Path,
                                                          tmp_path: Path) -> None:
    one = await step(store, base, None, 1, lambda m: (m / "etc" / "hostname").unlink())
    whiteout = os.lstat(one.diff / "etc" / "hostname")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    two = await step(store, base, one.key, 2, write("etc/other", "o"))
    async with store.mounted(base, two.key) as ws:
        assert not (ws.merged / "etc" / "hostname").exists()
        assert sorted(os.listdir(ws.merged / "etc")) == ["motd", "other"]
        # The symlink to it dangles now, as it would in Docker.
        assert not (ws.merged / "link").exists()
    await store.flatten(base, two.key, tmp_path / "flat")
    assert sorted(os.listdir(tmp_path / "flat" / "etc")) == ["motd", "other"]
    assert (base / "etc" / "hostname").exists()


async def test_replaced_directory_is_opaque_across_layers(store: LayerStore, base: Path,
                                                          tmp_path: Path) -> None:
    def replace(merged: Path) -> None:
        subprocess.run(["rm", "-rf", str(merged / "olddir")], check=True)
        (merged / "olddir").mkdir()
        (merged / "olddir" / "new").write_text("new")

    one = await step(store, base, None, 1, replace)
    assert os.getxattr(one.diff / "olddir", "trusted.overlay.opaque") == b"y"
    two = await step(store, base, one.key, 2, write("olddir/later", "later"))
    async with store.mounted(base, two.key) as ws:
        assert sorted(os.listdir(ws.merged / "olddir")) == ["later", "new"]
    await store.flatten(base, two.key, tmp_path / "flat")
    assert listing(tmp_path / "flat" / "olddir") == {"later", "new"}
    # Overlay's own markers stay in the diffs, never in a flattened tree.
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "flat" / "olddir")


async def test_merged_root_keeps_the_attributes_below(store: LayerStore, base: Path) -> None:
    os.chmod(base, 0o751)
    os.utime(base, ns=(5_000_000_000, 5_000_000_000))
    async with store.mounted(base, None) as ws:
        st = os.stat(ws.merged)
        assert stat.S_IMODE(st.st_mode) == 0o751
        assert st.st_mtime_ns == 5_000_000_000
        (ws.merged / "x").write_text("x")
        os.chmod(ws.merged, 0o700)
        one = await ws.commit(key(1), {})
    async with store.mounted(base, one.key) as ws:
        assert stat.S_IMODE(os.stat(ws.merged).st_mode) == 0o700


async def test_read_only_mount_refuses_writes(store: LayerStore, base: Path) -> None:
    one = await step(store, base, None, 1, write("a", "a"))
    for parent in (None, one.key):
        async with store.mounted(base, parent, read_only=True) as ws:
            assert (ws.merged / "etc" / "hostname").read_text() == "sbx\n"
            with pytest.raises(OSError) as info:
                (ws.merged / "new").write_text("x")
            assert info.value.errno == errno.EROFS
            with pytest.raises(OSError) as info:
                (ws.merged / "etc" / "hostname").unlink()
            assert info.value.errno == errno.EROFS
            with pytest.raises(LayerError, match="read-only"):
                await ws.commit(key(2), {})
    assert (base / "etc" / "hostname").exists()
    assert store.get(key(2)) is None


async def test_mounting_on_a_missing_parent_or_base_fails_cleanly(store: LayerStore,
                                                                  base: Path,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="no layer"):
        async with store.mounted(base, key("missing")):
            pytest.fail("mounted on a missing layer")
    with pytest.raises(LayerError, match="not a directory"):
        async with store.mounted(tmp_path / "nowhere", None):
            pytest.fail("mounted a missing base")
    fake_layer(store.root, 2, key("gone"), {})
    with pytest.raises(LayerError, match="ancestor"):
        async with store.mounted(base, key(2)):
            pytest.fail("mounted a broken chain")
    assert not (store.root / "tmp").exists() or list((store.root / "tmp").iterdir()) == []


# -- cleanup on errors --------------------------------------------------------------


async def test_exception_inside_mounted_unmounts_and_cleans(store: LayerStore,
                                                            base: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with store.mounted(base, None) as ws:
            (ws.merged / "file").write_text("x")
            workspace = ws.merged.parent
            assert mounts_under(store.root) == [str(ws.merged)]
            raise RuntimeError("boom")
    assert mounts_under(store.root) == []
    assert not workspace.exists()
    assert list((store.root / "tmp").iterdir()) == []


async def test_cancelled_task_unmounts_and_cleans(store: LayerStore, base: Path) -> None:
    inside = asyncio.Event()
    seen: list[Path] = []

    async def build() -> None:
        async with store.mounted(base, None) as ws:
            seen.append(ws.merged.parent)
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(build())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert mounts_under(store.root) == []
    assert not seen[0].exists()


async def test_busy_mount_is_detached_lazily(store: LayerStore, base: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sbx.templates_build.layers")
    with pytest.raises(RuntimeError, match="boom"):
        async with store.mounted(base, None) as ws:
            # Open across the exit: the plain unmount finds the mount busy.
            held = open(ws.merged / "etc" / "hostname")  # noqa: SIM115
            raise RuntimeError("boom")
    held.close()
    assert mounts_under(store.root) == []
    assert list((store.root / "tmp").iterdir()) == []
    assert "lazily" in caplog.text



async def test_commit_of_a_busy_mount_is_refused(store: LayerStore, base: Path) -> None:
    async with store.mounted(base, None) as ws:
        (ws.merged / "file").write_text("x")
        held = open(ws.merged / "file")  # noqa: SIM115
        try:
            # Sealed while something can still write through the mount, the
            # layer could change later: no layer rather than that.
            with pytest.raises(LayerError, match="busy"):
                await ws.commit(key(1), {})
        finally:
            held.close()
    assert store.get(key(1)) is None
    assert mounts_under(store.root) == []
    assert list((store.root / "tmp").iterdir()) == []


# -- flatten ------------------------------------------------------------------------


async def test_flatten_of_the_base_is_an_equal_tree(store: LayerStore, base: Path,
                                                    tmp_path: Path) -> None:
    dest = tmp_path / "flat"
    await store.flatten(base, None, dest)
    assert snapshot(dest) == snapshot(base)
    assert hardlink_groups(dest) == {frozenset({"hard1", "hard2"})}
    assert os.getxattr(dest / "xattr", "user.x") == b"42"
    owned = os.stat(dest / "home" / "user" / "owned")
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1000, 1000, 0o640)
    assert os.readlink(dest / "link") == "etc/hostname"
    assert os.stat(dest / "dev" / "null").st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(os.stat(dest / "sticky").st_mode) == 0o1777
    assert os.stat(dest / "etc" / "motd").st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "flat", "layers"]
    assert mounts_under(store.root) == []


async def test_flatten_of_a_chain_equals_its_merged_view(store: LayerStore, base: Path,
                                                         tmp_path: Path) -> None:
    def first(merged: Path) -> None:
        (merged / "opt" / "app").mkdir(parents=True)
        (merged / "opt" / "app" / "main").write_text("main")
        os.link(merged / "opt" / "app" / "main", merged / "opt" / "app" / "alias")
        os.setxattr(merged / "opt" / "app" / "main", "user.y", b"from a layer")
        (merged / "etc" / "motd").write_text("changed\n")
        os.chown(merged / "opt" / "app", 1000, 1000)

    def second(merged: Path) -> None:
        (merged / "bin" / "tool").unlink()
        (merged / "opt" / "app" / "run").symlink_to("main")
        os.mknod(merged / "dev" / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))

    one = await step(store, base, None, 1, first)
    two = await step(store, base, one.key, 2, second)
    dest = tmp_path / "flat"
    await store.flatten(base, two.key, dest)
    async with store.mounted(base, two.key, read_only=True) as ws:
        assert snapshot(dest) == snapshot(ws.merged)
    assert hardlink_groups(dest) == {frozenset({"hard1", "hard2"}),
                                     frozenset({"opt/app/main", "opt/app/alias"})}
    assert os.getxattr(dest / "opt" / "app" / "main", "user.y") == b"from a layer"
    assert os.stat(dest / "opt" / "app").st_uid == 1000
    assert not (dest / "bin" / "tool").exists()
    assert (dest / "etc" / "motd").read_text() == "changed\n"
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            assert not any(x.startswith("trusted.overlay.")
                           for x in os.listxattr(path, follow_symlinks=False)), path
            st = os.lstat(path)
            assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0), f"whiteout {path}"


async def test_flatten_refuses_an_existing_dest(store: LayerStore, base: Path,
                                                tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(LayerError, match="exists"):
        await store.flatten(base, None, tmp_path / "taken")
    (tmp_path / "alink").symlink_to("nowhere")
    with pytest.raises(LayerError, match="exists"):
        await store.flatten(base, None, tmp_path / "alink")
    with pytest.raises(LayerError, match="not a directory"):
        await store.flatten(base, None, tmp_path / "no" / "such")
    with pytest.raises(LayerError, match="no layer"):
        await store.flatten(base, key("missing"), tmp_path / "flat")
    # Neither dest nor a dest.tmp-* was made.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "layers") == [
        "alink", "base", "taken"]
    assert os.listdir(tmp_path / "taken") == []


# -- recovery -----------------------------------------------------------------------


async def test_recover_after_a_crash(store: LayerStore, base: Path) -> None:
    kept = await step(store, base, None, "kept", write("kept", "k"))
    tmp = store.root / "tmp"
    # A workspace still mounted, as a killed server leaves it.
    crashed = tmp / "ws-crashed"
    for d in ("layer/diff", "w", "m"):
        (crashed / d).mkdir(parents=True)
    await run("mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={kept.diff}:{base},upperdir={crashed}/layer/diff,workdir={crashed}/w",
              str(crashed / "m"))
    (crashed / "m" / "written").write_text("half a step")
    # A staged layer complete but not yet renamed, and a removal cut short.
    staged = tmp / "ws-staged" / "layer"
    (staged / "diff").mkdir(parents=True)
    (staged / "meta.json").write_text(json.dumps({"key": key("staged"), "parent": None,
                                                  "size": 0, "meta": {}}))
    (tmp / "rm-0123").mkdir()
    (tmp / "rm-0123" / "left").write_text("x")
    # A key directory without meta.json (not made by the store).
    (store.root / key("half") / "diff").mkdir(parents=True)
    (store.root / key("half") / "diff" / "file").write_text("x")
    assert mounts_under(store.root) == [str(crashed / "m")]

    fresh = LayerStore(store.root)
    await fresh.recover()
    assert mounts_under(store.root) == []
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in store.root.iterdir()) == sorted([kept.key, "tmp"])
    assert fresh.get(kept.key) == kept
    assert fresh.get(key("staged")) is None
    assert fresh.get(key("half")) is None
    # The lowers of the stale mount are untouched.
    assert (base / "etc" / "hostname").read_text() == "sbx\n"
    assert listing(kept.diff) == {"kept"}


async def test_recover_of_a_new_or_clean_store(tmp_path: Path, base: Path) -> None:
    store = LayerStore(tmp_path / "new" / "layers")
    await store.recover()
    assert list(store.root.iterdir()) == [store.root / "tmp"]
    one = await step(store, base, None, 1, write("a", "a"))
    await store.recover()
    assert store.get(one.key) == one


# -- remove and prune ---------------------------------------------------------------


async def test_remove_refuses_a_parent_then_removes_leaf_first(store: LayerStore,
                                                               base: Path) -> None:
    one = await step(store, base, None, 1, write("a", "a"))
    two = await step(store, base, one.key, 2, write("b", "b"))
    with pytest.raises(LayerError, match="parent of 1 layer"):
        await store.remove(one.key)
    assert store.get(one.key) == one
    await store.remove(two.key)
    assert store.get(two.key) is None
    await store.remove(one.key)
    assert store.get(one.key) is None
    assert sorted(p.name for p in store.root.iterdir()) == ["tmp"]
    assert list((store.root / "tmp").iterdir()) == []
    with pytest.raises(LayerError, match="no layer"):
        await store.remove(one.key)


async def test_remove_refuses_a_layer_in_use(store: LayerStore, base: Path) -> None:
    one = await step(store, base, None, 1, write("a", "a"))
    async with store.mounted(base, one.key, read_only=True) as ws:
        with pytest.raises(LayerError, match="in use"):
            await store.remove(one.key)
        assert (ws.merged / "a").read_text() == "a"
    await store.remove(one.key)
    assert store.get(one.key) is None


async def test_prune_removes_least_recently_used_respecting_keep(store: LayerStore,
                                                                 base: Path) -> None:
    payload = "x" * 100_000
    a = await step(store, base, None, "a", write("a", payload))
    b = await step(store, base, a.key, "b", write("b", payload))
    c = await step(store, base, a.key, "c", write("c", payload))
    d = await step(store, base, None, "d", write("d", payload))
    for layer in (a, c, d, b):  # b most recent, a (a parent) least
        store.get(layer.key)
    total = store.usage()
    assert total == a.size + b.size + c.size + d.size

    # Room for three: the least recently used leaf goes; a is older but a parent.
    removed = await store.prune(set(), total - 1)
    assert removed == [c.key]
    # Keeping b keeps a (its parent); d is the only candidate.
    removed = await store.prune({b.key}, 0)
    assert removed == [d.key]
    assert store.get(a.key) == a and store.get(b.key) == b
    assert store.usage() == a.size + b.size
    # Nothing kept: leaves first, then their parent.
    assert await store.prune(set(), 0) == [b.key, a.key]
    assert store.usage() == 0


async def test_prune_stops_within_budget_and_skips_mounted(store: LayerStore,
                                                           base: Path) -> None:
    a = await step(store, base, None, "a", write("a", "x" * 50_000))
    b = await step(store, base, None, "b", write("b", "x" * 50_000))
    store.get(a.key)  # a used after b
    assert await store.prune(set(), store.usage()) == []
    async with store.mounted(base, b.key, read_only=True):
        assert await store.prune(set(), store.usage() - 1) == [a.key]
        assert await store.prune(set(), 0) == []  # b is mounted
    assert store.get(b.key) == b
    assert await store.prune(set(), 0) == [b.key]


# -- depth --------------------------------------------------------------------------


async def test_64_layer_chain_built_step_by_step(store: LayerStore, base: Path) -> None:
    parent: str | None = None
    for i in range(64):
        def change(merged: Path, i: int = i) -> None:
            (merged / "steps").mkdir(exist_ok=True)
            (merged / "steps" / str(i)).write_text(str(i))
            if i:
                (merged / "steps" / str(i - 1)).unlink()
        parent = (await step(store, base, parent, i, change)).key
    assert parent is not None
    assert len(store.chain(parent)) == 64
    async with store.mounted(base, parent) as ws:
        assert os.listdir(ws.merged / "steps") == ["63"]
        assert (ws.merged / "etc" / "hostname").read_text() == "sbx\n"


async def test_deepest_chain_mounts_and_one_more_is_refused(store: LayerStore,
                                                            base: Path) -> None:
    parent: str | None = None
    for i in range(MAX_LAYERS + 1):
        parent = fake_layer(store.root, i, parent, {f"f{i}": str(i)})
    deepest = key(MAX_LAYERS - 1)
    async with store.mounted(base, deepest) as ws:
        assert (ws.merged / "f0").read_text() == "0"
        assert (ws.merged / f"f{MAX_LAYERS - 1}").exists()
        assert not (ws.merged / f"f{MAX_LAYERS}").exists()
        (ws.merged / "top").write_text("top")
        await ws.commit(key("top"), {})
    async with store.mounted(base, deepest, read_only=True) as ws:
        assert len(os.listdir(ws.merged)) == MAX_LAYERS + len(os.listdir(base))
    with pytest.raises(LayerError, match=f"more than {MAX_LAYERS} filesystem layers"):
        async with store.mounted(base, key(MAX_LAYERS)):
            pytest.fail("mounted past the limit")
    with pytest.raises(LayerError, match=f"more than {MAX_LAYERS} filesystem layers"):
        async with store.mounted(base, key("top")):
            pytest.fail("mounted past the limit")
    assert list((store.root / "tmp").iterdir()) == []


async def test_cancellation_at_any_point_leaves_nothing_behind(store: LayerStore,
                                                               base: Path) -> None:
    async def build(n: int) -> None:
        async with store.mounted(base, None) as ws:
            (ws.merged / "file").write_text("x")
            await ws.commit(key(n), {})

    for n, delay in enumerate([0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.03, 0.06]):
        task = asyncio.create_task(build(n))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert mounts_under(store.root) == [], delay
        assert not (store.root / "tmp").exists() or not os.listdir(store.root / "tmp"), delay
        # Either no layer or a complete one, whatever the moment.
        layer = store.get(key(n))
        assert layer is None or (layer.diff / "file").read_text() == "x"
        if store.root.exists():
            for name in os.listdir(store.root):
                assert name == "tmp" or store.get(name) is not None, (delay, name)
