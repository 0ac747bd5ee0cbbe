"""Warm shells: `bash [-l] -c CMD` runs in a shell started ahead of time and
must behave exactly as a freshly started one."""

from __future__ import annotations

import asyncio
import difflib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from sbx.envd import users, warmshell
from sbx.envd.reaper import Reaper

from .envd_testlib import TOKEN, Envd, Rpc, proc_list, wait_until

START = "process.Process/Start"
# Prints how long ago (seconds) the shell running the command was started.
AGE = (
    "read -r up _ < /proc/uptime; "
    "start=$(cut -d' ' -f22 /proc/$$/stat); "
    "echo $(( ${up%.*} * 100 + 10#${up#*.} - start ))"
)


def bash(command: str, login: bool = True, **extra: Any) -> dict[str, Any]:
    args = ["-l", "-c", command] if login else ["-c", command]
    process = {"cmd": "/bin/bash", "args": args, **extra.pop("process", {})}
    return {"process": process, **extra}


def age_cs(rpc: Rpc, **process: Any) -> int:
    """Age in 1/100 s of the shell that ran the command (after a warm-up)."""
    rpc.stream(START, bash("true", **process))
    time.sleep(1.0)
    out = rpc.stream(START, bash(AGE, **process)).output().decode()
    return int(out.strip())


def test_a_second_command_runs_in_a_spare_shell(rpc: Rpc) -> None:
    # Started about a second before the command: the spare made after the first.
    assert age_cs(rpc) >= 50
    assert age_cs(rpc, login=False) >= 50


def test_names_bash_reads_at_start_take_the_cold_path(rpc: Rpc) -> None:
    # A fresh shell is started: its age is that of the command.
    process = {"envs": {"PATH": "/opt/x:/usr/bin:/bin"}}
    assert age_cs(rpc, login=False, process=process) < 50
    out = rpc.stream(START, bash("echo $PATH", login=False, process=process)).output()
    assert out == b"/opt/x:/usr/bin:/bin\n"


def _diff(a: bytes, b: bytes) -> str:
    lines = difflib.unified_diff(a.decode().splitlines(), b.decode().splitlines(), lineterm="")
    return "\n".join(lines)


FIDELITY = [
    'echo "$0|$#|$-|${OLDPWD-unset}|$PWD|${__sbx_c-none}"; shopt login_shell',
    'for f in /proc/$$/fd/*; do printf "%s " "${f##*/}"; done; echo',
    'env | grep -v -e "^_=" -e "^PYTEST_CURRENT_TEST=" | sort',
    'echo "A=$A"; echo "B=$B"; echo "$B" | wc -l',
    'trap "echo bye" EXIT; exit 3',
    'cd /; echo $OLDPWD; umask; ulimit -n',
]


def test_warm_command_sees_what_a_fresh_shell_sees(
    rpc: Rpc, envd_factory: Any, workdir: Path
) -> None:
    cold_envd = envd_factory()
    assert httpx.post(cold_envd.url + "/init", json={"warmShells": 0},
                      headers={"X-Access-Token": TOKEN}).status_code == 204
    tricky = "it's \"quoted\" $HOME `x` \\ ünï\nline2"
    with Rpc(cold_envd.url, TOKEN) as cold:
        for login in (True, False):
            for script in FIDELITY:
                request = bash(script, login=login,
                               process={"envs": {"A": "1 2", "B": tricky}, "cwd": str(workdir)})
                rpc.stream(START, bash("true", login=login))
                time.sleep(0.3)
                warm_result = rpc.stream(START, request)
                cold_result = cold.stream(START, request)
                for kind in ("stdout", "stderr"):
                    warm_out, cold_out = warm_result.output(kind), cold_result.output(kind)
                    assert warm_out == cold_out, (script, kind, _diff(cold_out, warm_out))
                assert warm_result.exit == cold_result.exit, script


def test_exit_status_syntax_errors_and_stderr(rpc: Rpc) -> None:
    rpc.stream(START, bash("true"))
    time.sleep(0.5)
    assert rpc.stream(START, bash("exit 7")).exit["exitCode"] == 7
    time.sleep(0.3)
    result = rpc.stream(START, bash("echo oops >&2; false"))
    assert result.exit["exitCode"] == 1
    assert result.output("stderr") == b"oops\n"
    time.sleep(0.3)
    result = rpc.stream(START, bash("if"))
    assert result.exit["exitCode"] == 2
    assert b"syntax error" in result.output("stderr")


def test_stdin_closed_or_open(envd: Envd, rpc: Rpc) -> None:
    rpc.stream(START, bash("true"))
    time.sleep(0.5)
    started = time.monotonic()
    result = rpc.stream(START, {**bash("cat; echo done"), "stdin": False})
    assert result.output() == b"done\n"
    assert time.monotonic() - started < 5


async def test_signals_reach_the_warm_command(envd: Envd, rpc: Rpc) -> None:
    rpc.stream(START, bash("true"))
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=envd.url, headers={"X-Access-Token": TOKEN},
                                 timeout=30) as client:
        from .envd_testlib import AsyncFrames, envelope

        req = client.build_request(
            "POST", "/" + START, content=envelope(bash("sleep 30")),
            headers={"content-type": "application/connect+json"},
        )
        resp = await client.send(req, stream=True)
        frames = AsyncFrames(resp)
        start = await frames.event()
        pid = start["start"]["pid"]
        assert pid in proc_list(rpc)
        rpc.call("process.Process/SendSignal",
                 {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        while True:
            event = await frames.event()
            if "end" in event:
                break
        assert event["end"]["status"] == "signal: killed"
        await resp.aclose()
    assert wait_until(lambda: pid not in proc_list(rpc))


def test_script_refuses_what_a_spare_cannot_run_faithfully() -> None:
    assert warmshell.script("true", "/", {"PATH": "/x"}) is None
    assert warmshell.script("true", "/", {"BASH_ENV": "/x"}) is None
    assert warmshell.script("true", "/", {"BASH_FUNC_f%%": "() { :; }"}) is None
    assert warmshell.script("true", "/", {"A-B": "1"}) is None
    assert warmshell.script("true\0", "/", {}) is None
    assert warmshell.script("x" * warmshell.MAX_SCRIPT, "/", {}) is None
    assert warmshell.script("true", "/", {"A": "1"}) is not None
    assert warmshell.parse("/bin/bash", ["-l", "-c", "x"]) == (True, "x")
    assert warmshell.parse("/bin/bash", ["-c", "x"]) == (False, "x")
    assert warmshell.parse("/bin/bash", ["-c", "x", "arg0"]) is None
    assert warmshell.parse("/bin/sh", ["-c", "x"]) is None


def test_may_enter_follows_permissions(workdir: Path) -> None:
    nobody = users.lookup("nobody")
    private = workdir / "private"
    private.mkdir(mode=0o700)
    os.chmod(workdir, 0o755)
    assert warmshell.may_enter(str(workdir), nobody)
    assert not warmshell.may_enter(str(private), nobody)
    assert not warmshell.may_enter(str(workdir / "missing"), nobody)
    assert warmshell.may_enter(str(private), users.current())


async def test_a_changed_profile_throws_the_spare_away(workdir: Path) -> None:
    reaper = Reaper()
    reaper.start()
    shells = warmshell.WarmShells(reaper.track)
    me = replace(users.current(), home=str(workdir))
    (workdir / ".profile").write_text("export FROM_PROFILE=1\n")
    env = {"HOME": str(workdir), "PATH": "/usr/bin:/bin"}
    try:
        key = (me.name, True)
        shells.want(key, me, env, str(workdir))
        await asyncio.sleep(0.2)
        spare = shells.take(key, me)
        assert spare is not None and not spare.dead
        spare.discard()

        shells.want(key, me, env, str(workdir))
        await asyncio.sleep(0.2)
        (workdir / ".profile").write_text("export FROM_PROFILE=2\n")
        assert shells.take(key, me) is None
        shells.want(key, me, env, str(workdir))
        await asyncio.sleep(0.2)
        (workdir / ".local/bin").mkdir(parents=True)
        assert shells.take(key, me) is None
        assert (shells.hits, shells.misses) == (1, 2)
    finally:
        shells.close()
        await asyncio.sleep(0.1)
        reaper.reap()
        reaper.stop()


def test_init_sets_the_number_of_warm_shells(envd_factory: Any) -> None:
    envd = envd_factory()
    url, headers = envd.url + "/init", {"X-Access-Token": TOKEN}
    for bad in (-1, 5, "1", True, 1.5):
        r = httpx.post(url, json={"warmShells": bad}, headers=headers)
        assert r.status_code == 400 and "warmShells" in r.text
    assert httpx.post(url, json={"warmShells": 0}, headers=headers).status_code == 204
    with Rpc(envd.url, TOKEN) as rpc:
        # Off: every command starts a fresh shell.
        assert age_cs(rpc) < 50
