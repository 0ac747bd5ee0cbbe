"""filesystem.Filesystem over the raw Connect protocol."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import stat
from pathlib import Path

from sbx.envd import watch as envd_watch

from .envd_testlib import STREAM_HEADERS, AsyncFrames, Envd, Rpc, async_client, envelope

FS = "filesystem.Filesystem/"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


def error_code(rpc: Rpc, method: str, msg: dict[str, object]) -> tuple[int, str]:
    resp = rpc.unary(FS + method, msg)
    assert resp.status_code != 200, resp.text
    return resp.status_code, resp.json()["code"]


def test_stat_file_dir_symlink_and_missing(rpc: Rpc, workdir: Path) -> None:
    f = workdir / "a.txt"
    f.write_bytes(b"12345")
    f.chmod(0o640)
    entry = rpc.call(FS + "Stat", {"path": str(f)})["entry"]
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert entry["name"] == "a.txt"
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["path"] == str(f)
    assert entry["size"] == "5"  # int64 travels as a string
    assert entry["mode"] == 0o640
    assert entry["permissions"] == "-rw-r-----"
    assert entry["owner"] == me
    assert RFC3339.match(entry["modifiedTime"]), entry["modifiedTime"]
    assert "symlinkTarget" not in entry

    entry = rpc.call(FS + "Stat", {"path": str(workdir)})["entry"]
    assert entry["type"] == "FILE_TYPE_DIRECTORY"
    assert entry["permissions"].startswith("d")

    (workdir / "link").symlink_to(f)
    entry = rpc.call(FS + "Stat", {"path": str(workdir / "link")})["entry"]
    assert entry["isSymlink"] is True
    assert entry["symlinkTarget"] == str(f)
    assert entry["type"] == "FILE_TYPE_FILE"

    assert error_code(rpc, "Stat", {"path": str(workdir / "missing")}) == (404, "not_found")


def test_relative_paths_resolve_against_home(rpc: Rpc) -> None:
    home = os.path.normpath(pwd.getpwuid(os.geteuid()).pw_dir)
    for path in (".", "~", ""):
        assert rpc.call(FS + "Stat", {"path": path})["entry"]["path"] == home
    assert error_code(rpc, "Stat", {"path": "~otheruser/x"})[1] == "invalid_argument"


def test_list_dir_depth(rpc: Rpc, workdir: Path) -> None:
    (workdir / "b").mkdir()
    (workdir / "b" / "inner.txt").write_text("x")
    (workdir / "b" / "c").mkdir()
    (workdir / "b" / "c" / "deep.txt").write_text("x")
    (workdir / "a.txt").write_text("x")

    def names(depth: int) -> list[str]:
        entries = rpc.call(FS + "ListDir", {"path": str(workdir), "depth": depth})["entries"]
        return [os.path.relpath(e["path"], workdir) for e in entries]

    assert names(0) == names(1) == ["a.txt", "b"]
    assert names(2) == ["a.txt", "b", "b/c", "b/inner.txt"]
    assert names(5) == ["a.txt", "b", "b/c", "b/c/deep.txt", "b/inner.txt"]
    assert error_code(rpc, "ListDir", {"path": str(workdir / "a.txt")}) == (
        400,
        "invalid_argument",
    )
    assert error_code(rpc, "ListDir", {"path": str(workdir / "zz")}) == (404, "not_found")


def test_make_dir(rpc: Rpc, workdir: Path) -> None:
    target = workdir / "x" / "y" / "z"
    entry = rpc.call(FS + "MakeDir", {"path": str(target)})["entry"]
    assert entry["type"] == "FILE_TYPE_DIRECTORY"
    assert entry["path"] == str(target)
    assert target.is_dir()
    assert error_code(rpc, "MakeDir", {"path": str(target)}) == (409, "already_exists")
    (workdir / "file").write_text("x")
    assert error_code(rpc, "MakeDir", {"path": str(workdir / "file")})[1] == "invalid_argument"


def test_move(rpc: Rpc, workdir: Path) -> None:
    (workdir / "src.txt").write_text("payload")
    dest = workdir / "new" / "parent" / "dst.txt"
    entry = rpc.call(FS + "Move", {"source": str(workdir / "src.txt"), "destination": str(dest)})
    assert entry["entry"]["path"] == str(dest)
    assert entry["entry"]["size"] == "7"
    assert dest.read_text() == "payload"
    assert not (workdir / "src.txt").exists()
    missing = {"source": str(workdir / "gone"), "destination": str(workdir / "x")}
    assert error_code(rpc, "Move", missing) == (404, "not_found")


def test_remove(rpc: Rpc, workdir: Path) -> None:
    (workdir / "f").write_text("x")
    (workdir / "d" / "e").mkdir(parents=True)
    (workdir / "d" / "e" / "f").write_text("x")
    (workdir / "l").symlink_to(workdir / "d")
    rpc.call(FS + "Remove", {"path": str(workdir / "f")})
    rpc.call(FS + "Remove", {"path": str(workdir / "l")})
    assert (workdir / "d" / "e" / "f").exists()  # a link is removed, not followed
    rpc.call(FS + "Remove", {"path": str(workdir / "d")})
    assert sorted(os.listdir(workdir)) == []
    # Like E2B's envd, removing what is not there is not an error.
    rpc.call(FS + "Remove", {"path": str(workdir / "never")})


def test_snake_case_input_and_numbers_as_strings(rpc: Rpc, workdir: Path) -> None:
    (workdir / "d").mkdir()
    (workdir / "d" / "f").write_text("x")
    entries = rpc.call(FS + "ListDir", {"path": str(workdir), "depth": "2"})["entries"]
    assert len(entries) == 2
    resp = rpc.call(FS + "CreateWatcher", {"path": str(workdir), "include_entry": True})
    watcher_id = resp["watcherId"]
    rpc.call(FS + "RemoveWatcher", {"watcher_id": watcher_id})


async def test_watch_dir_stream(envd: Envd, workdir: Path) -> None:
    (workdir / "sub").mkdir()
    request = {"path": str(workdir), "recursive": True, "includeEntry": True}
    async with (
        async_client(envd) as client,
        client.stream(
            "POST", "/" + FS + "WatchDir", content=envelope(request), headers=STREAM_HEADERS
        ) as resp,
    ):
        frames = AsyncFrames(resp)
        assert await frames.next() == (0, {"start": {}})

        async def until(name: str, op: str) -> dict[str, object]:
            while True:
                flags, msg = await asyncio.wait_for(frames.next(), 5)
                assert flags == 0
                event = msg.get("filesystem")
                if event and (event["name"], event["type"]) == (name, op):
                    return dict(event)

        (workdir / "new.txt").write_text("hello")
        created = await until("new.txt", "EVENT_TYPE_CREATE")
        entry = created["entry"]
        assert isinstance(entry, dict) and entry["path"] == str(workdir / "new.txt")
        await until("new.txt", "EVENT_TYPE_WRITE")
        (workdir / "sub" / "deep.txt").write_text("x")
        await until("sub/deep.txt", "EVENT_TYPE_CREATE")
        (workdir / "new.txt").chmod(0o600)
        await until("new.txt", "EVENT_TYPE_CHMOD")
        (workdir / "new.txt").rename(workdir / "renamed.txt")
        await until("new.txt", "EVENT_TYPE_RENAME")
        await until("renamed.txt", "EVENT_TYPE_CREATE")
        (workdir / "renamed.txt").unlink()
        removed = await until("renamed.txt", "EVENT_TYPE_REMOVE")
        assert "entry" not in removed


def test_watch_dir_errors(rpc: Rpc, workdir: Path) -> None:
    (workdir / "f").write_text("x")
    result = rpc.stream(FS + "WatchDir", {"path": str(workdir / "nope")})
    assert result.end["error"]["code"] == "not_found"
    result = rpc.stream(FS + "WatchDir", {"path": str(workdir / "f")})
    assert result.end["error"]["code"] == "invalid_argument"


def test_polled_watcher(rpc: Rpc, workdir: Path) -> None:
    watcher_id = rpc.call(FS + "CreateWatcher", {"path": str(workdir)})["watcherId"]
    (workdir / "one").write_text("1")
    (workdir / "two").mkdir()
    events: list[tuple[str, str]] = []
    for _ in range(100):
        got = rpc.call(FS + "GetWatcherEvents", {"watcherId": watcher_id})["events"]
        events += [(e["name"], e["type"]) for e in got]
        if ("two", "EVENT_TYPE_CREATE") in events:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert ("one", "EVENT_TYPE_CREATE") in events
    assert ("two", "EVENT_TYPE_CREATE") in events
    # Events are handed out once.
    assert rpc.call(FS + "GetWatcherEvents", {"watcherId": watcher_id})["events"] == []
    rpc.call(FS + "RemoveWatcher", {"watcherId": watcher_id})
    assert error_code(rpc, "GetWatcherEvents", {"watcherId": watcher_id}) == (404, "not_found")
    assert error_code(rpc, "RemoveWatcher", {"watcherId": watcher_id}) == (404, "not_found")


async def test_polling_fallback_watcher(workdir: Path) -> None:
    (workdir / "keep").write_text("a")
    (workdir / "gone").write_text("a")
    seen: list[tuple[str, str]] = []
    watcher = envd_watch.watch(str(workdir), True, lambda n, op: seen.append((n, op)), True)
    assert isinstance(watcher, envd_watch.PollingWatcher)
    try:
        (workdir / "new").write_text("b")
        (workdir / "keep").write_text("changed")
        (workdir / "gone").unlink()
        os.chmod(workdir / "new", stat.S_IRUSR)
        watcher.poll()
    finally:
        watcher.close()
    assert ("new", "EVENT_TYPE_CREATE") in seen
    assert ("keep", "EVENT_TYPE_WRITE") in seen
    assert ("gone", "EVENT_TYPE_REMOVE") in seen


def test_mount_type_detection() -> None:
    assert envd_watch.mount_fstype("/proc/self") == "proc"
    assert not envd_watch.is_network_mount("/proc")
