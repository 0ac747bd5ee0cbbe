"""Process messages, events and result bookkeeping (sans-IO)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from sbx.sdk import CommandExitError, CommandResult, SbxConnectionError
from sbx.sdk import _process as process


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(content: bytes | None) -> dict[str, object]:
    assert content is not None
    return dict(json.loads(content[5:]))


def test_start_runs_bash_c_without_login_shell() -> None:
    req = process.start("echo hi", envs={"A": "1"}, cwd="/tmp", stdin=False, timeout=5)
    assert req.path == "/process.Process/Start"
    assert body(req.content) == {
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"], "envs": {"A": "1"},
                    "cwd": "/tmp"},
        "stdin": False,
    }
    assert req.headers["Connect-Timeout-Ms"] == "5000"
    assert "Authorization" not in req.headers


def test_start_as_user_uses_basic_auth_with_empty_password() -> None:
    req = process.start("id", user="root")
    assert req.headers["Authorization"] == "Basic " + b64(b"root:")


def test_start_pty_is_an_interactive_login_shell_with_a_size() -> None:
    req = process.start_pty(100, 30, envs={"TERM": "dumb"})
    msg = body(req.content)
    assert msg["pty"] == {"size": {"cols": 100, "rows": 30}}
    proc = msg["process"]
    assert isinstance(proc, dict)
    assert proc["args"] == ["-i", "-l"]
    assert proc["envs"]["TERM"] == "dumb"
    assert proc["envs"]["LANG"] == "C.UTF-8"


def test_send_input_is_base64_on_the_right_channel() -> None:
    op = process.send_input(5, "hé")
    assert op.request.content is not None
    assert json.loads(op.request.content) == {"process": {"pid": 5},
                                              "input": {"stdin": b64("hé".encode())}}
    op = process.send_input(5, b"\x03", pty=True)
    assert op.request.content is not None
    assert json.loads(op.request.content)["input"] == {"pty": "Aw=="}


def test_kill_answers_false_for_a_missing_process() -> None:
    op = process.kill(9)
    assert op.request.content is not None
    assert json.loads(op.request.content)["signal"] == "SIGNAL_SIGKILL"
    assert op.parse(httpx.Response(200, json={})) is True
    gone = httpx.Response(404, json={"code": "not_found", "message": "no such process"})
    assert op.parse(gone) is False


def test_list_maps_process_info() -> None:
    answer = httpx.Response(200, json={"processes": [
        {"pid": 3, "tag": "t", "config": {"cmd": "/bin/bash", "args": ["-c", "x"],
                                          "envs": {"A": "b"}, "cwd": "/w"}},
        {"pid": 4, "config": {"cmd": "sleep"}}]})
    infos = process.list_processes().parse(answer)
    assert [(p.pid, p.cmd, p.args, p.envs, p.cwd, p.tag) for p in infos] == [
        (3, "/bin/bash", ["-c", "x"], {"A": "b"}, "/w", "t"),
        (4, "sleep", [], {}, None, None)]


@pytest.mark.parametrize(
    ("message", "event"),
    [({"event": {"start": {"pid": 12}}}, process.Started(12)),
     ({"event": {"data": {"stdout": b64(b"hi")}}}, process.Output("stdout", b"hi")),
     ({"event": {"data": {"stderr": b64(b"e")}}}, process.Output("stderr", b"e")),
     ({"event": {"data": {"pty": b64(b"\x1b[0m")}}}, process.Output("pty", b"\x1b[0m")),
     ({"event": {"end": {"exitCode": 3, "exited": True, "status": "exit status 3"}}},
      process.Ended(3, True, "exit status 3", None)),
     ({"event": {"end": {"exited": False, "status": "signal: killed", "error": "killed"}}},
      process.Ended(0, False, "signal: killed", "killed")),
     ({"event": {"keepalive": {}}}, None),
     ({}, None)],
)
def test_parse_event(message: dict[str, object], event: process.Event | None) -> None:
    assert process.parse_event(message) == event


def data(stream: str, raw: bytes) -> dict[str, object]:
    return {"event": {"data": {stream: b64(raw)}}}


def test_tracker_reassembles_utf8_split_across_chunks() -> None:
    tracker = process.ProcessTracker()
    tracker.handle({"event": {"start": {"pid": 1}}})
    encoded = "héllo €".encode()
    seen = [tracker.handle(data("stdout", encoded[i:i + 1])) for i in range(len(encoded))]
    assert "".join(str(s[1]) for s in seen if s) == "héllo €"
    tracker.handle(data("stderr", b"warn"))
    tracker.handle({"event": {"end": {"exitCode": 0, "exited": True, "status": "ok"}}})
    assert tracker.result() == CommandResult("héllo €", "warn", 0, None)


def test_tracker_passes_terminal_bytes_through() -> None:
    tracker = process.ProcessTracker()
    assert tracker.handle(data("pty", b"\xff\xfe")) == ("pty", b"\xff\xfe")


def test_tracker_without_end_is_a_broken_stream() -> None:
    tracker = process.ProcessTracker()
    tracker.handle({"event": {"start": {"pid": 1}}})
    with pytest.raises(SbxConnectionError):
        tracker.result()


def test_checked_raises_only_when_asked() -> None:
    failed = CommandResult("o", "e", 4, "exit status 4")
    assert process.checked(failed, check=False) is failed
    with pytest.raises(CommandExitError) as info:
        process.checked(failed, check=True)
    assert (info.value.exit_code, info.value.stdout, info.value.stderr) == (4, "o", "e")
    ok = CommandResult("", "", 0)
    assert process.checked(ok, check=True) is ok
