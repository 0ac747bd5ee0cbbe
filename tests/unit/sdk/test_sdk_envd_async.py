"""The async client against a real envd subprocess."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from sbx.sdk import (
    AsyncSandbox,
    AuthenticationError,
    CommandExitError,
    FileType,
    NotFoundError,
    SbxTimeoutError,
)
from tests.unit.sdk.conftest import LocalEnvd


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_run(async_sbx: AsyncSandbox, workdir: Path) -> None:
    result = await async_sbx.commands.run("echo $FOO; pwd; echo e >&2; exit 2",
                                          envs={"FOO": "bar"}, cwd=str(workdir))
    assert (result.stdout, result.stderr, result.exit_code) == (f"bar\n{workdir}\n", "e\n", 2)
    with pytest.raises(CommandExitError):
        await async_sbx.commands.run("exit 1", check=True)


async def test_sync_and_async_callbacks_stream(async_sbx: AsyncSandbox) -> None:
    out: list[str] = []
    err: list[str] = []

    async def on_stderr(text: str) -> None:
        err.append(text)

    await async_sbx.commands.run("echo a; echo b >&2", on_stdout=out.append, on_stderr=on_stderr)
    assert (out, err) == (["a\n"], ["b\n"])


async def test_concurrent_runs(async_sbx: AsyncSandbox) -> None:
    results = await asyncio.gather(*(async_sbx.commands.run(f"echo {i}") for i in range(10)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(10)]


async def test_timeout(async_sbx: AsyncSandbox) -> None:
    with pytest.raises(SbxTimeoutError):
        await async_sbx.commands.run("sleep 5", timeout=0.3)


async def test_background_stdin_kill(async_sbx: AsyncSandbox) -> None:
    seen: list[str] = []
    handle = await async_sbx.commands.run("read x; echo got:$x; sleep 30", background=True,
                                          on_stdout=seen.append)
    assert handle.pid in [p.pid for p in await async_sbx.commands.list()]
    await handle.send_stdin("hi\n")
    await wait_for(lambda: seen == ["got:hi\n"])
    assert await handle.kill() is True
    result = await handle.wait()
    assert result.exit_code != 0
    assert result.stdout == "got:hi\n"
    assert await async_sbx.commands.kill(handle.pid) is False


async def test_background_wait_can_be_cancelled_without_losing_output(
    async_sbx: AsyncSandbox,
) -> None:
    handle = await async_sbx.commands.run("sleep 0.5; echo late", background=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(handle.wait(), 0.05)
    assert (await handle.wait()).stdout == "late\n"


async def test_files(async_sbx: AsyncSandbox, workdir: Path) -> None:
    root = str(workdir)
    data = os.urandom(10 * 1024 * 1024)
    await async_sbx.files.write(f"{root}/big.bin", data)
    assert await async_sbx.files.read(f"{root}/big.bin", format="bytes") == data
    await async_sbx.files.write(f"{root}/t.txt", "text")
    assert await async_sbx.files.read(f"{root}/t.txt") == "text"
    assert await async_sbx.files.make_dir(f"{root}/d") is True
    assert await async_sbx.files.make_dir(f"{root}/d") is False
    names = sorted(e.name for e in await async_sbx.files.list(root))
    assert names == ["big.bin", "d", "t.txt"]
    moved = await async_sbx.files.rename(f"{root}/t.txt", f"{root}/d/u.txt")
    assert moved.path == f"{root}/d/u.txt"
    assert (await async_sbx.files.get_info(f"{root}/d")).type is FileType.DIR
    await async_sbx.files.remove(f"{root}/d")
    assert not await async_sbx.files.exists(f"{root}/d")
    with pytest.raises(NotFoundError):
        await async_sbx.files.read(f"{root}/d/u.txt")


async def test_pty(async_sbx: AsyncSandbox) -> None:
    output = bytearray()
    term = await async_sbx.pty.create(cols=90, rows=20, on_data=output.extend)
    try:
        await term.send_stdin(b"stty size\n")
        await wait_for(lambda: b"20 90" in output)
        await term.resize(cols=100, rows=40)
        await term.send_stdin(b"stty size; exit\n")
        await wait_for(lambda: b"40 100" in output)
        assert (await term.wait()).exit_code == 0
    finally:
        if not term.done:
            await term.kill()


async def test_bad_token(envd: LocalEnvd) -> None:
    async with AsyncSandbox._for_envd(envd.url, "nope") as bad:
        with pytest.raises(AuthenticationError):
            await bad.commands.run("true")
        with pytest.raises(AuthenticationError):
            await bad.files.exists("/")
