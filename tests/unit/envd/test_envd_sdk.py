"""envd driven by the real e2b SDK's own envd-level clients, unchanged."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    NotFoundException,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import CommandExitException, PtySize
from e2b.sandbox.filesystem.filesystem import FileType, WriteEntry
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from .envd_testlib import TOKEN, Envd, Sdk


def test_commands_run(sdk: Sdk) -> None:
    result = sdk.commands.run("echo hello; echo oops >&2")
    assert result.stdout == "hello\n"
    assert result.stderr == "oops\n"
    assert result.exit_code == 0
    assert result.error is None


def test_commands_run_failure_envs_cwd_callbacks(sdk: Sdk, workdir: Path) -> None:
    with pytest.raises(CommandExitException) as info:
        sdk.commands.run("echo partial; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stdout == "partial\n"
    assert info.value.error == "exit status 3"

    chunks: list[str] = []
    result = sdk.commands.run(
        "echo $GREETING; pwd",
        envs={"GREETING": "hi there"},
        cwd=str(workdir),
        on_stdout=chunks.append,
    )
    assert result.stdout == f"hi there\n{workdir}\n"
    assert "".join(chunks) == result.stdout


def test_background_command_list_connect_stdin_kill(sdk: Sdk) -> None:
    handle = sdk.commands.run("cat", background=True, stdin=True)
    assert handle.pid in [p.pid for p in sdk.commands.list()]
    listed = next(p for p in sdk.commands.list() if p.pid == handle.pid)
    assert listed.cmd == "/bin/bash" and listed.args == ["-l", "-c", "cat"]

    attached = sdk.commands.connect(handle.pid)
    sdk.commands.send_stdin(handle.pid, "line one\n")
    sdk.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "line one\n"
    assert attached.wait().stdout == "line one\n"

    sleeper = sdk.commands.run("sleep 30", background=True)
    assert sdk.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as info:
        sleeper.wait()
    assert info.value.exit_code == -1
    assert sdk.commands.kill(sleeper.pid) is False
    with pytest.raises(NotFoundException):
        sdk.commands.connect(999999)


def test_stream_input(sdk: Sdk) -> None:
    handle = sdk.commands.run("cat", background=True, stdin=True)
    sdk.commands.stream_input(handle.pid, ["a", b"b", "c\n"])
    sdk.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "abc\n"


def test_command_timeout(sdk: Sdk) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sdk.commands.run("sleep 30", timeout=0.5)
    assert time.monotonic() - started < 10


def test_unknown_user(sdk: Sdk) -> None:
    with pytest.raises(AuthenticationException):
        sdk.commands.run("true", user="no-such-user-xyz")


def test_files_write_read_list_info(sdk: Sdk, workdir: Path) -> None:
    path = str(workdir / "dir" / "hello.txt")
    info = sdk.files.write(path, "hello world")
    assert info.path == path and info.name == "hello.txt" and info.type == FileType.FILE
    assert sdk.files.read(path) == "hello world"
    assert sdk.files.read(path, format="bytes") == bytearray(b"hello world")
    with sdk.files.read(path, format="stream") as stream:
        assert b"".join(stream) == b"hello world"

    entry = sdk.files.get_info(path)
    assert entry.type == FileType.FILE
    assert entry.size == 11
    assert entry.permissions == "-rw-r--r--"
    listing = sdk.files.list(str(workdir), depth=2)
    assert [(e.name, e.type) for e in listing] == [
        ("dir", FileType.DIR),
        ("hello.txt", FileType.FILE),
    ]
    assert sdk.files.exists(path) is True
    assert sdk.files.exists(str(workdir / "nope")) is False
    with pytest.raises(FileNotFoundException):
        sdk.files.read(str(workdir / "nope"))
    with pytest.raises(FileNotFoundException):
        sdk.files.get_info(str(workdir / "nope"))


def test_files_write_many_and_streams(sdk: Sdk, workdir: Path) -> None:
    entries: list[WriteEntry] = [
        {"path": str(workdir / "a.txt"), "data": "A"},
        {"path": str(workdir / "b" / "b.bin"), "data": b"\x00\x01"},
    ]
    written = sdk.files.write_files(entries)
    assert [w.path for w in written] == [e["path"] for e in entries]
    assert (workdir / "b" / "b.bin").read_bytes() == b"\x00\x01"
    big = os.urandom(10 * 1024 * 1024)
    sdk.files.write(str(workdir / "big.bin"), io.BytesIO(big))
    assert bytes(sdk.files.read(str(workdir / "big.bin"), format="bytes")) == big
    sdk.files.write(str(workdir / "gz.txt"), "zip " * 10000, gzip=True)
    assert sdk.files.read(str(workdir / "gz.txt"), gzip=True) == "zip " * 10000


def test_files_make_dir_rename_remove(sdk: Sdk, workdir: Path) -> None:
    target = str(workdir / "x" / "y")
    assert sdk.files.make_dir(target) is True
    assert sdk.files.make_dir(target) is False
    sdk.files.write(target + "/f.txt", "content")
    moved = sdk.files.rename(target + "/f.txt", str(workdir / "moved.txt"))
    assert moved.path == str(workdir / "moved.txt")
    assert (workdir / "moved.txt").read_text() == "content"
    sdk.files.remove(str(workdir / "x"))
    assert sdk.files.exists(str(workdir / "x")) is False
    with pytest.raises(FileNotFoundException):
        sdk.files.rename(str(workdir / "gone"), str(workdir / "elsewhere"))


def test_files_watch_dir(sdk: Sdk, workdir: Path) -> None:
    handle = sdk.files.watch_dir(str(workdir), recursive=True, include_entry=True)
    try:
        (workdir / "watched.txt").write_text("x")
        events = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            events += handle.get_new_events()
            if any(e.type == FilesystemEventType.CREATE for e in events):
                break
            time.sleep(0.05)
        created = [e for e in events if e.type == FilesystemEventType.CREATE]
        assert created and created[0].name == "watched.txt"
        assert created[0].entry is not None
        assert created[0].entry.path == str(workdir / "watched.txt")
    finally:
        handle.stop()


def test_pty(sdk: Sdk) -> None:
    handle = sdk.pty.create(PtySize(rows=24, cols=80), envs={"PS1": "$ "})
    sdk.pty.resize(handle.pid, PtySize(rows=50, cols=132))
    sdk.pty.send_stdin(handle.pid, b"stty size; echo marker-$((6*7)); exit\n")
    output: list[bytes] = []
    result = handle.wait(on_pty=output.append)
    text = b"".join(output)
    assert result.exit_code == 0
    assert b"50 132" in text
    assert b"marker-42" in text

    other = sdk.pty.create(PtySize(rows=24, cols=80))
    assert sdk.pty.kill(other.pid) is True
    with pytest.raises(CommandExitException):
        other.wait()


async def test_async_sdk(envd: Envd, workdir: Path) -> None:
    from e2b.api.client_async import get_envd_api
    from e2b.connection_config import ConnectionConfig
    from e2b.sandbox_async.commands.command import Commands
    from e2b.sandbox_async.filesystem.filesystem import Filesystem
    from packaging.version import Version

    config = ConnectionConfig(extra_sandbox_headers={"X-Access-Token": TOKEN})
    version = Version("0.6.4")
    api = get_envd_api(config, envd.url)
    commands = Commands(envd.url, config, version, api)
    files = Filesystem(envd.url, version, config, api)
    results = await asyncio.gather(*(commands.run(f"echo job-{i}") for i in range(5)))
    assert [r.stdout for r in results] == [f"job-{i}\n" for i in range(5)]
    path = str(workdir / "async.txt")
    await files.write(path, "from async")
    assert await files.read(path) == "from async"
    assert [e.name for e in await files.list(str(workdir))] == ["async.txt"]
