"""The sync client against a real envd subprocess (no server in between)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sbx.sdk import (
    AuthenticationError,
    CommandExitError,
    CommandResult,
    FileType,
    InvalidRequestError,
    NotFoundError,
    Sandbox,
    SbxTimeoutError,
)
from tests.unit.sdk.conftest import LocalEnvd, open_connections


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- commands -----------------------------------------------------------------


def test_run_returns_output_and_exit_code(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo out; echo err >&2; exit 3")
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.exit_code == 3
    assert sbx.commands.run("true") == CommandResult("", "", 0, None)


def test_run_is_a_login_shell(sbx: Sandbox) -> None:
    # As with the e2b SDK: the profile's PATH (~/.local/bin) applies.
    assert sbx.commands.run("shopt -q login_shell && echo login || echo plain").stdout == "login\n"


def test_run_with_env_and_cwd(sbx: Sandbox, workdir: Path) -> None:
    result = sbx.commands.run('echo "$FOO|$BAR"; pwd', envs={"FOO": "a b", "BAR": "é"},
                              cwd=str(workdir))
    assert result.stdout == f"a b|é\n{workdir}\n"


def test_run_as_user(sbx: Sandbox) -> None:
    assert sbx.commands.run("id -un", user="root").stdout == "root\n"


def test_check_raises_only_when_asked(sbx: Sandbox) -> None:
    assert sbx.commands.run("exit 5").exit_code == 5
    with pytest.raises(CommandExitError) as info:
        sbx.commands.run("echo partial; echo bad >&2; exit 5", check=True)
    assert (info.value.exit_code, info.value.stdout, info.value.stderr) == (5, "partial\n", "bad\n")


def test_callbacks_stream_live(sbx: Sandbox) -> None:
    seen: list[tuple[str, str, float]] = []
    start = time.monotonic()
    result = sbx.commands.run(
        "echo first; sleep 0.6; echo second >&2; echo third",
        on_stdout=lambda t: seen.append(("out", t, time.monotonic() - start)),
        on_stderr=lambda t: seen.append(("err", t, time.monotonic() - start)),
    )
    assert "".join(t for k, t, _ in seen if k == "out") == "first\nthird\n"
    assert "".join(t for k, t, _ in seen if k == "err") == "second\n"
    first_at = next(at for k, t, at in seen if "first" in t)
    # Delivered before the command went on, not at its end.
    assert first_at < 0.5 < seen[-1][2]
    assert result.stdout == "first\nthird\n"


def test_large_output(sbx: Sandbox) -> None:
    result = sbx.commands.run("head -c 3000000 /dev/zero | tr '\\0' x")
    assert result.stdout == "x" * 3_000_000


def test_foreground_stdin_is_closed(sbx: Sandbox) -> None:
    assert sbx.commands.run("cat; echo done", timeout=10).stdout == "done\n"


def test_timeout_kills_the_command(sbx: Sandbox, workdir: Path) -> None:
    marker = workdir / "survived"
    started = time.monotonic()
    with pytest.raises(SbxTimeoutError):
        sbx.commands.run(f"sleep 2; touch {marker}", timeout=0.5)
    assert time.monotonic() - started < 1.8
    time.sleep(2)
    assert not marker.exists()


def test_request_timeout_does_not_bound_streams(envd: LocalEnvd) -> None:
    with Sandbox._for_envd(envd.url, envd.token, request_timeout=0.2) as quick:
        # Silent for longer than request_timeout: only the command's timeout counts.
        assert quick.commands.run("sleep 0.6; echo ok").stdout == "ok\n"


def test_background_wait(sbx: Sandbox) -> None:
    chunks: list[str] = []
    handle = sbx.commands.run("sleep 0.3; echo bg", background=True, on_stdout=chunks.append)
    assert handle.pid > 0
    assert not handle.done
    result = handle.wait()
    assert handle.done
    assert result.stdout == "bg\n"
    assert chunks == ["bg\n"]


def test_background_output_is_read_without_wait(sbx: Sandbox) -> None:
    chunks: list[str] = []
    handle = sbx.commands.run("echo early; sleep 30", background=True, on_stdout=chunks.append)
    try:
        wait_for(lambda: chunks == ["early\n"])
    finally:
        assert handle.kill() is True
    result = handle.wait()
    assert result.exit_code != 0
    assert result.stdout == "early\n"


def test_background_kill_and_list(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 30", background=True)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    listed = next(p for p in sbx.commands.list() if p.pid == handle.pid)
    assert listed.args == ["-l", "-c", "sleep 30"]
    assert sbx.commands.kill(handle.pid) is True
    assert handle.wait().exit_code != 0
    with pytest.raises(CommandExitError):
        handle.wait(check=True)
    wait_for(lambda: handle.pid not in [p.pid for p in sbx.commands.list()])
    assert sbx.commands.kill(handle.pid) is False


def test_background_stdin(sbx: Sandbox) -> None:
    handle = sbx.commands.run("while read line; do echo got:$line; done; echo eof",
                              background=True)
    handle.send_stdin("one\n")
    sbx.commands.send_stdin(handle.pid, b"two\n")
    handle.close_stdin()
    assert handle.wait().stdout == "got:one\ngot:two\neof\n"


def test_send_stdin_to_missing_process(sbx: Sandbox) -> None:
    with pytest.raises(NotFoundError):
        sbx.commands.send_stdin(999_999, "x")


def test_connect_follows_a_running_process(sbx: Sandbox) -> None:
    handle = sbx.commands.run("read x; echo $x", background=True)
    follower_out: list[str] = []
    follower = sbx.commands.connect(handle.pid, on_stdout=follower_out.append)
    handle.send_stdin("hello\n")
    assert follower.wait().stdout == "hello\n"
    assert handle.wait().stdout == "hello\n"


def test_callback_errors_reach_the_caller(sbx: Sandbox) -> None:
    def boom(_: str) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        sbx.commands.run("echo x", on_stdout=boom)
    handle = sbx.commands.run("echo x", background=True, on_stdout=boom)
    with pytest.raises(RuntimeError, match="callback failed"):
        handle.wait()
    # The connection pool is still usable afterwards.
    assert sbx.commands.run("echo ok").stdout == "ok\n"


def test_bad_cwd_is_an_invalid_request(sbx: Sandbox) -> None:
    with pytest.raises(InvalidRequestError, match="does not exist"):
        sbx.commands.run("true", cwd="/no/such/dir")


def test_threads_share_one_sandbox(sbx: Sandbox) -> None:
    results: list[str] = []

    def work(i: int) -> None:
        results.append(sbx.commands.run(f"echo {i}").stdout)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(f"{i}\n" for i in range(8))


def test_sequential_calls_reuse_one_connection(sbx: Sandbox, envd: LocalEnvd,
                                              workdir: Path) -> None:
    port = int(envd.url.rsplit(":", 1)[1])
    for i in range(20):
        sbx.commands.run(f"echo {i}")
        sbx.commands.list()
        sbx.files.write(str(workdir / "f"), str(i))
        assert sbx.files.read(str(workdir / "f")) == str(i)
        assert sbx.files.exists(str(workdir / "f"))
    assert open_connections(port) == 1


# --- files --------------------------------------------------------------------


def test_write_read_text_and_bytes(sbx: Sandbox, workdir: Path) -> None:
    path = str(workdir / "deep" / "er" / "a.txt")
    info = sbx.files.write(path, "héllo\n")
    assert (info.name, info.path, info.type) == ("a.txt", path, FileType.FILE)
    assert sbx.files.read(path) == "héllo\n"
    sbx.files.write(path, b"\x00\xff")
    assert sbx.files.read(path, format="bytes") == b"\x00\xff"
    assert Path(path).read_bytes() == b"\x00\xff"


def test_ten_mib_round_trip(sbx: Sandbox, workdir: Path) -> None:
    data = os.urandom(10 * 1024 * 1024)
    path = str(workdir / "big.bin")
    sbx.files.write(path, data)
    assert sbx.files.get_info(path).size == len(data)
    assert sbx.files.read(path, format="bytes") == data


def test_list_make_dir_exists_rename_remove(sbx: Sandbox, workdir: Path) -> None:
    root = str(workdir)
    assert sbx.files.make_dir(f"{root}/d/e") is True
    assert sbx.files.make_dir(f"{root}/d/e") is False
    sbx.files.write(f"{root}/d/f.txt", "x")
    entries = sbx.files.list(f"{root}/d")
    assert sorted((e.name, e.type) for e in entries) == [("e", FileType.DIR),
                                                          ("f.txt", FileType.FILE)]
    deep = sbx.files.list(root, depth=3)
    assert {e.path for e in deep} == {f"{root}/d", f"{root}/d/e", f"{root}/d/f.txt"}

    assert sbx.files.exists(f"{root}/d/f.txt")
    moved = sbx.files.rename(f"{root}/d/f.txt", f"{root}/g.txt")
    assert (moved.name, moved.path) == ("g.txt", f"{root}/g.txt")
    assert not sbx.files.exists(f"{root}/d/f.txt")
    assert sbx.files.read(f"{root}/g.txt") == "x"

    info = sbx.files.get_info(f"{root}/d")
    assert info.type is FileType.DIR
    assert info.modified_time is not None
    sbx.files.remove(f"{root}/d")
    assert not sbx.files.exists(f"{root}/d")


def test_missing_file_errors(sbx: Sandbox, workdir: Path) -> None:
    missing = str(workdir / "missing")
    with pytest.raises(NotFoundError, match="missing"):
        sbx.files.read(missing)
    with pytest.raises(NotFoundError):
        sbx.files.get_info(missing)
    with pytest.raises(NotFoundError):
        sbx.files.list(missing)
    with pytest.raises(NotFoundError):
        sbx.files.rename(missing, str(workdir / "other"))


# --- pty ----------------------------------------------------------------------


def test_pty_input_resize_and_exit(sbx: Sandbox) -> None:
    output = bytearray()
    lock = threading.Lock()

    def on_data(data: bytes) -> None:
        with lock:
            output.extend(data)

    def seen(text: str) -> bool:
        with lock:
            return text.encode() in output

    term = sbx.pty.create(cols=80, rows=24, on_data=on_data)
    try:
        term.send_stdin("echo $((6*7))x\n")
        wait_for(lambda: seen("42x"))
        term.send_stdin("stty size\n")
        wait_for(lambda: seen("24 80"))
        term.resize(cols=132, rows=50)
        term.send_stdin("stty size\n")
        wait_for(lambda: seen("50 132"))
        term.send_stdin("exit 7\n")
        assert term.wait().exit_code == 7
    finally:
        if not term.done:
            term.kill()


def test_pty_kill(sbx: Sandbox) -> None:
    term = sbx.pty.create(cols=80, rows=24, on_data=lambda _: None)
    assert sbx.pty.kill(term.pid) is True
    assert term.wait().exit_code != 0


# --- auth ---------------------------------------------------------------------


def test_bad_token_is_an_authentication_error(envd: LocalEnvd, workdir: Path) -> None:
    with Sandbox._for_envd(envd.url, "wrong-token") as bad:
        with pytest.raises(AuthenticationError):
            bad.commands.run("true")
        with pytest.raises(AuthenticationError):
            bad.commands.list()
        with pytest.raises(AuthenticationError):
            bad.files.read("/etc/hostname")
        with pytest.raises(AuthenticationError):
            bad.files.write(str(workdir / "x"), "x")
    assert not (workdir / "x").exists()
