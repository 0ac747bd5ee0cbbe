"""process.Process over the raw Connect protocol."""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import time
from collections.abc import AsyncIterator
from pathlib import Path

from .envd_testlib import (
    EXTRA_SECRET,
    STREAM_HEADERS,
    TOKEN,
    AsyncFrames,
    Envd,
    Rpc,
    async_client,
    b64,
    envelope,
    parse_frames,
    proc_list,
    unb64,
    wait_until,
)

START = "process.Process/Start"


def sh(script: str, **extra: object) -> dict[str, object]:
    return {"process": {"cmd": "/bin/sh", "args": ["-c", script]}, **extra}


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def test_start_streams_stdout_stderr_and_exit(rpc: Rpc) -> None:
    result = rpc.stream(START, sh("echo out; echo err >&2; echo more"))
    assert result.status == 200
    assert result.pid > 0
    assert result.output("stdout") == b"out\nmore\n"
    assert result.output("stderr") == b"err\n"
    assert result.exit == {"exitCode": 0, "exited": True, "status": "exit status 0"}
    assert result.end == {}


def test_nonzero_exit(rpc: Rpc) -> None:
    result = rpc.stream(START, sh("exit 7"))
    assert result.exit == {
        "exitCode": 7,
        "exited": True,
        "status": "exit status 7",
        "error": "exit status 7",
    }


def test_exec_failure_is_invalid_argument(rpc: Rpc) -> None:
    result = rpc.stream(START, {"process": {"cmd": "/definitely/not/here"}})
    assert result.events == []
    assert result.end["error"]["code"] == "invalid_argument"


def test_env_vars_and_no_secret_leak(rpc: Rpc) -> None:
    script = "echo A=$A; echo HOME=$HOME; echo USER=$USER; echo M=$ENVD_TEST_MARKER; env"
    request = {"process": {"cmd": "/bin/sh", "args": ["-c", script], "envs": {"A": "b c"}}}
    result = rpc.stream(START, request)
    out = result.output().decode()
    me = pwd.getpwuid(os.geteuid())
    assert "A=b c\n" in out
    assert f"HOME={me.pw_dir}\n" in out
    assert f"USER={me.pw_name}\n" in out
    # envd's own environment is inherited...
    assert "M=inherited\n" in out
    # ...except every SBX_ENVD_* variable, the access token among them.
    assert "SBX_ENVD_" not in out
    assert TOKEN not in out
    assert EXTRA_SECRET[1] not in out


def test_cwd_absolute_default_and_missing(rpc: Rpc, workdir: Path) -> None:
    result = rpc.stream(START, {"process": {"cmd": "/bin/pwd", "cwd": str(workdir)}})
    assert result.output().decode().strip() == str(workdir)
    home = pwd.getpwuid(os.geteuid()).pw_dir
    result = rpc.stream(START, {"process": {"cmd": "/bin/pwd"}})
    assert result.output().decode().strip() == os.path.realpath(home)
    result = rpc.stream(START, {"process": {"cmd": "/bin/pwd", "cwd": str(workdir / "nope")}})
    assert result.end["error"]["code"] == "invalid_argument"
    assert "does not exist" in result.end["error"]["message"]


def test_children_get_default_sigpipe(rpc: Rpc) -> None:
    # Python ignores SIGPIPE; a child inheriting that would spin on EPIPE.
    result = rpc.stream(START, sh("yes | head -n 2"))
    assert result.output() == b"y\ny\n"
    assert result.output("stderr") == b""


def test_stdin_disabled_reads_eof(rpc: Rpc) -> None:
    start = time.monotonic()
    result = rpc.stream(START, {"process": {"cmd": "/bin/cat"}, "stdin": False})
    assert result.exit["exitCode"] == 0
    assert time.monotonic() - start < 5


async def test_background_process_connect_input_list_close(envd: Envd, rpc: Rpc) -> None:
    async with async_client(envd) as client:
        # No "stdin" field: enabled, as for clients that predate the flag.
        request = {"process": {"cmd": "/bin/cat"}, "tag": "my-cat"}
        async with client.stream(
            "POST", "/" + START, content=envelope(request), headers=STREAM_HEADERS
        ) as start_resp:
            frames = AsyncFrames(start_resp)
            pid = (await frames.event())["start"]["pid"]
            listed = proc_list(rpc)
            assert listed[pid]["tag"] == "my-cat"
            assert listed[pid]["config"]["cmd"] == "/bin/cat"

            # A second subscriber attached by tag sees the same output.
            async with client.stream(
                "POST",
                "/process.Process/Connect",
                content=envelope({"process": {"tag": "my-cat"}}),
                headers=STREAM_HEADERS,
            ) as conn_resp:
                attached = AsyncFrames(conn_resp)
                assert (await attached.event())["start"]["pid"] == pid
                rpc.call(
                    "process.Process/SendInput",
                    {"process": {"pid": pid}, "input": {"stdin": b64(b"hello\n")}},
                )
                for stream in (frames, attached):
                    event = await stream.event()
                    assert unb64(event["data"]["stdout"]) == b"hello\n"
                rpc.call("process.Process/CloseStdin", {"process": {"pid": pid}})
                for stream in (frames, attached):
                    assert (await stream.event())["end"]["exitCode"] == 0
                    flags, last = await stream.next()
                    assert flags == 2 and last == {}
    assert wait_until(lambda: pid not in proc_list(rpc))


async def test_send_signal_kills(envd: Envd, rpc: Rpc) -> None:
    async with (
        async_client(envd) as client,
        client.stream(
            "POST", "/" + START, content=envelope(sh("sleep 30")), headers=STREAM_HEADERS
        ) as resp,
    ):
        frames = AsyncFrames(resp)
        pid = (await frames.event())["start"]["pid"]
        rpc.call(
            "process.Process/SendSignal",
            {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"},
        )
        end = (await frames.event())["end"]
        assert end == {
            "exitCode": -1,
            "exited": False,
            "status": "signal: killed",
            "error": "signal: killed",
        }


def test_unknown_process_is_not_found(rpc: Rpc) -> None:
    for method, msg in (
        ("process.Process/SendInput", {"process": {"pid": 999999}, "input": {"stdin": ""}}),
        ("process.Process/SendSignal", {"process": {"pid": 999999}, "signal": 15}),
        ("process.Process/CloseStdin", {"process": {"tag": "no-such-tag"}}),
        ("process.Process/Update", {"process": {"pid": 999999}}),
    ):
        resp = rpc.unary(method, msg)
        assert resp.status_code == 404, method
        assert resp.json()["code"] == "not_found"
    result = rpc.stream("process.Process/Connect", {"process": {"pid": 999999}})
    assert result.end["error"]["code"] == "not_found"


def test_keepalive_events(rpc: Rpc) -> None:
    result = rpc.stream(START, sh("sleep 0.5"), headers={"Keepalive-Ping-Interval": "0.1"})
    kinds = [next(iter(e["event"])) for e in result.events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("keepalive") >= 2


def test_timeout_ends_stream_and_kills_process(rpc: Rpc) -> None:
    started = time.monotonic()
    result = rpc.stream(START, sh("sleep 30"), headers={"Connect-Timeout-Ms": "300"})
    assert time.monotonic() - started < 5
    assert result.end["error"]["code"] == "deadline_exceeded"
    assert wait_until(lambda: result.pid not in proc_list(rpc))


def test_runs_as_requested_user(rpc: Rpc) -> None:
    nobody = pwd.getpwnam("nobody")
    script = "id -u; id -g; echo $HOME $USER $LOGNAME"
    result = rpc.stream(
        START,
        {"process": {"cmd": "/bin/sh", "args": ["-c", script], "cwd": "/tmp"}},
        headers=basic("nobody"),
    )
    if os.geteuid() == 0:
        assert result.output().decode().split("\n")[:3] == [
            str(nobody.pw_uid),
            str(nobody.pw_gid),
            f"{nobody.pw_dir} nobody nobody",
        ]
    else:
        assert result.end["error"]["code"] == "permission_denied"


def test_unknown_user_is_unauthenticated(rpc: Rpc) -> None:
    result = rpc.stream(START, sh("true"), headers=basic("no-such-user-xyz"))
    assert result.end["error"]["code"] == "unauthenticated"
    resp = rpc.unary("filesystem.Filesystem/Stat", {"path": "/"}, headers=basic("no-such-user-xyz"))
    assert resp.status_code == 401
    assert resp.json()["code"] == "unauthenticated"


async def test_pty_size_input_resize(envd: Envd, rpc: Rpc) -> None:
    script = (
        "stty size; echo term=$TERM; exec 3</dev/tty && echo ctty-ok; "
        "read line; echo got:$line; stty size"
    )
    request = {
        "process": {"cmd": "/bin/sh", "args": ["-c", script]},
        "pty": {"size": {"rows": 30, "cols": 100}},
    }
    async with (
        async_client(envd) as client,
        client.stream(
            "POST", "/" + START, content=envelope(request), headers=STREAM_HEADERS
        ) as resp,
    ):
        frames = AsyncFrames(resp)
        pid = (await frames.event())["start"]["pid"]
        out = b""
        while b"ctty-ok" not in out:
            event = await frames.event()
            assert "stdout" not in event.get("data", {})
            out += unb64(event["data"]["pty"])
        assert b"30 100" in out
        assert b"term=xterm-256color" in out
        # stdin-style input and CloseStdin make no sense for a terminal.
        for method, msg in (
            ("process.Process/CloseStdin", {"process": {"pid": pid}}),
            ("process.Process/SendInput", {"process": {"pid": pid}, "input": {"stdin": "eA=="}}),
        ):
            resp = rpc.unary(method, msg)
            assert resp.status_code == 400
            assert resp.json()["code"] == "failed_precondition"
        rpc.call(
            "process.Process/Update",
            {"process": {"pid": pid}, "pty": {"size": {"rows": 40, "cols": 120}}},
        )
        rpc.call(
            "process.Process/SendInput", {"process": {"pid": pid}, "input": {"pty": b64(b"hi\n")}}
        )
        while True:
            event = await frames.event()
            if "end" in event:
                break
            out += unb64(event["data"]["pty"])
        assert event["end"]["exitCode"] == 0
        assert b"got:hi" in out
        assert b"40 120" in out


def _children(ppid: int) -> dict[int, tuple[str, str]]:
    """pid -> (state, cmdline) of the processes whose parent is ``ppid``."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == ppid:
            out[int(entry)] = (fields[0], cmdline.decode(errors="replace").strip())
    return out


def test_orphans_are_reaped(envd: Envd, rpc: Rpc) -> None:
    result = rpc.stream(
        START, {"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 0.47 & exit 0"]}}
    )
    assert result.exit["exitCode"] == 0
    # The orphaned sleep was re-parented to envd (it is a subreaper)...
    def orphans_now() -> list[int]:
        return [pid for pid, (_, cmd) in _children(envd.pid).items() if cmd == "sleep 0.47"]

    # Re-parenting follows bash's exit closely, but not synchronously.
    assert wait_until(lambda: bool(orphans_now()), timeout=2), _children(envd.pid)
    orphans = orphans_now()
    # ...and once it exits envd reaps it: no zombie is left behind.
    assert wait_until(lambda: not any(p in _children(envd.pid) for p in orphans), timeout=5)
    assert not [p for p, (state, _) in _children(envd.pid).items() if state == "Z"]


async def test_concurrent_streams(envd: Envd) -> None:
    async with async_client(envd) as client:

        async def run(i: int) -> bytes:
            resp = await client.post(
                "/" + START,
                content=envelope(sh(f"sleep 0.2; echo {i}")),
                headers=STREAM_HEADERS,
            )
            frames = parse_frames(resp.content)
            return b"".join(
                unb64(m["event"]["data"]["stdout"])
                for _, m in frames
                if "data" in m.get("event", {})
            )

        started = time.monotonic()
        outputs = await asyncio.gather(*(run(i) for i in range(20)))
        assert outputs == [f"{i}\n".encode() for i in range(20)]
        # They ran side by side, not one after another.
        assert time.monotonic() - started < 3


def test_large_output_is_complete_and_before_end(rpc: Rpc) -> None:
    result = rpc.stream(START, sh("head -c 4000000 /dev/zero | tr '\\0' y; echo done >&2"))
    assert result.output("stdout") == b"y" * 4_000_000
    assert result.output("stderr") == b"done\n"
    assert "end" in result.events[-1]["event"]


def test_spawn_latency(rpc: Rpc) -> None:
    timings = []
    for _ in range(10):
        start = time.perf_counter()
        result = rpc.stream(START, {"process": {"cmd": "/bin/true"}})
        timings.append(time.perf_counter() - start)
        assert result.exit["exitCode"] == 0
    timings.sort()
    assert timings[len(timings) // 2] < 0.05, timings


async def test_client_disconnect_keeps_process(envd: Envd, rpc: Rpc) -> None:
    async with (
        async_client(envd) as client,
        client.stream(
            "POST", "/" + START, content=envelope(sh("sleep 30")), headers=STREAM_HEADERS
        ) as resp,
    ):
        pid = (await AsyncFrames(resp).event())["start"]["pid"]
    await asyncio.sleep(0.1)
    assert pid in proc_list(rpc)
    rpc.call("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"})
    assert wait_until(lambda: pid not in proc_list(rpc))


async def test_stream_input_client_stream(envd: Envd, rpc: Rpc) -> None:
    async with async_client(envd) as client:
        request = {"process": {"cmd": "/bin/cat"}, "stdin": True}
        async with client.stream(
            "POST", "/" + START, content=envelope(request), headers=STREAM_HEADERS
        ) as resp:
            frames = AsyncFrames(resp)
            pid = (await frames.event())["start"]["pid"]

            async def body() -> AsyncIterator[bytes]:
                yield envelope({"start": {"process": {"pid": pid}}})
                for part in (b"one ", b"two ", b"three\n"):
                    await asyncio.sleep(0.01)
                    yield envelope({"data": {"input": {"stdin": b64(part)}}})
                yield envelope({"keepalive": {}})

            reply = await client.post(
                "/process.Process/StreamInput", content=body(), headers=STREAM_HEADERS
            )
            assert reply.status_code == 200
            assert [m for _, m in parse_frames(reply.content)] == [{}, {}]
            out = b""
            while out != b"one two three\n":
                out += unb64((await frames.event())["data"]["stdout"])
            rpc.call("process.Process/CloseStdin", {"process": {"pid": pid}})
            assert (await frames.event())["end"]["exitCode"] == 0
        reply = await client.post(
            "/process.Process/StreamInput",
            content=envelope({"start": {"process": {"pid": 999999}}}),
            headers=STREAM_HEADERS,
        )
    [(flags, last)] = parse_frames(reply.content)
    assert flags == 2
    assert last["error"]["code"] == "not_found"
