"""The SDK and the `sbx sandbox` CLI end to end, against a real server."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from sbx.cli.main import cli
from sbx.sdk import (
    AsyncSandbox,
    AuthenticationError,
    CommandExitError,
    FileType,
    InvalidRequestError,
    LimitError,
    NotFoundError,
    Sandbox,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Conn(TypedDict):
    api_url: str
    api_key: str


def conn(server: Any) -> Conn:
    return {"api_url": server.url, "api_key": server.api_key}


def _alive(server: Any, sandbox_id: str) -> bool:
    return sandbox_id in {i.sandbox_id for i in Sandbox.list(**conn(server))}


def kill_quietly(server: Any, sandbox_id: str) -> None:
    """The finally of every test: whatever it created must go."""
    if _alive(server, sandbox_id):
        Sandbox.connect(sandbox_id, **conn(server)).kill()


# --- sync SDK -------------------------------------------------------------------------


def test_sync_create_run_files_kill(sbx_server: Any) -> None:
    sbx = Sandbox.create(timeout=120, env_vars={"GREETING": "hello sbx"}, **conn(sbx_server))
    try:
        assert re.fullmatch(r"sbx-[a-z0-9]{8}", sbx.sandbox_id)
        assert sbx.envd_access_token
        info = sbx.get_info()
        assert (info.sandbox_id, info.state, info.vcpu, info.memory_mib) == (
            sbx.sandbox_id, "running", 1, 512)
        assert info.timeout_min == 2
        assert sbx.sandbox_id in [i.sandbox_id for i in Sandbox.list(**conn(sbx_server))]

        result = sbx.commands.run('echo "$GREETING"; echo oops >&2; exit 3')
        assert (result.stdout, result.stderr, result.exit_code) == ("hello sbx\n", "oops\n", 3)
        with pytest.raises(CommandExitError):
            sbx.commands.run("false", check=True)
        streamed: list[str] = []
        sbx.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=streamed.append)
        assert "".join(streamed) == "1\n2\n3\n"

        handle = sbx.commands.run("read x; echo got $x", background=True)
        handle.send_stdin("it\n")
        assert handle.wait().stdout == "got it\n"
        sleeper = sbx.commands.run("sleep 60", background=True)
        assert sleeper.pid in [p.pid for p in sbx.commands.list()]
        assert sleeper.kill() is True
        assert sleeper.wait().exit_code != 0

        data = os.urandom(10 * 1024 * 1024)
        sbx.files.write("/tmp/work/big.bin", data)
        assert sbx.files.read("/tmp/work/big.bin", format="bytes") == data
        sbx.files.write("/tmp/work/note.txt", "héllo")
        assert sbx.files.read("/tmp/work/note.txt") == "héllo"
        assert sbx.commands.run("cat /tmp/work/note.txt").stdout == "héllo"
        assert sorted(e.name for e in sbx.files.list("/tmp/work")) == ["big.bin", "note.txt"]
        assert sbx.files.make_dir("/tmp/work/sub") is True
        assert sbx.files.get_info("/tmp/work/sub").type is FileType.DIR
        sbx.files.rename("/tmp/work/note.txt", "/tmp/work/sub/note.txt")
        assert sbx.files.exists("/tmp/work/sub/note.txt")
        sbx.files.remove("/tmp/work/sub")
        assert not sbx.files.exists("/tmp/work/sub")
        with pytest.raises(NotFoundError):
            sbx.files.read("/tmp/work/sub/note.txt")

        assert sbx.set_timeout(600).timeout_min == 10
        sandbox_id = sbx.sandbox_id
        assert sbx.kill() is True
        assert sandbox_id not in [i.sandbox_id for i in Sandbox.list(**conn(sbx_server))]
        with pytest.raises(NotFoundError):
            Sandbox.connect(sandbox_id, **conn(sbx_server))
    finally:
        kill_quietly(sbx_server, sbx.sandbox_id)


def test_context_manager_kills_and_connect_reaches_the_same_sandbox(sbx_server: Any) -> None:
    created: list[str] = []
    try:
        with Sandbox.create(**conn(sbx_server)) as sbx:
            created.append(sbx.sandbox_id)
            sbx.files.write("/tmp/marker", "one")
            other = Sandbox.connect(sbx.sandbox_id, **conn(sbx_server))
            assert other.files.read("/tmp/marker") == "one"
            other.close()
            # close() leaves the sandbox running.
            assert sbx.commands.run("echo still").stdout == "still\n"
        assert not _alive(sbx_server, created[0])
    finally:
        for sandbox_id in created:
            kill_quietly(sbx_server, sandbox_id)


def test_pty_through_the_gateway(sbx_server: Any) -> None:
    with Sandbox.create(**conn(sbx_server)) as sbx:
        out = bytearray()
        term = sbx.pty.create(cols=100, rows=30, on_data=out.extend)
        term.send_stdin("stty size\n")
        deadline = time.monotonic() + 10
        while b"30 100" not in out:
            assert time.monotonic() < deadline, bytes(out)
            time.sleep(0.05)
        term.resize(cols=120, rows=40)
        term.send_stdin("stty size; exit 4\n")
        assert term.wait().exit_code == 4
        assert b"40 120" in out


def test_env_vars_are_visible_to_every_command(sbx_server: Any) -> None:
    env = {"SBX_A": "alpha", "SBX_SPACED": "a b  c", "SBX_UNICODE": "é€"}
    with Sandbox.create(env_vars=env, **conn(sbx_server)) as sbx:
        out = sbx.commands.run('printf "%s|%s|%s" "$SBX_A" "$SBX_SPACED" "$SBX_UNICODE"').stdout
        assert out == "alpha|a b  c|é€"
        # A command's own envs add to (and override) the sandbox's.
        result = sbx.commands.run('echo "$SBX_A $EXTRA"', envs={"SBX_A": "beta", "EXTRA": "x"})
        assert result.stdout == "beta x\n"
        assert sbx.commands.run("echo $SBX_A").stdout == "alpha\n"


# --- async SDK ------------------------------------------------------------------------


async def test_async_create_run_files_kill(sbx_server: Any) -> None:
    sbx = await AsyncSandbox.create(env_vars={"MODE": "async"}, **conn(sbx_server))
    try:
        result = await sbx.commands.run("echo $MODE; exit 2")
        assert (result.stdout, result.exit_code) == ("async\n", 2)
        seen: list[str] = []

        async def on_stdout(text: str) -> None:
            seen.append(text)

        handle = await sbx.commands.run("echo one; sleep 0.2; echo two", background=True,
                                        on_stdout=on_stdout)
        assert (await handle.wait()).stdout == "one\ntwo\n"
        assert "".join(seen) == "one\ntwo\n"

        await sbx.files.write("/tmp/a/b.txt", b"\x00bytes")
        assert await sbx.files.read("/tmp/a/b.txt", format="bytes") == b"\x00bytes"
        assert [e.name for e in await sbx.files.list("/tmp/a")] == ["b.txt"]
        assert await sbx.files.exists("/tmp/a/b.txt")
        await sbx.files.remove("/tmp/a")
        assert not await sbx.files.exists("/tmp/a")

        info = await sbx.get_info()
        assert info.state == "running"
        listed = await AsyncSandbox.list(**conn(sbx_server))
        assert sbx.sandbox_id in [i.sandbox_id for i in listed]
        assert await sbx.kill() is True
        listed = await AsyncSandbox.list(**conn(sbx_server))
        assert sbx.sandbox_id not in [i.sandbox_id for i in listed]
    finally:
        kill_quietly(sbx_server, sbx.sandbox_id)


async def test_async_context_manager(sbx_server: Any) -> None:
    ids: list[str] = []
    try:
        async with await AsyncSandbox.create(**conn(sbx_server)) as sbx:
            ids.append(sbx.sandbox_id)
            assert (await sbx.commands.run("echo hi")).stdout == "hi\n"
        assert not _alive(sbx_server, ids[0])
    finally:
        for sandbox_id in ids:
            kill_quietly(sbx_server, sandbox_id)


# --- errors ---------------------------------------------------------------------------


def test_errors_from_the_api(sbx_server: Any) -> None:
    with pytest.raises(AuthenticationError, match="Invalid API key"):
        Sandbox.list(api_url=sbx_server.url, api_key="not-a-key")
    with pytest.raises(InvalidRequestError) as info:
        Sandbox.create(memory_mib=513, vcpu=99, **conn(sbx_server))
    assert {e["field"] for e in info.value.errors} == {"memory_mib", "vcpu"}
    with pytest.raises(InvalidRequestError) as info:
        Sandbox.create(template="no-such-template", **conn(sbx_server))
    assert [e["field"] for e in info.value.errors] == ["template_name"]
    with pytest.raises(NotFoundError, match="sbx-zzzzzzzz"):
        Sandbox.connect("sbx-zzzzzzzz", **conn(sbx_server))


def test_sandbox_limit_is_a_limit_error(sbx_server: Any) -> None:
    created: list[Sandbox] = []
    try:
        with pytest.raises(LimitError, match="limit"):
            for _ in range(4):
                created.append(Sandbox.create(**conn(sbx_server)))
        assert len(created) <= 3
    finally:
        for sbx in created:
            sbx.kill()


def test_bad_envd_token_is_an_authentication_error(sbx_server: Any) -> None:
    with Sandbox.create(**conn(sbx_server)) as sbx:
        forged = Sandbox.connect(sbx.sandbox_id, **conn(sbx_server))
        forged._transport.envd.headers["X-Access-Token"] = "forged"  # type: ignore[union-attr]
        try:
            with pytest.raises(AuthenticationError):
                forged.commands.run("true")
            with pytest.raises(AuthenticationError):
                forged.files.read("/etc/hostname")
        finally:
            forged.close()


def open_connections(port: int) -> int:
    """TCP connections from this process to ``port`` (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def test_one_kept_alive_connection_per_sandbox(sbx_server: Any) -> None:
    port = urlsplit(sbx_server.url).port or 80
    with Sandbox.create(**conn(sbx_server)) as sbx:
        for i in range(10):
            assert sbx.commands.run(f"echo {i}").stdout == f"{i}\n"
            sbx.files.write("/tmp/f", str(i))
            assert sbx.files.read("/tmp/f") == str(i)
            sbx.commands.list()
        sbx.get_info()
        # Control-plane and envd calls share the pool: same server port.
        assert open_connections(port) == 1


# --- CLI ------------------------------------------------------------------------------


def run_cli(server: Any, *args: str) -> tuple[int, str, str]:
    env = {"SBX_API_URL": server.url, "SBX_API_KEY": server.api_key}
    result = CliRunner().invoke(cli, ["sandbox", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_create_list_exec_kill(sbx_server: Any) -> None:
    code, out, err = run_cli(sbx_server, "create", "--env", "WHO=cli", "--timeout", "120")
    assert code == 0, err
    sandbox_id = out.strip()
    try:
        assert re.fullmatch(r"sbx-[a-z0-9]{8}", sandbox_id)

        code, out, _ = run_cli(sbx_server, "list")
        assert code == 0
        assert "ID" in out and "STATE" in out and "MEMORY" in out
        row = next(line for line in out.splitlines() if sandbox_id in line)
        assert "running" in row and "512 MiB" in row

        code, out, _ = run_cli(sbx_server, "get", sandbox_id, "--json")
        assert code == 0
        data = json.loads(out)
        assert (data["id"], data["state"], data["timeout_min"]) == (sandbox_id, "running", 2)
        assert "envd_access_token" not in data

        code, out, err = run_cli(sbx_server, "exec", sandbox_id, "--",
                                 'echo "hi $WHO"; echo warn >&2; exit 7')
        assert (code, out, err) == (7, "hi cli\n", "warn\n")
        code, out, _ = run_cli(sbx_server, "exec", sandbox_id, "--", "printf", "%s|", "a b", "c")
        assert (code, out) == (0, "a b|c|")

        code, out, err = run_cli(sbx_server, "kill", sandbox_id)
        assert code == 0, err
        assert not _alive(sbx_server, sandbox_id)
        code, _, err = run_cli(sbx_server, "exec", sandbox_id, "--", "true")
        assert code == 1
        assert err == f"error: Sandbox {sandbox_id} is deleted\n"
    finally:
        kill_quietly(sbx_server, sandbox_id)


def test_cli_unknown_id_is_one_error_line(sbx_server: Any) -> None:
    for args in (["get", "sbx-zzzzzzzz"], ["kill", "sbx-zzzzzzzz"],
                 ["exec", "sbx-zzzzzzzz", "--", "true"]):
        code, out, err = run_cli(sbx_server, *args)
        assert (code, out, err) == (1, "", "error: Sandbox sbx-zzzzzzzz not found\n"), args


def test_cli_invalid_create_lists_the_fields(sbx_server: Any) -> None:
    code, out, err = run_cli(sbx_server, "create", "--memory-mib", "513")
    assert code == 1
    assert err == "error: Invalid request: memory_mib: must be an even number\n"
    assert out == ""


def test_cli_exec_interrupted_kills_the_remote_command(sbx_server: Any) -> None:
    with Sandbox.create(**conn(sbx_server)) as sbx:
        env = {**os.environ, "SBX_API_URL": sbx_server.url, "SBX_API_KEY": sbx_server.api_key}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from sbx.cli.main import main; main()", "sandbox", "exec",
             sbx.sandbox_id, "--", "echo started; sleep 120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"started\n"
            listed = [p.args for p in sbx.commands.list()]
            assert ["-l", "-c", "echo started; sleep 120"] in listed
            os.kill(proc.pid, signal.SIGINT)
            assert proc.wait(20) == 130
            deadline = time.monotonic() + 10
            while any("sleep 120" in " ".join(p.args) for p in sbx.commands.list()):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_cli_shell(sbx_server: Any) -> None:
    sbx = Sandbox.create(**conn(sbx_server))
    master, slave = os.openpty()
    env = {**os.environ, "SBX_API_URL": sbx_server.url, "SBX_API_KEY": sbx_server.api_key}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sbx.cli.main import main; main()", "sandbox", "shell",
         sbx.sandbox_id],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()

    def read_until(needle: bytes) -> None:
        deadline = time.monotonic() + 20
        while needle not in seen:
            assert time.monotonic() < deadline, bytes(seen)
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                chunk = os.read(master, 4096)
                assert chunk, bytes(seen)
                seen.extend(chunk)

    try:
        read_until(b"# ")
        os.write(master, b"echo $((40+2)) > /tmp/from-shell; cat /tmp/from-shell\r")
        read_until(b"\r42\r\n")
        os.write(master, b"exit 5\r")
        assert proc.wait(20) == 5
        assert sbx.files.read("/tmp/from-shell") == "42\n"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
        sbx.kill()
