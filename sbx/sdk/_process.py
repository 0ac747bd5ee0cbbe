"""The ``process.Process`` service of envd: messages, events and the bookkeeping
of one running process; sans-IO, shared by commands and PTYs, sync and async."""

from __future__ import annotations

import base64
import codecs
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from sbx.sdk._config import envd_user_header
from sbx.sdk._connect import Message, stream_request, unary
from sbx.sdk._exceptions import (
    CommandExitError,
    NotFoundError,
    SbxConnectionError,
    ServerError,
)
from sbx.sdk._models import CommandResult, ProcessInfo
from sbx.sdk._ops import Op, Request

SERVICE = "/process.Process/"
SHELL = "/bin/bash"
# Commands run in a login shell, as with the e2b SDK (the profile puts
# ~/.local/bin on PATH); envd keeps one started, so it costs nothing per call.
CMD_ARGS = ["-l", "-c"]
PTY_ARGS = ["-i", "-l"]
PTY_ENV = {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

Stream = Literal["stdout", "stderr", "pty"]


# --- requests -----------------------------------------------------------------


def start(
    cmd: str,
    *,
    envs: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    stdin: bool = False,
    timeout: float | None = None,
) -> Request:
    process: Message = {"cmd": SHELL, "args": [*CMD_ARGS, cmd], "envs": dict(envs or {})}
    if cwd is not None:
        process["cwd"] = cwd
    return stream_request(
        SERVICE + "Start",
        {"process": process, "stdin": stdin},
        headers=envd_user_header(user),
        timeout=timeout,
    )


def start_pty(
    cols: int,
    rows: int,
    *,
    envs: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    timeout: float | None = None,
) -> Request:
    process: Message = {"cmd": SHELL, "args": PTY_ARGS, "envs": {**PTY_ENV, **(envs or {})}}
    if cwd is not None:
        process["cwd"] = cwd
    return stream_request(
        SERVICE + "Start",
        {"process": process, "pty": {"size": {"cols": cols, "rows": rows}}},
        headers=envd_user_header(user),
        timeout=timeout,
    )


def connect(pid: int, timeout: float | None = None) -> Request:
    return stream_request(SERVICE + "Connect", {"process": {"pid": pid}}, timeout=timeout)


def list_processes() -> Op[list[ProcessInfo]]:
    return unary(SERVICE + "List", {}, _process_list)


def send_input(pid: int, data: str | bytes, *, pty: bool = False) -> Op[None]:
    raw = data.encode() if isinstance(data, str) else data
    payload = {"pty" if pty else "stdin": base64.b64encode(raw).decode("ascii")}
    return unary(SERVICE + "SendInput", {"process": {"pid": pid}, "input": payload}, _none)


def close_stdin(pid: int) -> Op[None]:
    return unary(SERVICE + "CloseStdin", {"process": {"pid": pid}}, _none)


def kill(pid: int) -> Op[bool]:
    """True when the process was signalled, False when there was no such process."""
    inner = unary(
        SERVICE + "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}, _none
    )

    def parse(response: httpx.Response) -> bool:
        try:
            inner.parse(response)
        except NotFoundError:
            return False
        return True

    return Op(inner.request, parse)


def resize(pid: int, cols: int, rows: int) -> Op[None]:
    return unary(
        SERVICE + "Update",
        {"process": {"pid": pid}, "pty": {"size": {"cols": cols, "rows": rows}}},
        _none,
    )


def _none(_: Message) -> None:
    return None


def _process_list(message: Message) -> list[ProcessInfo]:
    out = []
    for item in message.get("processes") or []:
        config = item.get("config") or {}
        out.append(
            ProcessInfo(
                pid=int(item.get("pid") or 0),
                cmd=str(config.get("cmd") or ""),
                args=[str(a) for a in config.get("args") or []],
                envs={str(k): str(v) for k, v in (config.get("envs") or {}).items()},
                cwd=config.get("cwd"),
                tag=item.get("tag"),
            )
        )
    return out


# --- events -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    pid: int


@dataclass(frozen=True, slots=True)
class Output:
    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    exit_code: int
    exited: bool
    status: str
    error: str | None


Event = Started | Output | Ended


def parse_event(message: Message) -> Event | None:
    """One ``StartResponse``/``ConnectResponse``; None for keepalives and unknowns."""
    event: Any = message.get("event") or {}
    if "data" in event:
        data = event["data"] or {}
        for stream in ("stdout", "stderr", "pty"):
            if stream in data:
                return Output(stream, base64.b64decode(data[stream] or ""))
        return None
    if "start" in event:
        return Started(int((event["start"] or {}).get("pid") or 0))
    if "end" in event:
        end = event["end"] or {}
        return Ended(
            exit_code=int(end.get("exitCode", end.get("exit_code", 0)) or 0),
            exited=bool(end.get("exited", False)),
            status=str(end.get("status") or ""),
            error=end.get("error") or None,
        )
    return None


class ProcessTracker:
    """Follows one process through its events and builds its result.

    ``handle`` answers what, if anything, to hand to an output callback:
    decoded text for stdout/stderr (UTF-8 split across chunks is reassembled)
    and raw bytes for a terminal.
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.end: Ended | None = None
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._err = codecs.getincrementaldecoder("utf-8")("replace")
        self._stdout: list[str] = []
        self._stderr: list[str] = []

    def handle(self, message: Message) -> tuple[Stream, str | bytes] | None:
        event = parse_event(message)
        if event is None:
            return None
        if isinstance(event, Started):
            self.pid = event.pid
            return None
        if isinstance(event, Ended):
            self.end = event
            self._flush()
            return None
        if event.stream == "pty":
            return ("pty", event.data)
        if event.stream == "stdout":
            text = self._out.decode(event.data)
            self._stdout.append(text)
        else:
            text = self._err.decode(event.data)
            self._stderr.append(text)
        return (event.stream, text) if text else None

    def expect_started(self) -> int:
        if self.pid is None:
            raise ServerError("envd did not report the started process's pid")
        return self.pid

    def result(self) -> CommandResult:
        if self.end is None:
            raise SbxConnectionError("The process stream ended without the process's exit")
        return CommandResult(
            stdout="".join(self._stdout),
            stderr="".join(self._stderr),
            exit_code=self.end.exit_code,
            error=self.end.error,
        )

    def _flush(self) -> None:
        tail = self._out.decode(b"", final=True)
        if tail:
            self._stdout.append(tail)
        tail = self._err.decode(b"", final=True)
        if tail:
            self._stderr.append(tail)


def checked(result: CommandResult, check: bool) -> CommandResult:
    if check and result.exit_code != 0:
        raise CommandExitError(result.stdout, result.stderr, result.exit_code, result.error)
    return result
