"""The `sbx sandbox` CLI without a server: argument handling, the one-line
errors, and the terminal bridge of `shell` against a real envd."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

from click.testing import CliRunner

from sbx.cli.main import cli
from tests.unit.sdk.conftest import REPO_ROOT, LocalEnvd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    base = {"SBX_API_URL": "", "SBX_API_KEY": ""}
    result = runner.invoke(cli, ["sandbox", *args], env={**base, **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def test_help_lists_the_commands() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for name in ("create", "list", "get", "kill", "exec", "shell"):
        assert name in out


def test_unreachable_server_is_one_error_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    commands = [["list"], ["get", "sbx-abc"], ["kill", "sbx-abc"], ["exec", "sbx-abc", "--", "ls"]]
    for args in commands:
        code, out, err = invoke("--api-url", url, "--api-key", "k", *args)
        assert code == 1, (args, out, err)
        assert err.startswith("error: Could not connect to " + url), err
        assert err.count("\n") == 1
        assert "Traceback" not in out + err


def test_options_may_follow_the_subcommand_and_come_from_env() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = invoke("list", "--api-url", url, "--api-key", "k")
    assert (code, err.startswith(f"error: Could not connect to {url}")) == (1, True)
    code, _, err = invoke("list", env={"SBX_API_URL": url, "SBX_API_KEY": "k"})
    assert (code, err.startswith(f"error: Could not connect to {url}")) == (1, True)


def test_missing_api_key_is_explained() -> None:
    code, _, err = invoke("list")
    assert code == 1
    assert err == "error: No API key: pass api_key=... or set SBX_API_KEY\n"


def test_bad_env_option_is_a_usage_error() -> None:
    code, _, err = invoke("--api-key", "k", "create", "--env", "NOEQUALS")
    assert code == 2
    assert "NAME=VALUE" in err


def test_exec_needs_a_command() -> None:
    code, _, err = invoke("--api-key", "k", "exec", "sbx-abc")
    assert code == 2
    assert "COMMAND" in err


# --- the terminal bridge of `shell` -------------------------------------------------

BRIDGE = (
    "import sys; from sbx.cli.sandbox import _run_terminal; from sbx.sdk import Sandbox; "
    "sbx = Sandbox._for_envd(sys.argv[1], sys.argv[2]); code = _run_terminal(sbx); "
    "sbx.close(); import termios; "
    "print('\\nRESTORED' if termios.tcgetattr(0)[3] & termios.ECHO else '\\nRAW', code)"
)


PROMPT = (b"# ", b"$ ")


def read_until(
    fd: int, needle: bytes | tuple[bytes, ...], seen: bytearray, timeout: float = 15
) -> None:
    needles = needle if isinstance(needle, tuple) else (needle,)
    deadline = time.monotonic() + timeout
    while not any(n in seen for n in needles):
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, f"EOF before {needle!r}: {bytes(seen)!r}"
            seen.extend(chunk)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_shell_bridges_a_terminal(envd: LocalEnvd) -> None:
    master, slave = os.openpty()
    set_size(slave, 30, 100)
    proc = subprocess.Popen(
        [sys.executable, "-c", BRIDGE, envd.url, envd.token],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO_ROOT, start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        read_until(master, PROMPT, seen)
        os.write(master, b"stty size\r")
        read_until(master, b"30 100", seen)
        set_size(master, 40, 120)
        os.kill(proc.pid, signal.SIGWINCH)
        time.sleep(0.3)
        os.write(master, b"stty size\r")
        read_until(master, b"40 120", seen)
        # Ctrl-C goes to the remote shell, not to the local process.
        os.write(master, b"sleep 30\r")
        time.sleep(0.3)
        os.write(master, b"\x03")
        os.write(master, b"echo after-$((1+1))\r")
        read_until(master, b"after-2", seen)
        os.write(master, b"exit 3\r")
        read_until(master, b"RESTORED 3", seen)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


def test_shell_ends_on_ctrl_d(envd: LocalEnvd) -> None:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", BRIDGE, envd.url, envd.token],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO_ROOT, start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        read_until(master, PROMPT, seen)
        os.write(master, b"echo ready\r")
        read_until(master, b"\rready\r\n", seen)
        # Only at the next prompt: a Ctrl-D that arrives while bash runs a
        # command is eaten by the remote terminal's line discipline. (The
        # prompt may have come in the same read as the output.)
        seen[:] = bytes(seen).split(b"\rready\r\n", 1)[1]
        read_until(master, PROMPT, seen)
        os.write(master, b"\x04")
        read_until(master, b"RESTORED 0", seen)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
