"""A custom template's run-time config (template.json): default environment,
working directory and user, the supervised start command, readiness."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b.sandbox.commands.command_handle import CommandExitException

from sbx.envd import template, users

from .envd_testlib import TOKEN, Envd, Rpc, Sdk, make_sdk, proc_list, wait_until

START = "process.Process/Start"
LIST = "process.Process/List"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")


@dataclass
class Tpl:
    envd: Envd
    log_path: Path

    @property
    def url(self) -> str:
        return self.envd.url

    def ready(self) -> httpx.Response:
        # No token: /ready is as open as /health.
        return httpx.get(self.url + "/ready")

    def start_log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def sdk(self) -> Sdk:
        return make_sdk(self.url)

    def init(self, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
        return httpx.post(self.url + "/init", json=body, headers={"X-Access-Token": TOKEN},
                          timeout=timeout)

    def sh(self, script: str, **process: Any) -> str:
        """stdout of ``/bin/sh -c script`` (not a login shell: its PATH stays)."""
        request = {"process": {"cmd": "/bin/sh", "args": ["-c", script], **process}}
        with Rpc(self.url, TOKEN) as rpc:
            result = rpc.stream(START, request)
        assert result.exit["exitCode"] == 0, (result.events, result.end)
        return result.output().decode()


MakeTpl = Callable[[object], Tpl]


@pytest.fixture
def template_envd(envd_factory: Any, tmp_path: Path) -> MakeTpl:
    """envd started with the given template.json (an object, or raw bytes)."""
    count = iter(range(100))

    def make(config: object) -> Tpl:
        n = next(count)
        path = tmp_path / f"template-{n}.json"
        path.write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
        # In a directory that does not exist yet: envd makes it.
        log_path = tmp_path / f"log-{n}" / "sbx-start.log"
        envd = envd_factory(extra_env={
            template.PATH_ENV: str(path), template.START_LOG_ENV: str(log_path)})
        return Tpl(envd, log_path)

    return make


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory every user may enter (pytest's tmp_path is root's)."""
    path = Path(tempfile.mkdtemp(prefix="envd-tpl-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config(**fields: Any) -> dict[str, Any]:
    return {"version": 1, **fields}


def start_cmd_pids(url: str) -> list[int]:
    with Rpc(url, TOKEN) as rpc:
        return [pid for pid, p in proc_list(rpc).items() if p.get("tag") == "start_cmd"]


# --- environment, working directory, user --------------------------------------


def test_env_template_beneath_init_beneath_request(template_envd: MakeTpl) -> None:
    path = "/opt/tpl/bin:/usr/bin:/bin"
    tpl = template_envd(config(env={
        "T_ONLY": "t", "SHARED": "template", "PATH": path, "ENVD_TEST_MARKER": "template"}))
    sdk = tpl.sdk()
    # Above envd's own environment; a template PATH replaces envd's.
    assert tpl.sh("echo $T_ONLY $SHARED $ENVD_TEST_MARKER; echo $PATH") == (
        f"t template template\n{path}\n")
    assert tpl.init({"envVars": {"SHARED": "init"}}).status_code == 204
    assert tpl.sh("echo $T_ONLY $SHARED") == "t init\n"
    assert tpl.sh("echo $SHARED", envs={"SHARED": "request"}) == "request\n"
    # The SDK's commands (login shells, the second one in a spare shell
    # started ahead of it) see the same.
    for _ in range(2):
        assert sdk.commands.run("echo $T_ONLY $SHARED").stdout == "t init\n"
    assert sdk.commands.run("echo $SHARED", envs={"SHARED": "r"}).stdout == "r\n"
    # No start command: ready from the start.
    assert tpl.ready().json() == {"ready": True}


def test_workdir_is_the_default_and_falls_back(template_envd: MakeTpl, open_dir: Path) -> None:
    app = open_dir / "app"
    app.mkdir()
    other = open_dir / "other"
    other.mkdir()
    tpl = template_envd(config(workdir=str(app)))
    sdk = tpl.sdk()
    home = tpl.sh("echo $HOME").strip()
    assert tpl.sh("pwd") == f"{app}\n"
    assert sdk.commands.run("pwd").stdout == f"{app}\n"
    assert tpl.sh("pwd", cwd=str(other)) == f"{other}\n"
    with Rpc(tpl.url, TOKEN) as rpc:
        assert rpc.call("filesystem.Filesystem/Stat", {"path": ""})["entry"]["path"] == str(app)
    # The template's beats /init's, which takes over while it is missing.
    assert tpl.init({"defaultWorkdir": str(other)}).status_code == 204
    assert tpl.sh("pwd") == f"{app}\n"
    app.rmdir()
    assert tpl.sh("pwd") == f"{other}\n"
    assert tpl.init({"defaultWorkdir": ""}).status_code == 204
    assert tpl.sh("pwd") == f"{home}\n"


@as_root
def test_user_is_the_default_over_init_but_not_over_the_request(
    template_envd: MakeTpl, open_dir: Path
) -> None:
    tpl = template_envd(config(user="nobody:staff", workdir=str(open_dir)))
    sdk = tpl.sdk()
    staff = "50"
    assert tpl.sh("id -u; id -g; id -G; echo $USER") == (
        f"{NOBODY.pw_uid}\n{staff}\n{staff}\nnobody\n")
    # The E2B surface always sends defaultUser "user": the template's wins.
    assert tpl.init({"defaultUser": "daemon"}).status_code == 204
    assert sdk.commands.run("id -u").stdout == f"{NOBODY.pw_uid}\n"
    assert sdk.commands.run("id -u", user="root").stdout == "0\n"
    # Files too: an upload without a user belongs to the template's.
    target = open_dir / "up.txt"
    resp = httpx.post(tpl.url + "/files", params={"path": str(target)}, content=b"x",
                      headers={"X-Access-Token": TOKEN,
                               "content-type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    assert (target.stat().st_uid, target.stat().st_gid) == (NOBODY.pw_uid, int(staff))


def test_user_spec_lookup() -> None:
    assert users.lookup_spec("nobody") == users.lookup("nobody")
    assert users.lookup_spec(str(NOBODY.pw_uid)).name == "nobody"
    by_ids = users.lookup_spec(f"{NOBODY.pw_uid}:50")
    assert (by_ids.uid, by_ids.gid, by_ids.groups) == (NOBODY.pw_uid, 50, (50,))
    # A uid without a passwd entry is fine (as in Docker): group 0, home /.
    ghost = users.lookup_spec("424242")
    assert (ghost.name, ghost.uid, ghost.gid, ghost.home) == ("424242", 424242, 0, "/")
    for bad in ("no-such-user-xyz", "nobody:no-such-group-xyz"):
        with pytest.raises(users.UnknownUser):
            users.lookup_spec(bad)


# --- the start command -----------------------------------------------------------


@as_root
def test_start_cmd_runs_listed_logged_and_an_api_kill_ends_it(
    template_envd: MakeTpl, open_dir: Path
) -> None:
    script = "echo $T_ONLY $(pwd) $(id -u); echo oops >&2; exec sleep 300"
    tpl = template_envd(config(
        env={"T_ONLY": "t"}, workdir=str(open_dir), user="nobody",
        start_cmd=["/bin/sh", "-c", script]))
    assert wait_until(lambda: f"t {open_dir} {NOBODY.pw_uid}\n" in tpl.start_log())
    assert "oops\n" in tpl.start_log()
    assert tpl.ready().json() == {"ready": True}
    sdk = tpl.sdk()
    [listed] = [p for p in sdk.commands.list() if p.tag == "start_cmd"]
    assert (listed.cmd, listed.args, listed.cwd) == ("/bin/sh", ["-c", script], str(open_dir))
    attached = sdk.commands.connect(listed.pid)
    assert sdk.commands.kill(listed.pid) is True
    with pytest.raises(CommandExitException):
        attached.wait()
    assert wait_until(lambda: "not restarting" in tpl.start_log())
    reason = "start command was stopped through the API"
    assert tpl.ready().status_code == 503 and tpl.ready().json()["reason"] == reason
    # Past the first restart delay (1 s): nothing came back.
    time.sleep(1.3)
    assert start_cmd_pids(tpl.url) == []
    assert tpl.start_log().count("start command started") == 1


def stamps(log: str, what: str) -> list[float]:
    """When envd logged each line containing ``what`` (seconds)."""
    found = re.findall(r"^\[sbx (\S+)Z\] .*" + re.escape(what), log, re.M)
    return [datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f").timestamp() for s in found]


def test_start_cmd_restarts_with_doubling_backoff(template_envd: MakeTpl) -> None:
    tpl = template_envd(config(start_cmd=["/bin/sh", "-c", "echo run $LATE; exit 3"]))
    # A restart sees the sandbox's variables of its time.
    assert tpl.init({"envVars": {"LATE": "late"}}).status_code == 204
    reasons: set[str | None] = set()

    def three_exits() -> bool:
        reasons.add(tpl.ready().json().get("reason"))
        return tpl.start_log().count("exited with code 3") >= 3

    assert wait_until(three_exits, timeout=10)
    log = tpl.start_log()
    assert re.findall(r"restarting in (\d+) s", log)[:3] == ["1", "2", "4"]
    assert log.count("run") >= 3 and "run late\n" in log
    # The waits are real: 1 s, then 2 s, from an exit to the next start.
    exits, starts = stamps(log, "exited with code 3"), stamps(log, "start command started")
    assert 1.0 <= starts[1] - exits[0] < 1.5
    assert 2.0 <= starts[2] - exits[1] < 2.5
    assert "start command exited with code 3" in reasons


def test_start_cmd_that_cannot_start(template_envd: MakeTpl) -> None:
    tpl = template_envd(config(start_cmd=["/no/such/program", "x"]))
    assert wait_until(lambda: "failed to start" in tpl.start_log())
    body = tpl.ready().json()
    assert body["ready"] is False
    assert body["reason"].startswith("start command failed to start: ")
    assert "/no/such/program" in body["reason"]
    # envd itself is fine.
    assert tpl.sh("echo ok") == "ok\n"


# --- readiness -------------------------------------------------------------------


def test_ready_cmd_and_init_wait_ready(template_envd: MakeTpl, open_dir: Path) -> None:
    flag = open_dir / "ready-flag"
    tpl = template_envd(config(
        start_cmd=["sleep", "300"], ready_cmd=f"test -e {flag}", env={"PATH": "/usr/bin:/bin"}))
    assert wait_until(lambda: start_cmd_pids(tpl.url) != [])
    resp = tpl.ready()
    assert resp.status_code == 503
    assert resp.json() == {"ready": False, "reason": "start command not ready yet"}

    started = time.monotonic()
    resp = tpl.init({"waitReady": 0.3})
    assert resp.status_code == 503 and time.monotonic() - started >= 0.3
    assert resp.json()["reason"] == "start command not ready yet"

    timer = threading.Timer(0.5, flag.touch)
    timer.start()
    try:
        assert tpl.init({"waitReady": 10, "envVars": {"X": "1"}}).status_code == 204
        # The answer waited for readiness.
        assert tpl.ready().json() == {"ready": True}
    finally:
        timer.cancel()
    # The probes are envd's own, not the SDK's business.
    with Rpc(tpl.url, TOKEN) as rpc:
        assert [p.get("tag") for p in proc_list(rpc).values()] == ["start_cmd"]


def test_ready_cmd_past_its_timeout_is_still_probed(template_envd: MakeTpl, open_dir: Path) -> None:
    flag = open_dir / "ready-flag"
    tpl = template_envd(config(
        start_cmd=["sleep", "300"], ready_cmd=f"test -e {flag}", ready_timeout_s=0.2))
    late = {"ready": False, "reason": "start command not ready after 0.2 s"}
    assert wait_until(lambda: tpl.ready().json() == late)
    flag.touch()
    assert wait_until(lambda: tpl.ready().json() == {"ready": True})


def test_without_ready_cmd_ready_once_spawned(template_envd: MakeTpl) -> None:
    tpl = template_envd(config(start_cmd=["sleep", "300"]))
    assert tpl.init({"waitReady": 10}).status_code == 204
    assert tpl.ready().json() == {"ready": True}
    assert len(start_cmd_pids(tpl.url)) == 1


def test_no_template_is_ready(envd: Envd) -> None:
    assert httpx.get(envd.url + "/ready").json() == {"ready": True}
    resp = httpx.post(envd.url + "/init", json={"waitReady": 0},
                      headers={"X-Access-Token": TOKEN})
    assert resp.status_code == 204
    for bad in (-1, "5", True, 1e9):
        resp = httpx.post(envd.url + "/init", json={"waitReady": bad},
                          headers={"X-Access-Token": TOKEN})
        assert resp.status_code == 400, bad
    assert httpx.post(envd.url + "/ready").status_code == 405


# --- malformed configs -------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"{not json",
    json.dumps(config(env={"T_ONLY": 1}, start_cmd=["sleep", "300"])).encode(),
])
def test_malformed_config_is_ignored(template_envd: MakeTpl, raw: bytes) -> None:
    tpl = template_envd(raw)
    assert "template config" in tpl.envd.log() and "ignored" in tpl.envd.log()
    assert tpl.ready().json() == {"ready": True}
    assert tpl.sh("echo ${T_ONLY-unset}") == "unset\n"
    assert start_cmd_pids(tpl.url) == []


def test_unknown_user_is_dropped_the_rest_applies(template_envd: MakeTpl) -> None:
    tpl = template_envd(config(user="no-such-user-xyz", env={"T_ONLY": "t"}))
    assert "no-such-user-xyz" in tpl.envd.log()
    assert tpl.sh("id -u; echo $T_ONLY") == f"{os.geteuid()}\nt\n"


@pytest.mark.parametrize("bad", [
    [],
    {"version": 2},
    {"version": True},
    config(env=["A=1"]),
    config(env={"A=B": "1"}),
    config(workdir="relative"),
    config(workdir=5),
    config(user="a:b:c"),
    config(user="app:"),
    config(start_cmd="python3 app.py"),
    config(start_cmd=["python3", 5]),
    config(ready_cmd=["curl"]),
    config(ready_timeout_s=0),
    config(ready_timeout_s="60"),
])
def test_parse_rejects(bad: object) -> None:
    with pytest.raises(template.TemplateError):
        template.parse(json.dumps(bad).encode())


def test_parse_accepts_and_normalises() -> None:
    full = template.parse(json.dumps(config(
        env={"A": "1"}, workdir="/app/./x/", user="app:staff",
        start_cmd=["python3", "-m", "http.server"], ready_cmd="curl -sf localhost:8000",
        ready_timeout_s=5, unknown_future_field=1)).encode())
    assert full == template.TemplateConfig(
        env={"A": "1"}, workdir="/app/x", user="app:staff",
        start_cmd=["python3", "-m", "http.server"], ready_cmd="curl -sf localhost:8000",
        ready_timeout_s=5.0)
    empty = template.parse(json.dumps(config(
        env=None, workdir=None, user="", start_cmd=[], ready_cmd=None)).encode())
    assert empty == template.TemplateConfig()


# --- snapshots -------------------------------------------------------------------


def test_prepare_cmd_runs_before_snapshot_prepare_answers(template_envd: MakeTpl,
                                                          open_dir: Path) -> None:
    mark = open_dir / "prepared"
    tpl = template_envd(config(
        start_cmd=["sleep", "300"], prepare_cmd=f"sleep 0.3; echo done >> {mark}",
        env={"PATH": "/usr/bin:/bin"}))
    assert wait_until(lambda: start_cmd_pids(tpl.url) != [])
    started = time.monotonic()
    resp = httpx.post(tpl.url + "/snapshot/prepare", headers={"X-Access-Token": TOKEN})
    assert resp.status_code == 204
    # Waited for: the command had run when the answer came.
    assert time.monotonic() - started >= 0.3
    assert mark.read_text() == "done\n"


def test_without_prepare_cmd_snapshot_prepare_runs_nothing(template_envd: MakeTpl) -> None:
    tpl = template_envd(config(start_cmd=["sleep", "300"]))
    assert wait_until(lambda: start_cmd_pids(tpl.url) != [])
    resp = httpx.post(tpl.url + "/snapshot/prepare", headers={"X-Access-Token": TOKEN})
    assert resp.status_code == 204
    with Rpc(tpl.url, TOKEN) as rpc:
        assert [p.get("tag") for p in proc_list(rpc).values()] == ["start_cmd"]
