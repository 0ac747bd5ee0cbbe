"""Host commands: results, deadlines, and no polling delay on the way out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sbx.node import proc


async def test_output_and_exit_status() -> None:
    res = await proc.run("sh", "-c", "echo out; echo err >&2; exit 0")
    assert (res.code, res.stdout, res.stderr) == (0, "out\n", "err\n")
    with pytest.raises(proc.CommandError) as err:
        await proc.run("sh", "-c", "echo bad >&2; exit 3")
    assert err.value.code == 3 and "bad" in str(err.value)
    assert (await proc.run("sh", "-c", "exit 4", check=False)).code == 4
    assert (await proc.run("cat", input="fed")).stdout == "fed"


async def test_deadline_kills_the_command() -> None:
    t0 = time.monotonic()
    with pytest.raises(proc.CommandError, match=r"timed out after 0\.3s"):
        await proc.run("sleep", "30", timeout=0.3)
    assert time.monotonic() - t0 < 2


async def test_a_command_without_pipes_is_seen_to_end_at_once(tmp_path: Path) -> None:
    # Popen's timed wait polls with sleeps growing to 50 ms: a 230 ms
    # command was seen to end 34 ms late. Now the wait blocks.
    log = tmp_path / "out.log"
    took = []
    for _ in range(3):
        t0 = time.perf_counter()
        await proc.run("sh", "-c", "sleep 0.23; echo done", stdout_path=str(log), timeout=60)
        took.append(time.perf_counter() - t0)
    assert min(took) < 0.255, took
    assert log.read_text() == "done\n" * 3


async def test_stream_delivers_output_and_keeps_its_deadline() -> None:
    chunks: list[bytes] = []
    code = await proc.stream("sh", "-c", "echo one; echo two >&2; exit 5",
                             on_output=chunks.append, timeout=10)
    assert code == 5 and b"".join(chunks).split() == [b"one", b"two"]
    t0 = time.monotonic()
    assert await proc.stream("sleep", "30", on_output=chunks.append, timeout=0.3) == -9
    assert time.monotonic() - t0 < 2
